"""Images as the engine takes them (base64 text) from the ways the APIs send them.

Remote URLs are refused: the server does not fetch what a request points at.
"""

from __future__ import annotations

from ollama_py.api import codec


def from_data_url(url: str, *, field: str) -> str:
    """The base64 payload of a `data:<type>;base64,<data>` URL."""
    if not url.startswith("data:") or ";base64," not in url:
        raise codec.BadRequest(f"{field}: only data: URIs with base64 content are supported, not remote URLs")
    return url.split(";base64,", 1)[1]
