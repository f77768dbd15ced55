"""Beyond one machine: llama.cpp RPC workers.

`worker` is the `ollama-py worker` command (a ggml-rpc-server); `probe`
checks a worker with the RPC handshake before llama.cpp uses it, and names
the dead one after a runner process that used the workers died. The runner
processes themselves are the engine's (`engine.supervisor`): models split
across workers run there like every other model.
"""
