"""OLLAMA_MAX_QUEUE bounds the requests waiting for a slot of a loaded model, not only those waiting for a load."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from ollama_py import settings
from tests.server_harness import MODEL, LiveServer, default_store, live_server, server_settings, wait_for

# A raw prompt that goes on and on (no chat turn to end), so the first request holds the only slot while the
# test sends the others; the context's end stops it at last.
COUNTING = {"model": MODEL, "prompt": "1, 2, 3, 4, 5, 6, 7, 8,", "raw": True,
            "options": {"temperature": 0, "num_predict": -1}}
SHORT = {"model": MODEL, "prompt": "Hi", "stream": False, "options": {"num_predict": 4}}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    root = tmp_path_factory.mktemp("store")
    cache = settings.load().cache
    with live_server(server_settings(root, cache, num_parallel=1, max_queue=1), default_store(root, cache)) as live:
        yield live


def waiting(http: httpx.Client) -> float:
    """Requests waiting for a model or a slot, as /metrics says."""
    found = re.search(r"^ollama_py_num_requests_waiting (\S+)$", http.get("/metrics").text, re.M)
    assert found is not None
    return float(found[1])


def test_a_full_queue_on_a_loaded_model_is_503(server: LiveServer) -> None:
    queued: dict[str, Any] = {}
    with server.client() as http, server.client() as other:
        with http.stream("POST", "/api/generate", json=COUNTING) as running:
            assert running.status_code == 200
            lines = running.iter_lines()  # kept: a dropped iterator closes the stream, and the request with it
            assert not json.loads(next(lines))["done"]  # it holds the only slot now

            def second() -> None:
                answer = other.post("/api/generate", json=SHORT)
                queued.update(status=answer.status_code, body=answer.json())

            thread = threading.Thread(target=second)
            thread.start()
            wait_for(lambda: waiting(http) >= 1, "the second request waiting for the slot")

            refused = http.post("/api/generate", json=SHORT)
            assert refused.status_code == 503
            assert refused.json() == {"error": "server busy, please try again.  maximum pending requests exceeded"}
            busy = http.post("/v1/chat/completions", json={"model": MODEL, "max_tokens": 4,
                                                           "messages": [{"role": "user", "content": "Hi"}]})
            assert busy.status_code == 429 and busy.headers["Retry-After"] == "1"
            assert not queued, "the first request ended before the queue was full: the test proved nothing"
        thread.join()  # the first stream is closed: its slot goes to the request that waited
    assert queued["status"] == 200 and queued["body"]["done"] is True
    with server.client() as http:
        assert http.post("/api/generate", json=SHORT).status_code == 200
