"""The engine: batching runners over loaded models, chat rendering, embeddings and the scheduler."""
