"""Hostile values for every field this server bounds, across the generation routes: never a 5xx."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.server_harness import MODEL, LiveServer, default_server

LIMITS = {"max_messages": 40, "max_stop": 8, "max_stop_length": 32, "max_embed_inputs": 16,
          "max_prompt_bytes": 64 << 10, "template_max_output": 256 << 10, "max_schema_bytes": 4096,
          "max_schema_depth": 8, "template_timeout": 2.0}
QUICK = {"temperature": 0, "num_predict": 1}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    with default_server(tmp_path_factory.mktemp("store"), **LIMITS) as live:
        yield live


@pytest.fixture(scope="module")
def http(server: LiveServer) -> Iterator[httpx.Client]:
    with server.client() as client:
        client.post("/api/generate", json={"model": MODEL, "prompt": "hi", "options": QUICK}).raise_for_status()
        yield client


text = st.one_of(st.text(max_size=40), st.builds(lambda c, n: c * n, st.sampled_from("a{}<%$\\\"\n"),
                                                   st.sampled_from([0, 1, 50, 500, 70_000])))
templates = st.one_of(
    st.just(""), text,
    st.sampled_from(["{{range 100000}}{{range 100000}}{{end}}{{end}}", "{{range 1000000000}}write {{end}}",
                     '{{$x := "ab"}}{{range 64}}{{$x = printf "%s%s" $x $x}}{{end}}{{$x}}',
                     '{{printf "%99999999999999999999d" 1}}', "{{ .Prompt", "{{ template \"x\" }}",
                     "{{range .Messages}}{{.Content}}{{end}}"]))
json_leaf = st.one_of(st.none(), st.booleans(), st.integers(-(2 ** 70), 2 ** 70), st.floats(allow_nan=False),
                      st.text(max_size=8))
schemas = st.one_of(
    st.just("json"), st.text(max_size=10),
    st.recursive(json_leaf, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                    st.dictionaries(st.sampled_from(
                                                        ["type", "items", "properties", "enum", "$ref", "minLength",
                                                         "maxItems", "pattern", "anyOf", "required", "$defs"]),
                                                        inner, max_size=4)), max_leaves=30),
    st.builds(lambda n: {"enum": [f"v{i}" for i in range(n)]}, st.integers(0, 5000)),
    st.builds(lambda n: {"type": "string", "minLength": n}, st.integers(-10, 10 ** 6)),
    st.just({"$ref": "#/$defs/a", "$defs": {"a": {"$ref": "#/$defs/a"}}}))
stops = st.one_of(st.none(), st.lists(st.text(max_size=50), max_size=20),
                  st.builds(lambda n, k: ["s" * k] * n, st.integers(0, 100), st.integers(0, 100)))
messages = st.builds(lambda n, content: [{"role": ["user", "assistant", "system", "tool"][i % 4], "content": content}
                                        for i in range(n)] + [{"role": "user", "content": "hi"}],
                     st.integers(0, 60), text)
HYPOTHESIS = settings(max_examples=8, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)


def no_server_fault(response: httpx.Response) -> None:
    assert response.status_code < 500, response.text


@HYPOTHESIS
@given(prompt=text, template=templates, fmt=schemas, stop=stops)
def test_generate(http: httpx.Client, prompt: str, template: str, fmt: Any, stop: Any) -> None:
    no_server_fault(http.post("/api/generate", json={
        "model": MODEL, "prompt": prompt or "x", "template": template, "format": fmt, "stream": False,
        "options": {**QUICK, "stop": stop}}))


@HYPOTHESIS
@given(conversation=messages, fmt=schemas, stop=stops)
def test_chat(http: httpx.Client, conversation: list[dict[str, str]], fmt: Any, stop: Any) -> None:
    no_server_fault(http.post("/api/chat", json={"model": MODEL, "messages": conversation, "format": fmt,
                                                 "stream": False, "options": {**QUICK, "stop": stop}}))


@HYPOTHESIS
@given(conversation=messages, stop=stops, prompt=text)
def test_openai_routes(http: httpx.Client, conversation: list[dict[str, str]], stop: Any, prompt: str) -> None:
    no_server_fault(http.post("/v1/chat/completions", json={"model": MODEL, "messages": conversation, "stop": stop,
                                                            "max_tokens": 1}))
    no_server_fault(http.post("/v1/completions", json={"model": MODEL, "prompt": prompt or "x", "stop": stop,
                                                       "max_tokens": 1}))


@HYPOTHESIS
@given(inputs=st.one_of(st.lists(st.text(max_size=40), max_size=20), st.lists(text, max_size=2)))
def test_embeddings(http: httpx.Client, inputs: list[str]) -> None:
    no_server_fault(http.post("/api/embed", json={"model": MODEL, "input": inputs}))
    no_server_fault(http.post("/v1/embeddings", json={"model": MODEL, "input": inputs or "x"}))
