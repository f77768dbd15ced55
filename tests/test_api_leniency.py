"""Requests decoded as leniently as Ollama's Go decoder, and option values bounded at the edge, on a live server.

What Go accepts (null for any field, a float for an integer option, OpenAI values Ollama ignores) is
accepted; what Ollama refuses is a 400 naming the field; extreme option values are clamped to what their
C types take (or refused), and a healthy stream on the same model goes on as if they had not been sent.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest

from tests.server_harness import MODEL, LiveServer, default_server

MAX_NUM_CTX = 2048
MAX_NUM_PREDICT = 4
INT64_MIN, INT64_MAX, UINT64_MAX = -(2**63), 2**63 - 1, 2**64 - 1


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """Small bounds, so that `num_predict` values meaning "no limit" end soon."""
    with default_server(tmp_path_factory.mktemp("store"), max_num_ctx=MAX_NUM_CTX,
                        max_num_predict=MAX_NUM_PREDICT) as live:
        yield live


def generate(http: httpx.Client, **body: Any) -> httpx.Response:
    return http.post("/api/generate", json={"model": MODEL, "prompt": "Say hi.", "stream": False, **body})


def test_null_means_absent_on_native_fields(http: httpx.Client) -> None:
    response = http.post("/api/chat", json={
        "model": MODEL, "stream": None, "think": None, "format": None, "keep_alive": None, "truncate": None,
        "tools": None, "logprobs": None, "options": {"num_predict": 4, "temperature": None, "seed": None},
        "messages": [
            {"role": "user", "content": "What is the weather in Paris?"},
            {"role": "assistant", "content": None, "thinking": None,
             "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
            {"role": "tool", "content": "sunny", "tool_name": "get_weather", "images": None},
            {"role": "user", "content": "Thanks."}]})
    assert response.status_code == 200, response.text
    # `stream: null` is not given: Ollama's default, a stream of NDJSON lines.
    lines = [orjson.loads(line) for line in response.text.splitlines()]
    assert len(lines) > 1 and lines[-1]["done"] is True and not any(line["done"] for line in lines[:-1])


def test_integer_options_take_numbers_as_ollamas_options_map_does(http: httpx.Client) -> None:
    as_ints = generate(http, options={"num_ctx": 1024, "num_predict": 6, "top_k": 3, "temperature": 0})
    as_floats = generate(http, options={"num_ctx": 1024.0, "num_predict": 6.0, "top_k": 3.7, "temperature": 0})
    assert as_floats.status_code == 200, as_floats.text
    assert as_floats.json()["response"] == as_ints.json()["response"]  # 3.7 is cut to 3, as Go's int(float64)
    assert as_floats.json()["eval_count"] == as_ints.json()["eval_count"] <= 6
    assert [m["context_length"] for m in http.get("/api/ps").json()["models"]] == [1024]


def test_openai_values_ollama_accepts_are_accepted(http: httpx.Client) -> None:
    response = http.post("/v1/chat/completions", json={
        "model": MODEL, "n": 2, "temperature": 3, "top_p": 5, "seed": 7, "max_tokens": 4, "tool_choice": "any",
        "response_format": {"type": "xml"}, "stream": None,
        "messages": [{"role": "user", "content": "What is 6 times 7?"},
                     {"role": "assistant", "content": None, "function_call": {"name": "multiply", "arguments": "{}"}},
                     {"role": "function", "name": "multiply", "content": "42"},
                     {"role": "user", "content": "Say it in words."}]})
    assert response.status_code == 200, response.text
    body = response.json()
    assert len(body["choices"]) == 1 and body["usage"]["completion_tokens"] <= 4  # `n` is ignored, as in Ollama


@pytest.mark.parametrize("route, body, field", [
    ("/api/generate", {"think": "ultra"}, "think"),  # api.ThinkValue refuses it
    ("/api/generate", {"options": {"num_ctx": "big"}}, "options.num_ctx"),
    ("/api/generate", {"options": {"stop": "x"}}, "options.stop"),
    ("/v1/chat/completions", {"reasoning_effort": "extreme"}, "reasoning_effort"),
    ("/v1/chat/completions", {"reasoning": {"effort": "extreme"}}, "reasoning.effort"),
    ("/v1/chat/completions", {"max_tokens": 2.5}, "max_tokens"),  # Go's json refuses a fraction for an int
])
def test_what_ollama_refuses_is_refused_naming_the_field(http: httpx.Client, route: str, body: dict[str, Any],
                                                         field: str) -> None:
    base = {"model": MODEL, "prompt": "hi"} if route == "/api/generate" else {
        "model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
    response = http.post(route, json={**base, **body})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert field in (error if isinstance(error, str) else error["message"])


def test_a_number_beyond_a_float_is_refused_naming_the_field(http: httpx.Client) -> None:
    body = b'{"model": "%s", "prompt": "hi", "options": {"temperature": 1e999}}' % MODEL.encode()
    response = http.post("/api/generate", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 400 and "options.temperature" in response.json()["error"], response.text


# Every option that reaches C, at the ends of what JSON and our 64-bit bound let a client send.
SAMPLING_EXTREMES: list[dict[str, Any]] = [
    {"repeat_last_n": 2**31 - 1}, {"repeat_last_n": INT64_MAX}, {"repeat_last_n": -1},
    {"top_k": INT64_MAX}, {"top_k": INT64_MIN}, {"num_keep": INT64_MAX}, {"num_keep": INT64_MIN},
    {"seed": UINT64_MAX}, {"seed": INT64_MIN}, {"num_predict": INT64_MAX}, {"num_predict": INT64_MIN},
    {"mirostat": INT64_MAX},
    {"temperature": 1e308}, {"temperature": -1e308}, {"top_p": 1e308}, {"top_p": -1e308},
    {"min_p": 1e308}, {"min_p": -1e308}, {"typical_p": -1e308}, {"repeat_penalty": 1e308},
    {"repeat_penalty": -1e308}, {"presence_penalty": 1e308}, {"frequency_penalty": -1e308},
]
REFUSED = [({"repeat_last_n": INT64_MIN}, "repeat_last_n"), ({"num_thread": -1}, "num_thread"),
           ({"num_batch": 0}, "num_batch"), ({"main_gpu": -1}, "main_gpu")]


def test_extreme_option_values_are_clamped_or_refused_while_a_neighbour_streams(http: httpx.Client) -> None:
    def neighbour() -> str:
        response = http.post("/api/chat", json={"model": MODEL, "messages": [{"role": "user", "content": "Count."}],
                                                "options": {"temperature": 0, "num_predict": 4}})
        assert response.status_code == 200, response.text
        lines = [orjson.loads(line) for line in response.text.splitlines()]
        assert lines[-1]["done"] is True
        return "".join(line["message"]["content"] for line in lines)

    alone = neighbour()
    answers: list[str] = []
    done = threading.Event()

    def keep_streaming() -> None:
        while not done.is_set():
            answers.append(neighbour())

    thread = threading.Thread(target=keep_streaming)
    thread.start()
    try:
        for options in SAMPLING_EXTREMES:
            response = generate(http, options=options)
            assert response.status_code == 200, (options, response.text)
            body = response.json()
            assert body["done"] is True and body["eval_count"] <= MAX_NUM_PREDICT, options
        for options, field in REFUSED:
            response = generate(http, options=options)
            assert response.status_code == 400 and field in response.json()["error"], (options, response.text)
    finally:
        done.set()
        thread.join()
    assert answers and [answer for answer in answers if answer != alone] == [], alone  # greedy: the same words


@pytest.mark.parametrize("options", [
    {"num_ctx": INT64_MAX}, {"num_batch": INT64_MAX}, {"num_thread": INT64_MAX}, {"num_gpu": INT64_MAX},
    {"num_gpu": INT64_MIN}, {"main_gpu": INT64_MAX},
])
def test_extreme_load_options_are_capped(http: httpx.Client, options: dict[str, int]) -> None:
    response = generate(http, options={**options, "num_predict": 1})
    assert response.status_code == 200, response.text
    (loaded,) = http.get("/api/ps").json()["models"]
    expected = MAX_NUM_CTX if "num_ctx" in options else 1024
    assert loaded["context_length"] == expected  # num_ctx above the server's limit is capped, not refused
