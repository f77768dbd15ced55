"""Open-WebUI's first chat, replayed against a live server with the default model (issue 11).

The bodies are shaped as Open-WebUI 0.12.4 sent them (tests/openwebui_harness.py says how they were
captured): its 36 built-in tools ride along with every message typed in the UI, on the Ollama
connection and the OpenAI one alike. One change for two busy cores: each generation is capped
(`options.num_predict` / `max_tokens`, where Open-WebUI sends none or 1000).
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from typing import Any

import httpx
import pytest

from tests import openwebui_harness as owui

SHORT = 24  # tokens per answer




def short(body: dict[str, Any], *, openai: bool = False) -> dict[str, Any]:
    """Open-WebUI's body with the answer capped, the one change the tests make."""
    if openai:
        return {**body, "max_tokens": SHORT}
    return {**body, "options": {**body.get("options", {}), "num_predict": SHORT}}


def ndjson_chat(http: httpx.Client, body: dict[str, Any]) -> list[dict[str, Any]]:
    with http.stream("POST", "/api/chat", json=body) as r:
        assert r.status_code == 200, r.read().decode()
        assert r.headers["content-type"].startswith("application/x-ndjson")
        return [json.loads(line) for line in r.iter_lines() if line]


def sse_chat(http: httpx.Client, body: dict[str, Any]) -> list[str]:
    with http.stream("POST", "/v1/chat/completions", json=body, headers=owui.OPENAI_HEADERS) as r:
        assert r.status_code == 200, r.read().decode()
        assert r.headers["content-type"].startswith("text/event-stream")
        return [line.removeprefix("data: ") for line in r.iter_lines() if line.startswith("data: ")]


def assert_answered_ndjson(lines: list[dict[str, Any]]) -> None:
    assert lines and not any("error" in line for line in lines), lines[-1:]
    assert all(not line["done"] for line in lines[:-1]) and lines[-1]["done"] is True
    assert lines[-1]["done_reason"] in ("stop", "length")
    content = "".join(line["message"].get("content", "") for line in lines)
    calls = [c for line in lines for c in line["message"].get("tool_calls") or []]
    assert content.strip() or calls
    names = {t["function"]["name"] for t in owui.BUILTIN_TOOLS}
    assert all(c["function"]["name"] in names for c in calls)


def assert_answered_sse(events: list[str]) -> None:
    assert events and events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert not any("error" in c for c in chunks), chunks[-1:]
    choices = [c["choices"][0] for c in chunks if c["choices"]]
    assert choices[0]["delta"]["role"] == "assistant"
    content = "".join(ch["delta"].get("content") or "" for ch in choices)
    calls = [call for ch in choices for call in ch["delta"].get("tool_calls") or []]
    assert content.strip() or calls
    assert choices[-1]["finish_reason"] in ("stop", "length", "tool_calls")


# ---- the model list ---------------------------------------------------------------------------


def test_the_model_list_on_both_connections(http: httpx.Client) -> None:
    version = http.get("/api/version").json()["version"]
    tuple(map(int, re.sub(r"^v|-.*", "", version).split(".")))  # Open-WebUI keeps the lowest this way
    tags = http.get("/api/tags", headers={"Content-Type": "application/json"}).json()["models"]
    assert owui.MODEL in {m["model"] for m in tags} and owui.MODEL in {m["name"] for m in tags}
    assert http.get("/api/ps").json()["models"] is not None
    listed = http.get("/v1/models", headers=owui.OPENAI_HEADERS).json()
    assert owui.MODEL in {m["id"] for m in listed["data"]}


# ---- a first chat typed in the UI ---------------------------------------------------------------


def test_a_chat_with_the_builtin_tools_on_the_ollama_connection(http: httpx.Client) -> None:
    assert_answered_ndjson(ndjson_chat(http, short(owui.ollama_chat())))


def test_a_chat_with_the_builtin_tools_on_the_openai_connection(http: httpx.Client) -> None:
    assert_answered_sse(sse_chat(http, short(owui.openai_chat(), openai=True)))


def test_loaded_models_carry_an_expiry_python_can_read(http: httpx.Client) -> None:
    loaded = {m["model"]: m for m in http.get("/api/ps").json()["models"]}
    assert owui.MODEL in loaded  # the chats above loaded it
    datetime.fromisoformat(loaded[owui.MODEL]["expires_at"])  # as Open-WebUI reads it, on Python 3.11


# ---- the background tasks after the first answer -------------------------------------------------


def test_the_title_task_on_the_ollama_connection(http: httpx.Client) -> None:
    answer = http.post("/api/chat", json=short(owui.ollama_title()))
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["done"] is True and body["message"]["role"] == "assistant" and body["message"]["content"].strip()


def test_the_title_task_on_the_openai_connection(http: httpx.Client) -> None:
    answer = http.post("/v1/chat/completions", json=short(owui.openai_title(), openai=True),
                       headers=owui.OPENAI_HEADERS)
    assert answer.status_code == 200, answer.text
    choice = answer.json()["choices"][0]
    assert choice["message"]["content"].strip() and choice["finish_reason"] in ("stop", "length")


# ---- stop and regenerate ----------------------------------------------------------------------


@pytest.mark.parametrize("connection", ["ollama", "openai"])
def test_stop_mid_answer_then_the_model_still_answers(http: httpx.Client, connection: str) -> None:
    if connection == "ollama":
        path, body, headers = "/api/chat", owui.ollama_chat(), {}
    else:
        path, body, headers = "/v1/chat/completions", owui.openai_chat(), owui.OPENAI_HEADERS
    with http.stream("POST", path, json=body, headers=headers) as r:  # no cap: Stop ends it
        assert r.status_code == 200
        first = next(line for line in r.iter_lines() if line)
        assert "error" not in first
    # the stream is closed unread, as Open-WebUI's Stop closes it; the next message is answered
    if connection == "ollama":
        assert_answered_ndjson(ndjson_chat(http, short(owui.ollama_chat())))
    else:
        assert_answered_sse(sse_chat(http, short(owui.openai_chat(), openai=True)))


def test_regenerate_sends_the_same_request_and_is_answered_again(http: httpx.Client) -> None:
    body = short(owui.openai_chat(), openai=True)
    for _ in range(2):
        assert_answered_sse(sse_chat(http, body))


# ---- retrieval, unloading, admin --------------------------------------------------------------


def test_embed_as_its_retrieval_calls_it(http: httpx.Client) -> None:
    chunks = ["Open WebUI splits documents into chunks.", "Each chunk is embedded for retrieval.", "x" * 3000]
    answer = http.post("/api/embed", json=owui.embed(chunks), headers={"Content-Type": "application/json"})
    assert answer.status_code == 200, answer.text
    embeddings = answer.json()["embeddings"]
    assert len(embeddings) == len(chunks) and len({len(e) for e in embeddings}) == 1 and embeddings[0]


def test_admin_pull_create_and_delete(http: httpx.Client) -> None:
    pulled = http.post("/api/pull", json=owui.pull())  # the default model: imported, never downloaded
    assert pulled.status_code == 200 and json.loads(pulled.text.splitlines()[-1]) == {"status": "success"}
    name = "owui-terse:latest"
    created = http.post("/api/create", json=owui.create(name))
    assert created.status_code == 200 and json.loads(created.text.splitlines()[-1]) == {"status": "success"}
    assert name in {m["model"] for m in http.get("/api/tags").json()["models"]}
    deleted = http.request("DELETE", "/api/delete", json=owui.delete(name))
    assert deleted.status_code == 200, deleted.text
    assert name not in {m["model"] for m in http.get("/api/tags").json()["models"]}


def test_unload_with_keep_alive_zero_then_ps_shows_it_gone(http: httpx.Client) -> None:
    http.post("/api/generate", json={"model": owui.MODEL, "prompt": ""})  # loaded, whatever ran before
    assert owui.MODEL in {m["model"] for m in http.get("/api/ps").json()["models"]}
    answer = http.post("/api/generate", json=owui.unload())
    assert answer.status_code == 200, answer.text
    assert answer.json()["done"] is True and answer.json()["done_reason"] == "unload"
    assert owui.MODEL not in {m["model"] for m in http.get("/api/ps").json()["models"]}
