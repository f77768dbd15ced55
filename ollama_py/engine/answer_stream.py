"""A Go template's answer read as it grows: the content and reasoning each step adds, without reading the
answer again from its start on every token.

Each reader gives, token by token, exactly what the whole-answer parse (`RenderedPrompt.parse` with
`partial=True`) would add to what was sent before; the final, whole parse stays the one authority.
"""

from __future__ import annotations

from collections.abc import Sequence

from ollama_py.engine.goprompt import RenderedPrompt, split_tool_calls, tag_overlap


class ThinkingSplit:
    """`split_thinking` as the answer grows: the reasoning and the content each piece adds."""

    def __init__(self, opening: str, closing: str, *, opened: bool) -> None:
        self._opening = opening
        self._closing = closing
        self._state = "start"  # start -> content (no reasoning), or start -> reasoning -> after -> content
        self._held = opening if opened else ""  # text not yet given out, of the current state
        self._begun = False  # whether the reasoning's first non-space character has come

    def feed(self, piece: str) -> tuple[str, str]:
        """(reasoning, content) that `piece` adds."""
        if self._state == "content":
            return "", piece
        text = self._held + piece
        if self._state == "start":
            trimmed = text.lstrip()
            if not trimmed or self._opening.startswith(trimmed):
                self._held = text
                return "", ""
            if not trimmed.startswith(self._opening):
                self._state, self._held = "content", ""
                return "", text
            self._state = "reasoning"
            text = trimmed[len(self._opening):]
        if self._state == "reasoning":
            if not self._begun:
                text = text.lstrip()  # space before the reasoning is not part of it
                self._begun = bool(text)
            end = text.find(self._closing)
            if end < 0:
                keep = tag_overlap(text, self._closing)
                self._held = text[len(text) - keep:]
                return text[:len(text) - keep], ""
            reasoning, text = text[:end], text[end + len(self._closing):]
            self._state = "after"
        else:
            reasoning = ""
        text = text.lstrip()
        if not text:
            self._held = ""
            return reasoning, ""
        self._state, self._held = "content", ""
        return reasoning, text


class ToolSplit:
    """`split_tool_calls` over content as it grows: plain text passes as it comes (less what may still grow
    into the tag); from the tag on, only the part holding calls is read again."""

    def __init__(self, tag: str, names: Sequence[str]) -> None:
        self._tag = tag
        self._names = tuple(names)
        self._sent = ""
        self._held = ""
        self._whole: str | None = None  # the content so far, once the tag has appeared

    def feed(self, piece: str) -> str:
        """The content that `piece` adds."""
        if self._whole is None:
            text = self._held + piece
            if self._tag not in text:
                keep = tag_overlap(text, self._tag)
                self._held = text[len(text) - keep:]
                out = text[:len(text) - keep]
                self._sent += out
                return out
            self._whole, self._held = self._sent + text, ""
        else:
            self._whole += piece
        now = split_tool_calls(self._whole, self._tag, self._names, partial=True)[0]
        if not now.startswith(self._sent):
            return ""
        out = now[len(self._sent):]
        self._sent = now
        return out


class GoAnswer:
    """The reader of one answer to a prompt rendered from a Go template."""

    def __init__(self, rendered: RenderedPrompt) -> None:
        self._thinking: ThinkingSplit | None = None
        if rendered.thinking_tags is not None:
            opening, closing = rendered.thinking_tags
            self._thinking = ThinkingSplit(opening, closing, opened=rendered.prompt.strip().endswith(opening))
        self._tools = ToolSplit(rendered.tool_tag, rendered.tool_names) if rendered.tool_names else None

    def feed(self, piece: str) -> tuple[str, str]:
        """(content, reasoning) that `piece` adds."""
        reasoning, content = self._thinking.feed(piece) if self._thinking is not None else ("", piece)
        if self._tools is not None and content:
            content = self._tools.feed(content)
        return content, reasoning
