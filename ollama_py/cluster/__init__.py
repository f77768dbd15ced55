"""Beyond one machine: llama.cpp RPC workers, and the supervised process that splits models across them.

llama.cpp aborts its whole process when an RPC worker dies or misbehaves, so
models that use workers never run in the server's own process: `remote`
starts one runner process (`child`) for them and speaks `protocol` with it.
`worker` is the `ollama-py worker` command; `probe` checks a worker before use;
`placement` reads where llama.cpp put each layer.
"""
