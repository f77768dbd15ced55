"""The HTTP server: aiohttp routes for Ollama's API and OpenAI's, and the security around them."""
