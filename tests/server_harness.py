"""A real ollama-py server on a loopback port, for tests that drive it with real clients.

The server runs its own event loop in a thread, exactly as `serve` runs it
(handler cancellation on, our access log), so synchronous clients (`ollama`,
`openai`, httpx) and asyncio tests can both talk to it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
from aiohttp import web

from ollama_py import settings as server_config
from ollama_py.server.app import make_app
from ollama_py.settings import Settings
from ollama_py.store import create
from ollama_py.store.manifests import Store

MODEL = "smollm2:135m"
# ChatML with a reasoning block in Ollama's Go syntax, as thinking models' templates are written: a model
# created from MODEL with it thinks (and the default model, never closing the block, only thinks).
THINKING_CHATML = (
    "{{- range $i, $m := .Messages }}<|im_start|>{{ .Role }}\n"
    "{{ if .Thinking }}<think>{{ .Thinking }}</think>{{ end }}{{ .Content }}<|im_end|>\n"
    "{{ end }}<|im_start|>assistant\n"
    "{{ if $.Think }}<think>\n{{ end }}"
)
# How long anything a test waits for may take: CI runs on two shared, often busy cores. A test fails when
# the thing never happens; it never times how fast it happens (bench/ measures speed).
GUARD = 300.0
# Settings that may hold a secret, by name: never shown in failure output.
_SECRET = re.compile(r"KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL|AUTH|COOKIE|SESSION", re.I)


def wait_for(condition: Callable[[], object], what: str, guard: float = GUARD) -> None:
    """Polls `condition` until it is true; fails, naming `what`, if it still is not after `guard` seconds."""
    deadline = time.monotonic() + guard
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: still not so after {guard:g}s")
        time.sleep(0.1)


class Environment(dict[str, str]):
    """A process environment whose repr shows only the non-secret OLLAMA* settings a test chose.

    A failing assertion prints the values it involves, a Server's or a call's
    environment among them, and the test process inherits the CI's tokens.
    """

    def __repr__(self) -> str:
        shown = {k: v for k, v in self.items() if k.startswith("OLLAMA") and not _SECRET.search(k)}
        hidden = len(self) - len(shown)
        return f"Environment({shown!r} and {hidden} more, not shown)"


def server_settings(store_root: Path, cache: Path, **changes: object) -> Settings:
    """Small contexts and few slots: two CPU cores are shared by everything the tests run."""
    base = Settings(models=store_root, cache=cache, num_parallel=2, context_length=1024, max_loaded_models=2,
                    keep_alive="5m", noprune=True)
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def default_store(root: Path, cache: Path) -> Store:
    """A store holding the default model, imported the way the server imports it on first use."""
    store = Store(root, noprune=True)
    create.import_default(store, server_settings(root, cache))
    return store


class LiveServer:
    def __init__(self, settings: Settings, store: Store) -> None:
        self.settings = settings
        self.store = store
        self.loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self.port = 0
        started = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(started,), name="live server", daemon=True)
        self._thread.start()
        started.wait()
        if not self.port:
            raise RuntimeError("the test server did not start")

    def _run(self, started: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self._start())
        finally:
            started.set()
        self.loop.run_forever()

    async def _start(self) -> None:
        self._runner = web.AppRunner(make_app(self.settings, store=self.store), handler_cancellation=True,
                                     access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self, **kwargs: object) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=GUARD, **kwargs)  # type: ignore[arg-type]

    def stop(self) -> None:
        if self._runner is not None:
            # Unloading finishes the runners' work: slow on a busy machine, and an error here fails the test.
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self.loop).result(GUARD)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(GUARD)
        self.loop.close()


@contextmanager
def live_server(settings: Settings, store: Store) -> Iterator[LiveServer]:
    server = LiveServer(settings, store)
    try:
        yield server
    finally:
        server.stop()


@contextmanager
def default_server(root: Path, **changes: object) -> Iterator[LiveServer]:
    """A live server on a fresh store at `root` holding the default model, its settings changed as given."""
    cache = server_config.load().cache
    with live_server(server_settings(root, cache, **changes), default_store(root, cache)) as live:
        yield live


def start_serve(env: dict[str, str], log: Path, what: str = "the server") -> tuple[subprocess.Popen[bytes], str]:
    """`ollama-py serve` in its own process with `env` (OLLAMA_HOST names its port), once it answers /health;
    returns the process and its URL.

    Its stderr goes to `log`, a file: a pipe nobody reads would fill and block the server. A server that exits
    or never answers fails the test with the end of its log, and is killed.
    """
    with log.open("wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "ollama_py.cli.main", "serve"], env=env,
                                   stdout=subprocess.DEVNULL, stderr=out)
    url = f"http://{env['OLLAMA_HOST']}"

    def up() -> bool:
        assert process.poll() is None, f"{what} exited:\n{log.read_text(errors='replace')[-3000:]}"
        try:
            return httpx.get(f"{url}/health", timeout=GUARD).status_code == 200
        except httpx.TransportError:
            return False

    try:
        wait_for(up, f"{what} does not answer /health")
    except BaseException:
        process.kill()
        process.wait()
        raise
    return process, url
