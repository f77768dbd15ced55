"""Every request's work is bounded: each hostile request of issue 13 is refused with a status naming its
limit (or completes within its bound), while a healthy stream on the same model and /api/tags keep answering."""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.bounds_harness import Neighbours
from tests.server_harness import MODEL, LiveServer, default_server, wait_for

GUARD_CONNECT = 30.0

# Small enough that a test reaches them quickly; the schema and grammar bounds keep their defaults, which are
# what is measured against the neighbours.
LIMITS = {"template_max_output": 1 << 20, "max_prompt_bytes": 512 << 10, "max_messages": 600, "max_stop": 16, "max_stop_length": 64,
          "max_embed_inputs": 1024}
NESTED_RANGES = "{{range 1000000}}{{range 1000000}}{{end}}{{end}}"
WRITING_LOOP = "{{range 1000000000}}all work and no play {{end}}"
QUICK = {"temperature": 0, "num_predict": 2}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    with default_server(tmp_path_factory.mktemp("store"), **LIMITS) as live:
        yield live


@pytest.fixture(scope="module")
def http(server: LiveServer) -> Iterator[httpx.Client]:
    with server.client() as client:
        yield client


@pytest.fixture(scope="module")
def neighbours(server: LiveServer) -> Neighbours:
    return Neighbours(server, MODEL)


def refused(response: httpx.Response, status: int, setting: str) -> None:
    assert response.status_code == status, response.text
    assert setting in response.text, response.text


def hostile(server: LiveServer, neighbours: Neighbours, send: list[tuple[str, dict[str, object]]]) -> list[
        httpx.Response]:
    """Sends the requests at once (as the issue's 8 clients did) while the neighbours run; their answers."""
    with neighbours, server.client() as client, concurrent.futures.ThreadPoolExecutor(len(send)) as pool:
        answers = list(pool.map(lambda item: client.post(item[0], json=item[1]), send))
    neighbours.check()
    return answers


def test_go_templates_that_loop_or_write_without_end_are_400_naming_the_limit(
        server: LiveServer, neighbours: Neighbours) -> None:
    send = [("/api/generate", {"model": MODEL, "prompt": "hi", "template": template, "options": QUICK})
            for template in (NESTED_RANGES, WRITING_LOOP) * 4]
    for answer, template in zip(hostile(server, neighbours, send), (NESTED_RANGES, WRITING_LOOP) * 4, strict=True):
        refused(answer, 400, "OLLAMA_PY_TEMPLATE_MAX_STEPS" if template == NESTED_RANGES
                else "OLLAMA_PY_TEMPLATE_MAX_OUTPUT")


def test_a_long_conversation_is_fitted_and_answered(server: LiveServer, neighbours: Neighbours) -> None:
    messages = [{"role": "user" if i % 2 == 0 else "assistant", "content": f"message number {i}"}
                for i in range(LIMITS["max_messages"] - 1)]
    [answer] = hostile(server, neighbours, [("/api/chat", {"model": MODEL, "messages": messages, "stream": False,
                                                           "options": QUICK})])
    assert answer.status_code == 200, answer.text
    assert answer.json()["prompt_eval_count"] < 1024  # fitted into the context


def test_too_many_messages_are_400_naming_the_limit(http: httpx.Client) -> None:
    messages = [{"role": "user", "content": "hi"}] * (LIMITS["max_messages"] + 1)
    refused(http.post("/api/chat", json={"model": MODEL, "messages": messages}), 400, "OLLAMA_PY_MAX_MESSAGES")
    refused(http.post("/v1/chat/completions", json={"model": MODEL, "messages": messages}), 400,
            "OLLAMA_PY_MAX_MESSAGES")


def _enum(entries: int) -> dict[str, object]:
    return {"type": "object", "properties": {"pick": {"enum": [f"value {i}" for i in range(entries)]}},
            "required": ["pick"]}


def test_huge_deep_or_recursive_schemas_are_400(server: LiveServer, neighbours: Neighbours) -> None:
    deep: dict[str, object] = {"type": "string"}
    for _ in range(100):
        deep = {"type": "array", "items": deep}
    recursive = {"$ref": "#/$defs/a", "$defs": {"a": {"$ref": "#/$defs/a"}}}
    too_big_a_number = {"type": "integer", "minimum": -(10 ** 30)}
    send = [("/api/generate", {"model": MODEL, "prompt": "hi", "format": schema, "options": QUICK})
            for schema in (_enum(100_000), deep, recursive, too_big_a_number)]
    big, nested, looping, number = hostile(server, neighbours, send)
    refused(big, 400, "OLLAMA_PY_MAX_SCHEMA_BYTES")
    refused(nested, 400, "OLLAMA_PY_MAX_SCHEMA_DEPTH")
    refused(looping, 400, "recursive")
    assert number.status_code == 400, number.text


def test_the_largest_schema_allowed_does_not_stall_the_model(server: LiveServer, neighbours: Neighbours) -> None:
    """A schema just under the size bound: its grammar is paid at every token, by every stream on the model."""
    entries = 1
    while len(httpx.Request("POST", "/", json=_enum(entries * 2)).content) < server.settings.max_schema_bytes:
        entries *= 2
    [answer] = hostile(server, neighbours, [("/api/generate", {
        "model": MODEL, "prompt": "Pick one.", "format": _enum(entries), "stream": False,
        "options": {"temperature": 0, "num_predict": 8}})])
    assert answer.status_code in (200, 400), answer.text
    if answer.status_code == 400:
        assert "OLLAMA_PY_MAX_GRAMMAR_BYTES" in answer.text


def test_stop_strings_are_bounded_in_count_and_length(http: httpx.Client) -> None:
    many = {"model": MODEL, "prompt": "hi", "options": {**QUICK, "stop": [f"s{i}" for i in range(200_000)]}}
    refused(http.post("/api/generate", json=many), 400, "OLLAMA_PY_MAX_STOP")
    long = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stop": ["x" * 100_000]}
    refused(http.post("/v1/chat/completions", json=long), 400, "OLLAMA_PY_MAX_STOP_LENGTH")


def test_a_prompt_past_the_byte_bound_is_413_and_one_under_it_is_truncated(
        server: LiveServer, neighbours: Neighbours) -> None:
    bound = server.settings.max_prompt_bytes
    send = [("/api/generate", {"model": MODEL, "prompt": "word " * (bound // 5 + 1), "options": QUICK}),
            ("/api/generate", {"model": MODEL, "prompt": "word " * (bound // 20), "stream": False,
                               "options": QUICK})]
    over, under = hostile(server, neighbours, send)
    refused(over, 413, "OLLAMA_PY_MAX_PROMPT_BYTES")
    assert under.status_code == 200, under.text
    assert under.json()["prompt_eval_count"] < 1024


def test_embedding_inputs_are_bounded(http: httpx.Client) -> None:
    inputs = ["x"] * 20_000
    refused(http.post("/api/embed", json={"model": MODEL, "input": inputs}), 400, "OLLAMA_PY_MAX_EMBED_INPUTS")
    refused(http.post("/v1/embeddings", json={"model": MODEL, "input": inputs}), 400, "OLLAMA_PY_MAX_EMBED_INPUTS")


def _embed_time(client: httpx.Client, inputs: list[str]) -> float:
    start = time.monotonic()
    client.post("/api/embed", json={"model": MODEL, "input": inputs}).raise_for_status()
    return time.monotonic() - start


def test_embedding_stops_when_the_client_leaves(server: LiveServer, http: httpx.Client) -> None:
    sentence = "the quick brown fox jumps over the lazy dog " * 2
    many = [f"{i} {sentence}" for i in range(LIMITS["max_embed_inputs"])]
    one = max(_embed_time(http, ["hello"]) for _ in range(3))
    # The whole request would keep the model's embedder far longer than the bound below: so a small request
    # answering within it shows the abandoned one stopped.
    sample = _embed_time(http, many[:8])
    bound = 25 * one + 2 * sample
    assert sample * len(many) / 8 > 2 * bound, "the abandoned request would not take long enough to tell"
    with httpx.Client(base_url=server.url, timeout=httpx.Timeout(GUARD_CONNECT, read=2 * sample)) as leaving:
        with pytest.raises(httpx.ReadTimeout):
            leaving.post("/api/embed", json={"model": MODEL, "input": many})
    assert _embed_time(http, ["hello"]) <= bound




def _busy_slots(http: httpx.Client) -> float:
    text = http.get("/metrics").text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("ollama_py_slots_busy{"))


@pytest.mark.parametrize("route", ["/api/generate", "/api/chat"])
def test_generation_stops_when_the_client_leaves(server: LiveServer, http: httpx.Client, route: str) -> None:
    # The schema forbids an early end: only the client leaving can end this request before its context does.
    body = {"model": MODEL, "stream": False, "format": {"type": "string", "minLength": 1500},
            "options": {"temperature": 0, "num_predict": 100_000, "num_ctx": 1024},
            **({"prompt": "Count to a million."} if route == "/api/generate"
               else {"messages": [{"role": "user", "content": "Count to a million."}]})}
    start = time.monotonic()
    http.post("/api/generate", json={"model": MODEL, "prompt": "Count to ten.", "stream": False,
                                     "options": {"temperature": 0, "num_predict": 16}}).raise_for_status()
    sixteen_steps = time.monotonic() - start
    with httpx.Client(base_url=server.url, timeout=httpx.Timeout(GUARD_CONNECT, read=1.0)) as leaving:
        with pytest.raises(httpx.ReadTimeout):
            leaving.post(route, json=body)
    left = time.monotonic()
    wait_for(lambda: _busy_slots(http) == 0, "the abandoned request's slot freed")
    # Far less than the ~1000 steps the request would have run to the end of its context.
    assert time.monotonic() - left <= 10 * sixteen_steps
