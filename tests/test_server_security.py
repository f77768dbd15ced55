"""Security on by default: Host allowlist, CORS, API keys with an admin scope, body and token bounds."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import ollama
import openai
import pytest

from ollama_py import settings
from ollama_py.server.app import bind_address, is_loopback, serve
from ollama_py.server.middleware import Scope, load_keys
from ollama_py.settings import Settings, SettingsError
from tests.server_harness import MODEL, LiveServer, default_store, live_server, server_settings

ADMIN, READER = "admin-secret-1", "reader-secret-2"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    root = tmp_path_factory.mktemp("store")
    cache = settings.load().cache
    config = server_settings(root, cache, api_keys=(ADMIN, f"{READER}:read"), max_body_size=4096,
                             origins=("https://*.example.com",), max_num_predict=3)
    with live_server(config, default_store(root, cache)) as live:
        yield live


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def http(server: LiveServer) -> Iterator[httpx.Client]:
    with server.client() as client:
        yield client


@pytest.mark.parametrize("host", ["evil.example", "attacker.com:11434", "1.2.3.4"])
def test_a_foreign_host_header_is_refused(http: httpx.Client, host: str) -> None:
    response = http.get("/api/tags", headers={"Host": host, **auth(ADMIN)})
    assert response.status_code == 403 and "host" in response.json()["error"]


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1:11434", "my-box.local", "[::1]:8080", "10.0.0.5"])
def test_local_host_names_are_accepted(http: httpx.Client, host: str) -> None:
    assert http.get("/api/version", headers={"Host": host}).status_code == 200


def test_keys_are_required_except_on_public_routes(http: httpx.Client, server: LiveServer) -> None:
    missing = http.get("/api/tags")
    assert missing.status_code == 401 and missing.headers["WWW-Authenticate"] == "Bearer"
    assert http.get("/api/tags", headers=auth("wrong")).status_code == 401
    assert http.get("/api/tags", headers={"Authorization": ADMIN}).status_code == 401  # no "Bearer"
    assert http.get("/api/tags", headers=auth(READER)).status_code == 200
    for path in ("/", "/api/version", "/health", "/openapi.json"):
        assert http.get(path).status_code == 200
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{server.url}/v1", api_key="wrong", max_retries=0).models.list()
    assert openai.OpenAI(base_url=f"{server.url}/v1", api_key=READER).models.list().data


def test_a_read_key_runs_models_but_cannot_manage_them(server: LiveServer, http: httpx.Client) -> None:
    reader = ollama.Client(host=server.url, headers=auth(READER))
    assert reader.generate(MODEL, "Hi").done
    for call in (lambda: reader.delete(MODEL), lambda: reader.copy(MODEL, "stolen"),
                 lambda: reader.create("mine", from_=MODEL), lambda: reader.pull(MODEL),
                 lambda: reader.push(MODEL)):
        with pytest.raises(ollama.ResponseError) as info:
            call()
        assert info.value.status_code == 403
    upload = http.post("/api/blobs/sha256:" + "a" * 64, content=b"x", headers=auth(READER))
    assert upload.status_code == 403
    assert MODEL in {m.model for m in reader.list().models}
    admin = ollama.Client(host=server.url, headers=auth(ADMIN))
    admin.copy(MODEL, "spare")
    assert admin.delete("spare").status == "success"


def test_a_body_over_the_limit_is_413(http: httpx.Client) -> None:
    big = {"model": MODEL, "prompt": "x" * 8000}
    response = http.post("/api/generate", json=big, headers=auth(READER))
    assert response.status_code == 413 and "error" in response.json()


def test_num_predict_is_bounded_by_the_server(http: httpx.Client) -> None:
    body = {"model": MODEL, "prompt": "Count to fifty.", "stream": False, "options": {"num_predict": 500}}
    answer = http.post("/api/generate", json=body, headers=auth(READER)).json()
    assert answer["eval_count"] <= 3 and answer["done_reason"] == "length"


def test_cors_for_allowed_origins_only(http: httpx.Client) -> None:
    for origin in ("http://localhost:3000", "https://app.example.com", "vscode-webview://abc"):
        response = http.get("/api/version", headers={"Origin": origin})
        assert response.headers["Access-Control-Allow-Origin"] == origin
    refused = http.get("/api/version", headers={"Origin": "https://evil.com"})
    assert refused.status_code == 403 and "Access-Control-Allow-Origin" not in refused.headers
    preflight = http.options("/api/chat", headers={"Origin": "http://localhost:3000",
                                                   "Access-Control-Request-Method": "POST",
                                                   "Access-Control-Request-Headers": "authorization,content-type"})
    assert preflight.status_code == 204
    assert "POST" in preflight.headers["Access-Control-Allow-Methods"]
    assert preflight.headers["Access-Control-Allow-Headers"] == "authorization,content-type"
    bad_preflight = http.options("/api/chat", headers={"Origin": "https://evil.com",
                                                       "Access-Control-Request-Method": "POST"})
    assert bad_preflight.status_code == 403 and "Access-Control-Allow-Origin" not in bad_preflight.headers
    errors_too = http.get("/api/tags", headers={"Origin": "http://localhost:3000"})  # 401, readable by the page
    assert errors_too.status_code == 401 and errors_too.headers["Access-Control-Allow-Origin"]


def test_keys_file(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text("# team keys\nalpha\nbeta read  # the dashboard\n\n")
    loaded = load_keys(Settings(api_keys_file=str(keys), api_keys=("gamma:read",)))
    assert sorted(scope.value for scope in loaded.values()) == ["admin", "read", "read"]
    keys.write_text("alpha superuser\n")
    with pytest.raises(SettingsError, match="line 1"):
        load_keys(Settings(api_keys_file=str(keys)))
    with pytest.raises(SettingsError, match="OLLAMA_PY_API_KEYS_FILE"):
        load_keys(Settings(api_keys_file=str(tmp_path / "missing")))
    assert Scope.ADMIN in load_keys(Settings(api_keys=("plain",))).values()


@pytest.mark.parametrize("raw, address", [
    ("127.0.0.1:11434", ("127.0.0.1", 11434)), ("0.0.0.0", ("0.0.0.0", 11434)), ("", ("127.0.0.1", 11434)),
    ("http://localhost", ("localhost", 80)), ("[::1]:8000", ("::1", 8000)), (":9999", ("", 9999)),
    ("https://example.org/ollama", ("example.org", 443)),
])
def test_ollama_host_is_read_as_ollama_reads_it(raw: str, address: tuple[str, int]) -> None:
    assert bind_address(raw) == address


def test_loopback_addresses() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("") and not is_loopback("192.168.1.2")


def test_serving_beyond_loopback_without_keys_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="without API keys"):
        serve(Settings(host="0.0.0.0:0", models=tmp_path))
