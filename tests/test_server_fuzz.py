"""Malformed bodies on every route (hypothesis): never a 5xx, always a JSON error, and the server lives on.

Each body route starts from a valid body and gets one field replaced by an
arbitrary JSON value, a field dropped, an unknown option added, or the whole
body replaced by arbitrary JSON or bytes. The server runs with tight bounds so
that the bodies that happen to be valid cost little.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import msgspec
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ollama_py import settings as ollama_settings
from ollama_py.api import native, openai
from ollama_py.api.options import Options
from tests.server_harness import (
    MODEL,
    LiveServer,
    default_store,
    live_server,
    server_settings,
)

HELLO = [{"role": "user", "content": "hi"}]
ROUTES: list[tuple[str, str, type, dict[str, Any]]] = [
    ("POST", "/api/generate", native.GenerateRequest, {"model": MODEL, "prompt": "hi", "stream": False}),
    ("POST", "/api/chat", native.ChatRequest, {"model": MODEL, "messages": HELLO, "stream": False}),
    ("POST", "/api/embed", native.EmbedRequest, {"model": MODEL, "input": "hi"}),
    ("POST", "/api/embeddings", native.EmbeddingRequest, {"model": MODEL, "prompt": "hi"}),
    ("POST", "/api/tokenize", native.TokenizeRequest, {"model": MODEL, "text": "hi"}),
    ("POST", "/api/detokenize", native.DetokenizeRequest, {"model": MODEL, "tokens": [1, 2]}),
    ("POST", "/api/show", native.ShowRequest, {"model": MODEL}),
    ("POST", "/api/copy", native.CopyRequest, {"source": MODEL, "destination": "fuzz-copy"}),
    ("DELETE", "/api/delete", native.ModelRequest, {"model": "fuzz-copy"}),
    ("POST", "/api/create", native.CreateRequest, {"model": "fuzz-made", "from": MODEL, "stream": False}),
    ("POST", "/v1/chat/completions", openai.ChatCompletionRequest, {"model": MODEL, "messages": HELLO}),
    ("POST", "/v1/completions", openai.CompletionRequest, {"model": MODEL, "prompt": "hi"}),
    ("POST", "/v1/embeddings", openai.EmbeddingRequest, {"model": MODEL, "input": "hi"}),
]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=10)
# Sizes that allocate (num_batch, num_ctx, num_thread) and ones that overflow C integers (seed).
EXTREMES = st.sampled_from([-(2**63), -2, -1, 0, 1, 2**31, 2**32, 2**63 - 1, 10**9, 1e308])
OPTION_NAMES = sorted(msgspec.structs.fields(Options), key=lambda f: f.name)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    root = tmp_path_factory.mktemp("store")
    cache = ollama_settings.load().cache
    config = server_settings(root, cache, context_length=256, max_num_ctx=512, max_num_predict=2,
                             max_body_size=1 << 16)
    with live_server(config, default_store(root, cache)) as live:
        yield live


@pytest.fixture(scope="module")
def http(server: LiveServer) -> Iterator[httpx.Client]:
    with server.client() as client:
        yield client


@st.composite
def bodies(draw: st.DrawFn, kind: type, valid: dict[str, Any]) -> bytes:
    fields = [f.encode_name for f in msgspec.structs.fields(kind)]
    body = dict(valid)
    match draw(st.sampled_from(["replace", "drop", "option", "anything", "bytes"])):
        case "replace":
            body[draw(st.sampled_from(fields))] = draw(json_values)
        case "drop":
            body.pop(draw(st.sampled_from(sorted(body))))
        case "option":
            option = draw(st.sampled_from(OPTION_NAMES)).name
            body["options"] = {option: draw(json_values | EXTREMES)}
        case "anything":
            return json.dumps(draw(json_values)).encode()
        case "bytes":
            return draw(st.binary(max_size=64))
    return json.dumps(body).encode()  # the standard library writes integers of any size


def check(response: httpx.Response) -> None:
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        assert "error" in response.json()
    elif response.headers.get("Content-Type", "").startswith("application/x-ndjson"):
        last = orjson.loads(response.text.splitlines()[-1])
        assert "error" not in last or not last["error"].startswith("internal"), last


@pytest.mark.parametrize("method, path, kind, valid", ROUTES, ids=[f"{m} {p}" for m, p, _, _ in ROUTES])
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_malformed_bodies_never_break_the_server(http: httpx.Client, method: str, path: str, kind: type,
                                                 valid: dict[str, Any], data: st.DataObject) -> None:
    body = data.draw(bodies(kind, valid))
    check(http.request(method, path, content=body, headers={"Content-Type": "application/json"}))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.text(st.characters(blacklist_categories=("Cc", "Cs", "Zs"), blacklist_characters="/?#%\\"),
               min_size=1, max_size=40))
def test_odd_names_in_paths(http: httpx.Client, name: str) -> None:
    for method, path in (("HEAD", f"/api/blobs/{name}"), ("POST", f"/api/blobs/{name}"),
                         ("GET", f"/v1/models/{name}")):
        response = http.request(method, path, content=b"data")
        assert response.status_code < 500


def test_the_server_still_answers_afterwards(http: httpx.Client) -> None:
    assert http.get("/api/version").status_code == 200
    answer = http.post("/api/generate", json={"model": MODEL, "prompt": "Hi", "stream": False}).json()
    assert answer["done"] and answer["eval_count"] <= 2
