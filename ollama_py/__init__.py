"""ollama-py: an Ollama-compatible server and CLI on a pinned llama.cpp."""

__version__ = "0.1.0"
