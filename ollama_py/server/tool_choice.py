"""`tool_choice` as every API that has one honours it (OpenAI chat, OpenAI Responses, Anthropic Messages).

Ollama ignores it; we do what OpenAI documents, which the three APIs share:
"none" hides the tools, "required" (Anthropic's "any") makes the model call
one, and naming a tool offers that tool alone and requires it. The engine
takes the result as the tools the template sees and "auto" or "required".
"""

from __future__ import annotations

from typing import Any, Literal

Mode = Literal["auto", "none", "required"]


def choose(tools: tuple[dict[str, Any], ...], mode: Mode, name: str | None = None, *,
           field: str = "tool_choice") -> tuple[tuple[dict[str, Any], ...], str]:
    """The tools to offer and the engine's tool choice; a named tool that is not offered is a ValueError."""
    if not tools or (mode == "auto" and name is None):
        return tools, "auto"
    if mode == "none":
        return (), "auto"
    if name is None:
        return tools, mode
    named = tuple(t for t in tools if t["function"]["name"] == name)
    if not named:
        raise ValueError(f"{field}: no tool named {name!r} in tools")
    return named, "required"
