"""The engine: batching runners over loaded models, chat rendering, embeddings and the scheduler.

The server reaches it through one front door (`front.Engine`), built with a
runner backend (`backend.RunnerBackend`): models in this process
(`backend.LocalBackend`), or wherever another backend runs them. Nothing here
imports the HTTP layer or `cluster`; they import the engine.
"""
