"""Malformed bodies on every route: never a 5xx, always a JSON error with a message, and the server lives on.

The routes come from the app's own table (`app.ROUTES`), so a route added
there without a valid body here fails `test_every_route_with_a_body_is_fuzzed`.
Each route gets:

- hypothesis: its valid body with one field replaced by an arbitrary JSON
  value, a field dropped, an unknown option added, or the whole body replaced
  by arbitrary JSON or bytes;
- deep nesting: 5,000 and 100,000 levels of `[` and `{` as the whole body and
  inside a field, closed and unclosed, and 300 and 5,000 levels in every field
  (300: deeper than orjson encodes, shallow enough for msgspec to decode);
- every prefix of its valid body (truncated JSON, cut mid-character too);
- every field given each JSON type in turn, and numbers beyond 64 bits;
- bytes that are not UTF-8, in values and keys.

Nested, truncated, non-UTF-8 and out-of-range bodies get exactly 400, except
where msgspec skips and drops the value (a field or key the type lacks). The
server runs with tight bounds so that the bodies that happen to be valid cost little.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import msgspec
import msgspec.inspect
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ollama_py import settings as ollama_settings
from ollama_py.api.options import Options
from ollama_py.server.app import ROUTES as APP_ROUTES
from ollama_py.server.app import Route
from tests.server_harness import (
    MODEL,
    LiveServer,
    default_store,
    live_server,
    server_settings,
)

HELLO = [{"role": "user", "content": "hi é😀"}]
# A valid body per route that reads a JSON body; each names only models it may create, copy or delete.
VALID: dict[tuple[str, str], dict[str, Any]] = {
    ("POST", "/api/generate"): {"model": MODEL, "prompt": "hi é😀", "stream": False},
    ("POST", "/api/chat"): {"model": MODEL, "messages": HELLO, "stream": False},
    ("POST", "/api/embed"): {"model": MODEL, "input": "hi"},
    ("POST", "/api/embeddings"): {"model": MODEL, "prompt": "hi"},
    ("POST", "/api/tokenize"): {"model": MODEL, "text": "hi é😀"},
    ("POST", "/api/detokenize"): {"model": MODEL, "tokens": [1, 2]},
    ("POST", "/api/show"): {"model": MODEL},
    ("POST", "/api/copy"): {"source": MODEL, "destination": "fuzz-copy"},
    ("DELETE", "/api/delete"): {"model": "fuzz-copy"},
    ("POST", "/api/create"): {"model": "fuzz-made", "from": MODEL, "stream": False},
    # The default model is imported, not downloaded; nothing here reaches a registry.
    ("POST", "/api/pull"): {"model": MODEL, "stream": False},
    # A model the store lacks: refused (404) before any connection.
    ("POST", "/api/push"): {"model": "127.0.0.1:9/fuzz/missing", "insecure": True, "stream": False},
    ("POST", "/v1/chat/completions"): {"model": MODEL, "messages": HELLO},
    ("POST", "/v1/completions"): {"model": MODEL, "prompt": "hi é😀"},
    ("POST", "/v1/embeddings"): {"model": MODEL, "input": "hi"},
    ("POST", "/v1/messages"): {"model": MODEL, "max_tokens": 4, "messages": HELLO},
    ("POST", "/v1/messages/count_tokens"): {"model": MODEL, "messages": HELLO},
    ("POST", "/v1/responses"): {"model": MODEL, "input": "hi é😀", "max_output_tokens": 4},
}
# Routes whose body is raw bytes, not JSON, with the path they are called on.
RAW = {("POST", "/api/blobs/{digest}"): "/api/blobs/sha256:" + "0" * 64}
# Names a random string must not replace: on /api/pull it would be a download from the internet, on
# /api/push an upload when it names a model the other routes made (copy and create make any name).
NETWORK_NAMES = {("POST", "/api/pull"): frozenset({"model", "name"}),
                 ("POST", "/api/push"): frozenset({"model", "name"})}
BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# Routes of such a method that read no body: the path says it all.
NO_BODY = {("DELETE", "/v1/responses/{response_id}")}

JSON_ROUTES = [r for r in APP_ROUTES if (r.method, r.path) in VALID]
IDS = [f"{r.method} {r.path}" for r in JSON_ROUTES]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=10)
# Sizes that allocate (num_batch, num_ctx, num_thread) and ones that overflow C integers (seed).
EXTREMES = st.sampled_from([-(2**63), -2, -1, 0, 1, 2**31, 2**32, 2**63 - 1, 2**64 - 1, 10**9, 1e308])
OPTION_NAMES = sorted(msgspec.structs.fields(Options), key=lambda f: f.name)


def _integers_only(kind: msgspec.inspect.Type) -> bool:
    kinds = kind.types if isinstance(kind, msgspec.inspect.UnionType) else (kind,)
    return any(isinstance(k, msgspec.inspect.IntType) for k in kinds) and not any(
        isinstance(k, msgspec.inspect.FloatType) for k in kinds)


INTEGER_OPTIONS = [f.encode_name for f in msgspec.inspect.type_info(Options).fields  # type: ignore[union-attr]
                   if _integers_only(f.type)]

# One value of each JSON type, as JSON text.
TYPED = ["null", "true", "-1", "0.5", '"x"', '["x"]', '{"x": 1}']
# Numbers no 64-bit integer or double holds, alone and where a field typed Any keeps them (schemas, parameters).
HUGE = ["18446744073709551616", "-9223372036854775809", "1" + "0" * 400, "1e400", "-1e400",
        '{"maximum": 100000000000000000000}', "[340282366920938463463374607431768211456]"]
# Bytes that are not UTF-8: invalid, a truncated sequence, an encoded surrogate, an overlong form, past U+10FFFF.
NOT_UTF8 = [b"\xff", b"\xc3(", b"\xed\xa0\x80", b"\xc0\xaf", b"\xf4\x90\x80\x80", b"ok\xfe"]
# Lone surrogates are valid JSON escapes but not text.
LONE_SURROGATES = [rb"\ud800", rb"\udc00x"]
# Room for 100,000 levels of nesting, so that they reach the decoder rather than the size limit.
MAX_BODY = 1 << 20


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    root = tmp_path_factory.mktemp("store")
    cache = ollama_settings.load().cache
    config = server_settings(root, cache, context_length=256, max_num_ctx=512, max_num_predict=2,
                             max_body_size=MAX_BODY)
    with live_server(config, default_store(root, cache)) as live:
        yield live


@pytest.fixture(scope="module")
def http(server: LiveServer) -> Iterator[httpx.Client]:
    with server.client() as client:
        yield client


def field_names(route: Route) -> list[str]:
    assert route.body is not None
    return [f.encode_name for f in msgspec.structs.fields(route.body)]


def _field_kinds(route: Route, field: str) -> tuple[msgspec.inspect.Type, ...]:
    assert route.body is not None
    info = msgspec.inspect.type_info(route.body)
    assert isinstance(info, msgspec.inspect.StructType)
    kind = next(f.type for f in info.fields if f.encode_name == field)
    return tuple(kind.types) if isinstance(kind, msgspec.inspect.UnionType) else (kind,)


def is_struct(route: Route, field: str) -> bool:
    """Whether the field may be an object of ours, which skips and drops the keys it lacks."""
    return any(isinstance(k, msgspec.inspect.StructType) for k in _field_kinds(route, field))


def takes_float(route: Route, field: str) -> bool:
    """Whether the field is a number that may be a float: an integer past 64 bits is a valid double there."""
    return any(isinstance(k, msgspec.inspect.FloatType) for k in _field_kinds(route, field))


def with_raw(valid: dict[str, Any], field: str, raw: bytes) -> bytes:
    """The valid body with `field` (added if absent) set to the JSON text `raw`, written as it is."""
    marker = "\x00fuzz\x00"
    text = json.dumps({**valid, field: marker}, ensure_ascii=False).encode()
    return text.replace(json.dumps(marker).encode(), raw)


def error_message(response: httpx.Response) -> str:
    """The error's message, in Ollama's shape under /api and OpenAI's under /v1."""
    error = response.json()["error"]
    return error["message"] if response.url.path.startswith("/v1/") else error


def check(response: httpx.Response, *, status: int | None = None) -> None:
    """No 5xx (exactly `status` when given); errors carry a message; streams do not end in an internal error."""
    assert response.status_code < 500, response.text[:500]
    if status is not None:
        assert response.status_code == status, response.text[:500]
    if response.status_code >= 400:
        message = error_message(response)
        assert isinstance(message, str) and message, response.text[:500]
        return
    content_type = response.headers.get("Content-Type", "")
    if content_type.startswith("application/x-ndjson"):
        last = orjson.loads(response.text.splitlines()[-1])
        assert "error" not in last or not last["error"].startswith("internal"), last
    elif content_type.startswith("text/event-stream"):
        for line in response.text.splitlines():
            if line.startswith("data: {"):
                assert not stream_error(orjson.loads(line[6:])).startswith("internal"), line


def stream_error(event: dict[str, Any]) -> str:
    """The message of an error event ("" for any other): OpenAI chat's and Anthropic's carry an `error` object,
    OpenAI Responses' is itself of type "error" (its other events carry `"error": null`)."""
    if event.get("type") == "error" and isinstance(event.get("message"), str):
        return str(event["message"])
    error = event.get("error")
    return str(error["message"]) if isinstance(error, dict) else ""


def send(http: httpx.Client, route: Route, body: bytes) -> httpx.Response:
    return http.request(route.method, route.path, content=body, headers={"Content-Type": "application/json"})


def still_serving(http: httpx.Client) -> None:
    assert http.get("/api/version").status_code == 200


def test_every_route_with_a_body_is_fuzzed() -> None:
    """A new route that reads a body gets a valid one here, or is named raw; else this fails."""
    with_body = {(r.method, r.path) for r in APP_ROUTES if r.method in BODY_METHODS}
    assert with_body == set(VALID) | set(RAW) | NO_BODY, "give the new route a valid body in VALID (or RAW for bytes)"
    for route in JSON_ROUTES:
        assert route.body is not None, f"{route.method} {route.path} reads JSON: name its type in app.ROUTES"
        msgspec.convert(VALID[route.method, route.path], route.body)


@st.composite
def bodies(draw: st.DrawFn, route: Route) -> bytes:
    valid = VALID[route.method, route.path]
    body = dict(valid)
    match draw(st.sampled_from(["replace", "drop", "option", "anything", "bytes"])):
        case "replace":
            field = draw(st.sampled_from(field_names(route)))
            networked = field in NETWORK_NAMES.get((route.method, route.path), ())
            body[field] = draw(json_values.filter(lambda v: not isinstance(v, str)) if networked else json_values)
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


@pytest.mark.parametrize("route", JSON_ROUTES, ids=IDS)
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_malformed_bodies_never_break_the_server(http: httpx.Client, route: Route, data: st.DataObject) -> None:
    check(send(http, route, data.draw(bodies(route))))


def nested(opener: bytes, depth: int, *, closed: bool) -> bytes:
    """`depth` arrays or objects one inside the other, closed or cut off after the last opening."""
    if not closed:
        return opener * depth
    closer = b"]" if opener == b"[" else b"}"
    return opener * depth + b"1" + closer * depth


OPENERS = [b"[", b'{"a":']


@pytest.mark.parametrize("route", JSON_ROUTES, ids=IDS)
def test_deep_nesting_is_a_400(http: httpx.Client, route: Route) -> None:
    valid = VALID[route.method, route.path]
    first = next(iter(valid))
    for depth in (5_000, 100_000):
        for opener in OPENERS:
            for closed in (True, False):
                value = nested(opener, depth, closed=closed)
                check(send(http, route, value), status=400)
                check(send(http, route, with_raw(valid, first, value) if closed else
                           json.dumps({first: 0}).encode()[:-2] + value), status=400)
    # Every field, and one the type lacks. msgspec skips what a type lacks (a field, or a key of an
    # object of ours) and drops it: only the depth its skipping refuses is a 400 there, 300 is harmless.
    for field in [*field_names(route), "fuzz"]:
        for opener, depth, closed in ((b"[", 300, True), (b'{"a":', 300, True), (b"[", 5_000, True),
                                      (b'{"a":', 5_000, False)):
            value = nested(opener, depth, closed=closed)
            body = with_raw(valid, field, value) if closed else json.dumps({field: 0}).encode()[:-2] + value
            dropped = depth == 300 and (field == "fuzz" or (opener != b"[" and is_struct(route, field)))
            check(send(http, route, body), status=None if dropped else 400)
    still_serving(http)


@pytest.mark.parametrize("route", JSON_ROUTES, ids=IDS)
def test_truncated_bodies_are_a_400(http: httpx.Client, route: Route) -> None:
    body = json.dumps(VALID[route.method, route.path], ensure_ascii=False).encode()
    for end in range(len(body)):  # every cut, some inside a multi-byte character
        check(send(http, route, body[:end]), status=400)
    still_serving(http)


@pytest.mark.parametrize("route", JSON_ROUTES, ids=IDS)
def test_every_field_of_every_type(http: httpx.Client, route: Route) -> None:
    valid = VALID[route.method, route.path]
    networked = NETWORK_NAMES.get((route.method, route.path), frozenset())
    for field in field_names(route):
        for raw in TYPED:
            if field in networked and raw.startswith('"'):
                continue
            check(send(http, route, with_raw(valid, field, raw.encode())))
        for raw in HUGE:  # an object of ours drops the key it lacks, number and all; a float holds a big integer
            dropped = raw.startswith("{") and is_struct(route, field)
            held = raw.lstrip("-").isdigit() and takes_float(route, field)
            check(send(http, route, with_raw(valid, field, raw.encode())), status=None if dropped or held else 400)
        if field == "options":  # integers beyond 64 bits in integer options: Ollama takes any number there, and
            for option in INTEGER_OPTIONS:  # we clamp it into the option's C type or refuse it, never a 5xx
                for raw in HUGE[:3]:
                    check(send(http, route, with_raw(valid, field, f'{{"{option}": {raw}}}'.encode())))
    still_serving(http)


@pytest.mark.parametrize("route", JSON_ROUTES, ids=IDS)
def test_bytes_that_are_not_utf8_are_a_400(http: httpx.Client, route: Route) -> None:
    valid = VALID[route.method, route.path]
    for field in [*valid, "fuzz"]:
        # A field the type lacks is skipped unread: its escapes are not decoded, so a lone surrogate passes.
        for bad in NOT_UTF8 if field == "fuzz" else [*NOT_UTF8, *LONE_SURROGATES]:
            check(send(http, route, with_raw(valid, field, b'"' + bad + b'"')), status=400)
            check(send(http, route, with_raw(valid, field, b'{"' + bad + b'": 1}')), status=400)
    for bad in NOT_UTF8:
        check(send(http, route, bad), status=400)
    still_serving(http)


@pytest.mark.parametrize("path", RAW.values())
def test_raw_body_routes_refuse_what_is_not_the_blob(http: httpx.Client, path: str) -> None:
    for body in [nested(b"[", 100_000, closed=False), nested(b'{"a":', 5_000, closed=True), *NOT_UTF8, b""]:
        response = http.post(path, content=body)
        assert 400 <= response.status_code < 500, response.text[:500]
        assert error_message(response)


def test_a_body_over_the_limit_is_a_413(http: httpx.Client) -> None:
    # Just over: the server stops reading at the limit, and a client still sending would see the socket close.
    response = http.post("/api/chat", content=b"[" * (MAX_BODY + 1024), headers={"Content-Type": "application/json"})
    check(response, status=413)
    still_serving(http)


def test_a_schema_llama_cpp_refuses_is_a_400(http: httpx.Client) -> None:
    # json-schema-to-grammar writes `item{99999,}`; llama.cpp's grammar parser refuses that many repetitions.
    for path, body in (("/api/generate", {"model": MODEL, "prompt": "hi", "stream": False,
                                          "format": {"type": "array", "minItems": 100_000}}),
                       ("/v1/chat/completions", {"model": MODEL, "messages": HELLO, "response_format": {
                           "type": "json_schema", "json_schema": {"name": "n", "schema": {"type": "string",
                                                                                          "minLength": 10**9}}}})):
        check(http.post(path, json=body), status=400)


def test_context_tokens_outside_the_vocabulary_are_a_400(http: httpx.Client) -> None:
    for context in ([999_999_999], [-5]):
        check(http.post("/api/generate", json={"model": MODEL, "prompt": "hi", "stream": False, "context": context}),
              status=400)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.text(st.characters(blacklist_categories=("Cc", "Cs", "Zs"), blacklist_characters="/?#%\\"),
               min_size=1, max_size=40))
def test_odd_names_in_paths(http: httpx.Client, name: str) -> None:
    for method, path in (("HEAD", f"/api/blobs/{name}"), ("POST", f"/api/blobs/{name}"),
                         ("GET", f"/v1/models/{name}")):
        response = http.request(method, path, content=b"data")
        assert response.status_code < 500


def test_a_schema_nested_within_the_limit_still_works(http: httpx.Client) -> None:
    """The schema depth bound leaves room for real schemas: each object nests two levels (itself and its
    `properties`), so as many objects as fit in OLLAMA_PY_MAX_SCHEMA_DEPTH still answer."""
    schema: dict[str, Any] = {"type": "string"}
    for _ in range((ollama_settings.Settings().max_schema_depth - 1) // 2):
        schema = {"type": "object", "properties": {"a": schema}, "required": ["a"]}
    answer = http.post("/api/generate", json={"model": MODEL, "prompt": "Hi", "stream": False, "format": schema})
    assert answer.status_code == 200, answer.text[:500]


def test_a_keep_alive_beyond_any_date_leaves_ps_working(http: httpx.Client) -> None:
    for keep_alive in (1e308, "9999999999999999999h", 2**63 - 1):
        check(http.post("/api/generate", json={"model": MODEL, "prompt": "", "keep_alive": keep_alive}), status=200)
        check(http.get("/api/ps"), status=200)


def test_the_server_still_answers_afterwards(http: httpx.Client) -> None:
    still_serving(http)
    answer = http.post("/api/generate", json={"model": MODEL, "prompt": "Hi", "stream": False}).json()
    assert answer["done"] and answer["eval_count"] <= 2  # and the model's keep_alive is the default again
    for path in ("/api/tags", "/api/ps", "/v1/models", f"/v1/models/{MODEL}", "/health", "/metrics", "/openapi.json"):
        assert http.get(path).status_code == 200, path
