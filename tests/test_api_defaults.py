"""Ollama's defaults where they differ from OpenAI's or from a strict reading, on a live server."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests import hostile_models
from tests.server_harness import MODEL, LiveServer, default_server

MAX_NUM_CTX = 2048
MAX_NUM_PREDICT = 24
EXAMPLES_MODEL = "smollm2-examples"  # the default model with a Modelfile MESSAGE exchange
# A chat template our import does not recognise (not ChatML), so it stores no Go TEMPLATE for it.
PLAIN_JINJA = ("{% for m in messages %}### {{ m.role }}:\n{{ m.content }}\n{% endfor %}"
               "{% if add_generation_prompt %}### assistant:\n{% endif %}")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    with default_server(tmp_path_factory.mktemp("store"), max_num_ctx=MAX_NUM_CTX,
                        max_num_predict=MAX_NUM_PREDICT) as live:
        created = httpx.post(f"{live.url}/api/create", timeout=120, json={
            "model": EXAMPLES_MODEL, "from": MODEL, "stream": False,
            "messages": [{"role": "user", "content": "My name is Zorblax."},
                         {"role": "assistant", "content": "Hello, Zorblax!"}]})
        assert created.json() == {"status": "success"}
        yield live


def generate(http: httpx.Client, **body: Any) -> dict[str, Any]:
    response = http.post("/api/generate", json={"stream": False, **body})
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def test_v1_completions_without_max_tokens_run_to_the_servers_limit(http: httpx.Client) -> None:
    response = http.post("/v1/completions", json={
        "model": MODEL, "prompt": "Write a long story about a dragon who learns to bake bread.", "temperature": 0})
    assert response.status_code == 200, response.text
    usage = response.json()["usage"]
    assert 16 < usage["completion_tokens"] <= MAX_NUM_PREDICT  # OpenAI would stop at 16; Ollama has no limit


def test_num_ctx_above_the_servers_limit_is_capped(http: httpx.Client) -> None:
    generate(http, model=MODEL, prompt="hi", options={"num_ctx": 10**6, "num_predict": 1})
    (loaded,) = http.get("/api/ps").json()["models"]
    assert loaded["context_length"] == MAX_NUM_CTX


def _text(http: httpx.Client, tokens: list[int]) -> str:
    response = http.post("/api/detokenize", json={"model": MODEL, "tokens": tokens})
    assert response.status_code == 200, response.text
    return str(response.json()["text"])


def test_modelfile_messages_are_left_out_when_a_context_is_given(http: httpx.Client) -> None:
    first = generate(http, model=EXAMPLES_MODEL, prompt="What is my name?", options={"num_predict": 1})
    assert "Zorblax" in _text(http, first["context"])  # a fresh conversation starts with the MESSAGEs
    earlier = generate(http, model=MODEL, prompt="Hello there.", options={"num_predict": 1})["context"]
    follow = generate(http, model=EXAMPLES_MODEL, prompt="What is my name?", context=earlier,
                      options={"num_predict": 1})
    text = _text(http, follow["context"])
    assert "Hello there." in text and "What is my name?" in text and "Zorblax" not in text


@pytest.fixture(scope="module")
def plain_jinja_gguf(model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return hostile_models.with_template(model_path, tmp_path_factory.mktemp("gguf"), "plain-jinja", PLAIN_JINJA)


def test_show_gives_the_gguf_template_when_no_go_template_applies(server: LiveServer, http: httpx.Client,
                                                                   plain_jinja_gguf: Path) -> None:
    data = plain_jinja_gguf.read_bytes()
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    assert http.post(f"/api/blobs/{digest}", content=data).status_code in (200, 201)
    created = http.post("/api/create", json={"model": "plain-jinja", "files": {"plain.gguf": digest},
                                             "stream": False})
    assert created.json() == {"status": "success"}, created.text
    shown = http.post("/api/show", json={"model": "plain-jinja"}).json()
    assert shown["template"] == PLAIN_JINJA
    assert "TEMPLATE" not in shown["modelfile"]  # nothing stored: the GGUF's own template renders
    answer = generate(http, model="plain-jinja", prompt="Say hi.", options={"num_predict": 2})
    assert answer["done"] is True
