"""The engine's front door: the one object the server holds to reach models.

`make_app` builds one Engine, giving it the runner backend it chose (models
in this process, or split across RPC workers), as Ollama's server holds one
scheduler built with a runner constructor. The server asks the Engine for
models and never reaches the scheduler or a backend itself, so how the engine
schedules and where models run can change behind this one face.
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager

from ollama_py.engine.backend import LoadSpec, RunnerBackend
from ollama_py.engine.scheduler import Lease, Loaded, Scheduler
from ollama_py.settings import Settings


class Engine:
    """Loaded models for the server's requests, over an injected runner backend."""

    def __init__(self, settings: Settings, backend: RunnerBackend) -> None:
        self._backend = backend
        self._scheduler = Scheduler(settings, backend)

    def acquire(self, name: str, spec: LoadSpec, keep_alive: float | None = None
                ) -> AbstractAsyncContextManager[Lease]:
        """Holds the model loaded (loading it if needed) for the body of the `async with`.

        Raises scheduler.Busy when too many requests wait already; a failed load raises its own error.
        """
        return self._scheduler.acquire(name, spec, keep_alive)

    @property
    def waiting(self) -> int:
        """Requests waiting for a model to load now (with those waiting for a slot, bounded by OLLAMA_MAX_QUEUE)."""
        return self._scheduler.waiting

    def loaded(self) -> list[Loaded]:
        """The models that can serve now, longest remaining first (Ollama's /api/ps order)."""
        return self._scheduler.loaded()

    @property
    def runner_failures(self) -> int:
        """Runner processes that died or were stopped by their watchdog since the server started."""
        return self._backend.failures

    def forget(self, name: str) -> None:
        """Lets a model whose runner crashed at load be loaded again (it was removed or replaced)."""
        self._scheduler.forget(name)

    async def unload(self, name: str) -> bool:
        """Unloads a model now if no request holds it (Ollama's keep_alive 0 with no prompt)."""
        return await self._scheduler.unload(name)

    async def close(self) -> None:
        """Unloads every model and frees the backend, at the server's exit."""
        await self._scheduler.close()
