"""ollama-py's own routes: tokenizer, Prometheus metrics, health, and an OpenAPI description true to the server."""

from __future__ import annotations

import logging
import re
from typing import Any

import httpx
import jsonschema
import pytest
from prometheus_client.parser import text_string_to_metric_families

from ollama_py.server.app import ROUTES
from tests.server_harness import (
    MODEL,
    LiveServer,
)


def test_tokenize_and_detokenize_round_trip(http: httpx.Client) -> None:
    tokens = http.post("/api/tokenize", json={"model": MODEL, "text": "Hello, world!"}).json()["tokens"]
    assert tokens and all(isinstance(t, int) for t in tokens)
    text = http.post("/api/detokenize", json={"model": MODEL, "tokens": tokens}).json()["text"]
    assert text == "Hello, world!"
    special = http.post("/api/tokenize", json={"model": MODEL, "text": "<|im_start|>"}).json()["tokens"]
    assert len(special) == 1  # a chat marker is one token, as in a rendered prompt
    bad = http.post("/api/detokenize", json={"model": MODEL, "tokens": [10**9]})
    assert bad.status_code == 400 and "tokens" in bad.json()["error"]


def samples(http: httpx.Client) -> dict[str, list[Any]]:
    found: dict[str, list[Any]] = {}
    for family in text_string_to_metric_families(http.get("/metrics").text):
        for sample in family.samples:
            found.setdefault(sample.name, []).append(sample)
    return found


def test_metrics_count_requests_tokens_and_time_to_first_token(http: httpx.Client) -> None:
    body = {"model": MODEL, "prompt": "Hi", "stream": False, "options": {"num_predict": 5, "temperature": 0}}
    answer = http.post("/api/generate", json=body).json()
    found = samples(http)
    generated = {s.labels["model"]: s.value for s in found["ollama_py_generation_tokens_total"]}
    assert generated[MODEL] >= answer["eval_count"] == 5
    assert any(s.labels == {"route": "/api/generate", "method": "POST", "status": "200"} and s.value >= 1
               for s in found["ollama_py_requests_total"])
    assert sum(s.value for s in found["ollama_py_time_to_first_token_seconds_count"]) >= 1
    assert sum(s.value for s in found["ollama_py_time_per_output_token_seconds_count"]) >= 1
    (slots,) = found["ollama_py_slots_total"]
    assert slots.labels["model"] == MODEL and slots.value == 2
    (busy,) = found["ollama_py_slots_busy"]
    assert busy.value == 0
    (kv,) = found["ollama_py_kv_cache_usage_perc"]
    assert 0 < kv.value <= 1  # the answer's tokens stay cached for the next turn
    assert found["ollama_py_num_requests_waiting"][0].value == 0
    http.get("/no/such/page")
    assert all(s.labels["route"] in {r.path for r in ROUTES} | {"unmatched"}
               for s in samples(http)["ollama_py_requests_total"])  # scanners cannot grow the label set


def test_metrics_show_the_prompt_cache_beyond_the_slots_growing(http: httpx.Client) -> None:
    """A slot taken by a new prompt first saves what it held to host RAM; the gauges count those states."""

    def cache() -> tuple[float, float]:
        found = samples(http)
        (states,), (size,) = found["ollama_py_prompt_cache_states"], found["ollama_py_prompt_cache_bytes"]
        assert states.labels["model"] == size.labels["model"] == MODEL
        return states.value, size.value

    body = {"model": MODEL, "raw": True, "stream": False, "options": {"num_predict": 2, "temperature": 0}}
    http.post("/api/generate", json=body | {"prompt": "Hi"})  # the model loaded, so its gauges exist
    before = cache()
    # More distinct prompts than slots, each long enough to be worth keeping: one slot must be reused.
    for topic in ("the sea", "mountains", "old trains"):
        prompt = f"{topic}: " + " ".join(f"{topic} fact number {i}." for i in range(8))
        assert http.post("/api/generate", json=body | {"prompt": prompt}).status_code == 200
    states, size = cache()
    assert states > before[0] and size > before[1]


def test_health(http: httpx.Client) -> None:
    health = http.get("/health").json()
    assert health["status"] == "ok" and health["version"] and health["loaded_models"] >= 0


def test_openapi_describes_every_route(http: httpx.Client, server: LiveServer) -> None:
    document = http.get("/openapi.json").json()
    jsonschema.Draft202012Validator.check_schema({"$defs": document["components"]["schemas"]})
    described = {(method.upper(), path) for path, ops in document["paths"].items() for method in ops}
    served = {(r.method, r.path.replace("{model:.+}", "{model}")) for r in ROUTES}
    assert described == served
    assert all(op["summary"] for ops in document["paths"].values() for op in ops.values())


@pytest.mark.parametrize("method, path, body", [
    ("GET", "/api/tags", None),
    ("GET", "/api/ps", None),
    ("POST", "/api/show", {"model": MODEL}),
    ("POST", "/api/generate", {"model": MODEL, "prompt": "Hi", "stream": False, "options": {"num_predict": 2}}),
    ("POST", "/api/chat", {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "stream": False,
                           "options": {"num_predict": 2}}),
    ("POST", "/api/embed", {"model": MODEL, "input": ["a", "b"]}),
    ("POST", "/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}],
                                      "max_tokens": 2}),
    ("POST", "/v1/completions", {"model": MODEL, "prompt": "Hi", "max_tokens": 2}),
    ("GET", "/v1/models", None),
])
def test_responses_match_their_openapi_schema(http: httpx.Client, method: str, path: str,
                                              body: dict[str, Any] | None) -> None:
    document = http.get("/openapi.json").json()
    schema = document["paths"][path][method.lower()]["responses"]["200"]["content"]["application/json"]["schema"]
    response = http.request(method, path, json=body)
    assert response.status_code == 200
    jsonschema.validate(response.json(), {**schema, "components": document["components"]})


def test_one_access_log_line_per_request(http: httpx.Client, caplog: pytest.LogCaptureFixture) -> None:
    body = {"model": MODEL, "prompt": "Hi", "stream": False, "options": {"num_predict": 4, "temperature": 0}}
    with caplog.at_level(logging.INFO, logger="ollama_py.access"):
        http.post("/api/generate", json=body)
        http.post("/api/chat", json={"model": "missing-model", "messages": []})
    lines = [r.getMessage() for r in caplog.records if r.name == "ollama_py.access"]
    assert len(lines) == 2
    assert re.search(r"POST /api/generate 200 [\d.]+s model=smollm2:135m prompt_tokens=\d+ eval_tokens=4", lines[0])
    assert "POST /api/chat 404" in lines[1]
