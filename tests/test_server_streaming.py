"""Streams: a failure after the first byte, a client that hangs up, and the first use of an empty store."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import threading
from collections.abc import AsyncGenerator, Iterator
from pathlib import Path

import httpx
import ollama
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from ollama_py import settings
from ollama_py.engine.supervisor import ProcessBackend
from ollama_py.engine.front import Engine
from ollama_py.server import streaming
from ollama_py.server.errors import ApiError
from ollama_py.server.metrics import Metrics
from ollama_py.server.middleware import errors, observe
from ollama_py.server.services import SERVICES, Services, listing_executor
from ollama_py.settings import Settings
from ollama_py.store.manifests import Store
from tests.server_harness import GUARD, MODEL, default_store, live_server, server_settings, start_serve, wait_for


def failing_app(root: Path) -> web.Application:
    """Our pipeline and streaming layer around a stream that fails after two items."""

    async def items() -> AsyncGenerator[dict[str, object], None]:
        yield {"response": "a", "done": False}
        yield {"response": "b", "done": False}
        raise ApiError(500, "the model runner stopped")

    async def nothing() -> AsyncGenerator[dict[str, object], None]:
        raise ApiError(404, "model 'x' not found")
        yield {}  # a generator that fails before its first item

    async def ndjson(request: web.Request) -> web.StreamResponse:
        return await streaming.ndjson(request, items())

    async def sse(request: web.Request) -> web.StreamResponse:
        return await streaming.sse(request, items())

    async def early(request: web.Request) -> web.StreamResponse:
        return await streaming.ndjson(request, nothing())

    engine = Engine(Settings(), ProcessBackend(Settings()))
    metrics = Metrics(engine)
    app = web.Application(middlewares=[observe(metrics), errors])
    app[SERVICES] = Services(settings=Settings(), store=Store(root), engine=engine, metrics=metrics,
                             listing=listing_executor(1))
    app.router.add_post("/api/stream", ndjson)
    app.router.add_post("/v1/stream", sse)
    app.router.add_post("/api/early", early)
    return app


@pytest.mark.asyncio
async def test_failure_after_streaming_began_is_a_last_error_line(aiohttp_client: type[TestClient],
                                                                 tmp_path: Path) -> None:
    client = await aiohttp_client(failing_app(tmp_path))  # type: ignore[operator]
    native = await client.post("/api/stream")
    assert native.status == 200 and native.headers["Content-Type"] == "application/x-ndjson"
    rows = [json.loads(line) for line in (await native.text()).splitlines()]
    assert rows == [{"response": "a", "done": False}, {"response": "b", "done": False},
                    {"error": "the model runner stopped"}]
    events = (await (await client.post("/v1/stream")).text()).split("\n\n")
    assert json.loads(events[2].removeprefix("data: "))["error"]["message"] == "the model runner stopped"
    assert events[3] == "data: [DONE]"
    early = await client.post("/api/early")  # nothing was sent yet: the error keeps its status
    assert early.status == 404 and await early.json() == {"error": "model 'x' not found"}


@pytest.fixture(scope="module")
def one_slot(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("store")
    cache = settings.load().cache
    with live_server(server_settings(root, cache, num_parallel=1), default_store(root, cache)) as live:
        yield live.url


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def busy_slots(url: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=GUARD).text
    found = re.search(r'^ollama_py_slots_busy\{model="smollm2:135m"\} (\S+)$', text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def test_a_client_that_hangs_up_frees_its_slot(one_slot: str) -> None:
    # Unbounded, this answer would run to the end of an 8192-token context: minutes on a CPU.
    options = {"num_ctx": 8192, "num_predict": -1, "temperature": 1.0, "seed": 1}
    body = {"model": MODEL, "prompt": "Tell me a very long story.", "options": options}
    with httpx.Client(base_url=one_slot, timeout=GUARD) as http:
        with http.stream("POST", "/api/generate", json=body) as response:
            got = 0
            for line in response.iter_lines():
                got += bool(line)
                if got == 3:
                    break
        # The story would hold the slot for minutes; freed, it is free long before the guard.
        wait_for(lambda: busy_slots(one_slot) == 0, "the slot of the client that hung up is busy")
        # With the only slot free again, the next answer runs now, not after the story.
        short = {"model": MODEL, "prompt": "Hi", "stream": False, "options": {**options, "num_predict": 4}}
        answer = http.post("/api/generate", json=short).json()
    assert answer["eval_count"] == 4


def test_the_default_model_is_imported_on_first_use(tmp_path: Path) -> None:
    cache = settings.load().cache
    store = Store(tmp_path, noprune=True)
    with live_server(server_settings(tmp_path, cache), store) as live:
        client = ollama.Client(host=live.url)
        assert client.list().models == []
        assert client.show(MODEL).details.family == "llama"
        assert [m.model for m in client.list().models] == [MODEL]


def test_concurrent_streams_each_get_their_whole_answer(one_slot: str) -> None:
    results: dict[int, list[str]] = {}

    def ask(i: int) -> None:
        body = {"model": MODEL, "prompt": f"Say the number {i}.", "options": {"num_predict": 6, "seed": i}}
        with httpx.Client(base_url=one_slot, timeout=GUARD) as http:  # one slot: the last waits for three answers
            results[i] = [line for line in http.post("/api/generate", json=body).text.splitlines() if line]

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [0, 1, 2, 3]  # a request that failed in its thread left no rows
    for rows in results.values():
        final = json.loads(rows[-1])
        assert final["done"] and final["eval_count"] == 6


def test_sigterm_lets_streams_end_within_the_bound_and_exits_cleanly(tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "OLLAMA_HOST": f"127.0.0.1:{port}", "OLLAMA_MODELS": str(tmp_path),
           "OLLAMA_PY_CACHE": str(settings.load().cache), "OLLAMA_NUM_PARALLEL": "1"}
    log_path = tmp_path / "serve.log"
    server, url = start_serve(env, log_path)
    try:
        body = {"model": MODEL, "prompt": "Tell me a very long story.",
                "options": {"num_ctx": 8192, "num_predict": -1, "temperature": 1.0}}
        with httpx.stream("POST", f"{url}/api/generate", json=body, timeout=GUARD) as response:
            lines = response.iter_lines()
            assert json.loads(next(lines))["done"] is False
            server.send_signal(signal.SIGTERM)
            # The answer may finish by itself; if not, the server cuts it after the shutdown bound.
            assert all(json.loads(line) for line in lines if line)
        assert server.wait(timeout=2 * Settings().shutdown_timeout + 60) == 0
        assert b"Traceback" not in log_path.read_bytes()
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
