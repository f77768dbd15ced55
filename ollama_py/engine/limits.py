"""What one request may make a runner process do: the bounds on rendering its prompt and on its grammar.

The server reads them from the Settings and hands them to each runner process
at its start (`host` takes them as an argument), where the templates are
rendered and the schemas turned into grammars. Each error names the setting
that bounds it, so whoever sees a refusal knows what to raise.
"""

from __future__ import annotations

import threading
import time

import msgspec

from ollama_py.engine.gotemplate import LimitExceeded, Limits
from ollama_py.settings import Settings

# The setting behind each limit a template execution can stop at.
_TEMPLATE_SETTING = {"steps": "OLLAMA_PY_TEMPLATE_MAX_STEPS", "output": "OLLAMA_PY_TEMPLATE_MAX_OUTPUT",
                     "time": "OLLAMA_PY_TEMPLATE_TIMEOUT"}
GRAMMAR_SETTING = "OLLAMA_PY_MAX_GRAMMAR_BYTES"


class WorkLimits(msgspec.Struct, frozen=True, kw_only=True):
    template_max_steps: int
    template_max_output: int
    template_timeout: float  # seconds for one request's rendering, every try at fitting the context included
    max_grammar_bytes: int

    @classmethod
    def from_settings(cls, settings: Settings) -> WorkLimits:
        return cls(template_max_steps=settings.template_max_steps, template_max_output=settings.template_max_output,
                   template_timeout=settings.template_timeout, max_grammar_bytes=settings.max_grammar_bytes)

    def template(self, cancelled: threading.Event | None = None) -> Limits:
        """The bounds of one request's renderings, its deadline counted from now."""
        return Limits(max_steps=self.template_max_steps, max_output=self.template_max_output,
                      deadline=time.monotonic() + self.template_timeout, cancelled=cancelled)


DEFAULT = WorkLimits.from_settings(Settings())


def describe(exc: LimitExceeded) -> str:
    """The refusal for a rendering stopped at a limit, naming the setting."""
    setting = _TEMPLATE_SETTING.get(exc.limit)
    if setting is None:
        return str(exc)
    return f"{exc} ({setting})"
