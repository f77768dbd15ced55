"""/metrics carries what an autoscaler or a KV-aware router reads: queue, slots, KV cache use, tokens per second."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from ollama_py import settings
from tests.cluster_harness import STORY
from tests.server_harness import GUARD, MODEL, LiveServer, default_store, live_server, server_settings, wait_for


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    cache = settings.load().cache
    root: Path = tmp_path_factory.mktemp("store")
    with live_server(server_settings(root, cache, num_parallel=1), default_store(root, cache)) as live:
        yield live


def gauge(metrics: str, name: str) -> float:
    match = re.search(rf"^ollama_py_{name}(?:\{{[^}}]*\}})? (\S+)$", metrics, re.M)
    assert match, f"{name} is not in /metrics"
    return float(match[1])


def test_metrics_show_the_queue_the_slots_the_kv_cache_and_the_throughput(server: LiveServer) -> None:
    # Long enough to still be generating however late the second request arrives; closing the stream ends it.
    story = {"model": MODEL, "messages": STORY, "options": {"temperature": 0, "num_predict": 900}}
    with server.client() as client:
        with client.stream("POST", "/api/chat", json=story) as first:
            lines = first.iter_lines()  # kept: a dropped iterator would close the stream
            next(lines)
            # One slot, and it is busy: a second conversation waits in the queue.
            second = threading.Thread(target=lambda: httpx.post(f"{server.url}/api/chat", timeout=GUARD, json={
                "model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "options": {"num_predict": 4}}))
            second.start()
            wait_for(lambda: gauge(client.get("/metrics").text, "num_requests_waiting") >= 1,
                     "the second conversation never shows as waiting")
            metrics = client.get("/metrics").text
            assert gauge(metrics, "num_requests_waiting") == 1
            assert gauge(metrics, "slots_busy") == 1 and gauge(metrics, "slots_total") == 1
            assert 0 < gauge(metrics, "kv_cache_usage_perc") < 1
        second.join()
        assert gauge(client.get("/metrics").text, "generation_tokens_per_second") > 0
