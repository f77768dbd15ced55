"""A soak: issue 13's hostile read-scope requests against a real server while healthy clients keep using it.

Starts `ollama-py serve` on a free loopback port with a fresh store holding
the default model (imported first, as the tests import it) and settings close
to the defaults (`OLLAMA_NUM_PARALLEL=4`, `OLLAMA_MAX_QUEUE=16`, every
`OLLAMA_PY_*` bound at its default). Then:

1. quiet baselines: a short healthy streaming `/api/chat` (16 tokens,
   temperature 0; time to first token and total) and `GET /api/tags`,
   measured again after the soak; each ratio is to the faster of the two,
   so a load spike during one of them does not flatter the soak;
2. for --minutes, one hostile lane cycling through every row of the issue's
   table that a client can reproduce over HTTP (each row sends its requests
   as the issue did: 8 template clients at once, 200 streams at once, ...),
   beside two healthy chat streams in a loop and a `/api/tags` poller;
3. the end state: every slot free and nothing waiting, then SIGTERM with
   hostile and healthy requests in flight, and how long the server takes to
   exit (the issue's last row).

The server's and its runner children's RSS is sampled every second. Each
hostile request records its status and how long the server took to answer
(or that the client left, as planned, or that the guard ran out: a hang).
Healthy samples are also attributed to the rows whose requests were in
flight while they ran, so each row gets its own healthy p50/p99 and peak RSS.

A 503 that says "maximum pending requests exceeded" is the designed queue
bound (issue 13: "past it, 503 as Ollama answers"), counted apart; any other
5xx, a hang, or the server dying is a failure and the exit status is 1.

    .venv/bin/python bench/soak.py --minutes 5 --out bench/results-soak-cpu-2core.json

The ratios are the loaded figure over the same figure on the quiet server; on
a machine shared with other work they include whatever else ran meanwhile.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import re
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from http_bench import (  # the HTTP benchmark's server start-up, shared
    Server,
    free_port,
    percentile,
    ready,
)

ROOT = Path(__file__).resolve().parents[1]
MODEL = "smollm2:135m"
GUARD = 600.0  # a hostile request with no answer after this long is a hang
HEALTHY_GUARD = 300.0
BUSY = "maximum pending requests exceeded"
CHAT = {"model": MODEL, "stream": True, "options": {"temperature": 0, "num_predict": 16},
        "messages": [{"role": "user", "content": "Write a short poem about the sea."}]}
QUICK = {"temperature": 0, "num_predict": 4}
NESTED_RANGES = "{{range 1000000}}{{range 1000000}}{{end}}{{end}}"
WRITING_LOOP = "{{range 1000000000}}all work and no play {{end}}"
EVIL_ORIGIN = "http://localhost:1234.evil.example"


def stats_ms(values: list[float]) -> dict[str, float | int | None]:
    if not values:
        return {"n": 0, "p50": None, "p99": None, "max": None}
    return {"n": len(values), "p50": round(statistics.median(values) * 1e3, 1),
            "p99": round(percentile(values, 0.99) * 1e3, 1), "max": round(max(values) * 1e3, 1)}


def with_ratios(loaded: dict[str, Any], quiet: dict[str, Any]) -> dict[str, Any]:
    """Each loaded statistic beside its ratio to the same statistic on the quiet server."""
    out = dict(loaded)
    for key in ("p50", "p99", "max"):
        if loaded.get(key) is not None and quiet.get(key):
            out[f"{key}_ratio"] = round(loaded[key] / quiet[key], 2)
    return out


# --- the server and its memory ---------------------------------------------------------------------------------

PAGE = os.sysconf("SC_PAGE_SIZE")


def session_rss(session: int) -> tuple[int, int, int]:
    """(server RSS, runners' RSS summed, runner count) in bytes: the processes of the server's own session."""
    try:
        import psutil
    except ImportError:
        psutil = None
    if psutil is not None:
        try:
            server = psutil.Process(session)
            children = server.children(recursive=True)
            return (server.memory_info().rss, sum(c.memory_info().rss for c in children if c.is_running()),
                    len(children))
        except psutil.Error:
            return 0, 0, 0
    server = runners = count = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                fields = f.read().rpartition(b")")[2].split()
        except OSError:
            continue
        if int(fields[3]) != session:
            continue
        rss = int(fields[21]) * PAGE
        if int(entry.name) == session:
            server = rss
        else:
            runners += rss
            count += 1
    return server, runners, count


class Sampler(threading.Thread):
    """RSS every second, on a thread of its own so a busy event loop does not thin the samples."""

    def __init__(self, pid: int) -> None:
        super().__init__(name="rss sampler", daemon=True)
        self.pid = pid
        self.samples: list[tuple[float, int, int, int]] = []
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            server, runners, count = session_rss(self.pid)
            if server:
                self.samples.append((time.monotonic(), server, runners, count))
            self.stopped.wait(1.0)

    def peak_mb(self, windows: list[tuple[float, float]] | None = None) -> dict[str, float]:
        chosen = [s for s in self.samples
                  if windows is None or any(a - 1 <= s[0] <= b + 1 for a, b in windows)]
        if not chosen:
            return {}
        return {"server": round(max(s[1] for s in chosen) / 2**20, 1),
                "runners": round(max(s[2] for s in chosen) / 2**20, 1),
                "total": round(max(s[1] + s[2] for s in chosen) / 2**20, 1)}


def ollama_py_server(store: Path, log: Path) -> Server:
    """`ollama-py serve` from this tree on a fresh store, started and stopped as the HTTP benchmark does."""
    port = free_port()
    env = {**os.environ, "OLLAMA_HOST": f"127.0.0.1:{port}", "OLLAMA_MODELS": str(store),
           "OLLAMA_NUM_PARALLEL": "4", "OLLAMA_MAX_QUEUE": "16", "OLLAMA_NOPRUNE": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    for name in ("OLLAMA_PY_API_KEYS", "OLLAMA_PY_API_KEYS_FILE", "OLLAMA_ORIGINS", "OLLAMA_KEEP_ALIVE"):
        env.pop(name, None)
    return Server("ollama-py", [sys.executable, "-m", "ollama_py.cli.main", "serve"], env, MODEL, log, port)


def running(server: Server) -> bool:
    return server.proc is not None and server.proc.poll() is None


def log_errors(log: Path) -> list[str]:
    """The log's error lines, each once with its count (llama.cpp's own complaints arrive as ERROR too)."""
    lines = log.read_text(errors="replace").splitlines()
    found = Counter(line[:300] for line in lines if re.search(r"\bERROR\b|Traceback|Error:", line))
    return [f"{count} x {line}" for line, count in found.most_common(40)]


def import_default(store: Path) -> None:
    """The default model in a fresh store, the way tests/server_harness.py imports it."""
    sys.path.insert(0, str(ROOT))
    from ollama_py import settings
    from ollama_py.store import create
    from ollama_py.store.manifests import Store

    loaded = dataclasses.replace(settings.load(), models=store, noprune=True)
    create.import_default(Store(store, noprune=True), loaded)


# --- one hostile request -----------------------------------------------------------------------------------------


@dataclass
class Outcome:
    label: str
    status: int | str  # an HTTP status, "left" (the client left as planned), "hang", or "error: ..."
    answer_s: float
    body: str = ""
    cors_allowed: bool = False


async def send(session: aiohttp.ClientSession, url: str, label: str, method: str, path: str, *,
               body: bytes | None = None, headers: dict[str, str] | None = None,
               leave_after: float | None = None) -> Outcome:
    """One request, its whole answer read; `leave_after` seconds: the client disconnects then, as planned."""
    start = time.monotonic()
    headers = {"Content-Type": "application/json", **(headers or {})}

    async def exchange() -> Outcome:
        async with session.request(method, url + path, data=body, headers=headers) as response:
            status = response.status
            answered = time.monotonic() - start
            text = ""
            async for line in response.content:  # a stream may answer 200, then an error line
                if len(text) < 400:
                    text += line.decode(errors="replace")
                if b'"error"' in line and status < 400:
                    status = f"{status} then error"  # type: ignore[assignment]
            return Outcome(label, status, answered, text[:400].strip(),
                           "Access-Control-Allow-Origin" in response.headers)

    try:
        return await asyncio.wait_for(exchange(), leave_after or GUARD)
    except TimeoutError:
        return Outcome(label, "left" if leave_after else "hang", time.monotonic() - start)
    except aiohttp.ClientError as exc:
        return Outcome(label, f"error: {type(exc).__name__}: {exc}", time.monotonic() - start)


def encode(value: object) -> bytes:
    return json.dumps(value).encode()


# --- the rows of issue 13's table --------------------------------------------------------------------------------


@dataclass
class Row:
    name: str
    issue: str  # what the issue's table says happened
    run: Callable[[aiohttp.ClientSession, str], Awaitable[list[Outcome]]]
    windows: list[tuple[float, float]] = field(default_factory=list)
    outcomes: list[Outcome] = field(default_factory=list)


def rows() -> list[Row]:
    """Bodies built once: the client's own serializing is not what the soak measures."""
    templates = [encode({"model": MODEL, "prompt": "hi", "template": t, "stream": False, "options": QUICK})
                 for t in (NESTED_RANGES, WRITING_LOOP)]
    long_chat = encode({"model": MODEL, "stream": False, "options": QUICK, "messages": [
        {"role": "user" if i % 2 == 0 else "assistant", "content": f"message number {i}"} for i in range(2000)]})
    huge_chat = encode({"model": MODEL, "stream": False, "options": QUICK,
                        "messages": [{"role": "user", "content": "hi"}] * 100_000})
    repeat = encode({"model": MODEL, "prompt": "Say hello.", "stream": False,
                     "options": {**QUICK, "repeat_last_n": 2147483647}})
    enum = encode({"model": MODEL, "prompt": "Pick one.", "stream": False, "options": QUICK, "format": {
        "type": "object", "properties": {"pick": {"enum": [f"value {i}" for i in range(100_000)]}},
        "required": ["pick"]}})
    flood = [encode({"model": MODEL, "prompt": f"Count from {i}:", "options": {"temperature": 0, "num_predict": 4}})
             for i in range(200)]
    big_prompt = encode({"model": MODEL, "prompt": "word " * (12 << 20), "stream": False, "options": QUICK})
    stops = encode({"model": MODEL, "prompt": "hi", "stream": False,
                    "options": {**QUICK, "stop": [f"s{i}" for i in range(200_000)]}})
    forever = encode({"model": MODEL, "prompt": "hi", "stream": False, "keep_alive": 1e300, "options": QUICK})
    sentence = "the quick brown fox jumps over the lazy dog " * 2
    embed_many = encode({"model": MODEL, "input": [f"{i} {sentence}" for i in range(20_000)]})
    embed_bound = encode({"model": MODEL, "input": [f"{i} {sentence}" for i in range(2048)]})
    leaving = encode({"model": MODEL, "stream": False, "format": {"type": "string", "minLength": 1500},
                      "messages": [{"role": "user", "content": "Count to a million."}],
                      "options": {"temperature": 0, "num_predict": 100_000}})
    deep_body = b"[" * 100_000 + b"]" * 100_000
    deep_format = (b'{"model":"' + MODEL.encode() + b'","prompt":"hi","stream":false,"format":'
                   + b'{"a":' * 100_000 + b"1" + b"}" * 100_000 + b"}")
    deep: dict[str, object] = {"type": "string"}
    for _ in range(100):
        deep = {"type": "array", "items": deep}
    schemas = {"deep schema": deep, "recursive schema": {"$ref": "#/$defs/a", "$defs": {"a": {"$ref": "#/$defs/a"}}},
               "out-of-range schema number": {"type": "integer", "minimum": -(10 ** 30)},
               "grammar llama.cpp rejects": {"type": "string", "pattern": "(((("}}
    context = encode({"model": MODEL, "prompt": "hi", "stream": False, "options": QUICK,
                      "context": [2**31 - 1, 999_999_999]})
    chat_probe = encode({"model": MODEL, "stream": False, "options": QUICK,
                         "messages": [{"role": "user", "content": "hi"}]})

    async def template(s: aiohttp.ClientSession, url: str) -> list[Outcome]:
        return list(await asyncio.gather(*(
            send(s, url, ("nested ranges", "writing loop")[i % 2], "POST", "/api/generate", body=templates[i % 2],
                 leave_after=3.0) for i in range(8))))

    async def many_messages(s: aiohttp.ClientSession, url: str) -> list[Outcome]:
        return [await send(s, url, "2000 messages", "POST", "/api/chat", body=long_chat),
                await send(s, url, "100,000 messages (4 MB)", "POST", "/api/chat", body=huge_chat)]

    def single(label: str, path: str, body: bytes) -> Callable[[aiohttp.ClientSession, str],
                                                               Awaitable[list[Outcome]]]:
        async def run(s: aiohttp.ClientSession, url: str) -> list[Outcome]:
            return [await send(s, url, label, "POST", path, body=body)]
        return run

    async def queue(s: aiohttp.ClientSession, url: str) -> list[Outcome]:
        return list(await asyncio.gather(*(send(s, url, "streaming generate", "POST", "/api/generate", body=b)
                                           for b in flood)))

    async def prompt(s: aiohttp.ClientSession, url: str) -> list[Outcome]:
        return list(await asyncio.gather(*(send(s, url, "60 MB prompt", "POST", "/api/generate", body=big_prompt)
                                           for _ in range(6))))

    async def keep_alive(s: aiohttp.ClientSession, url: str) -> list[Outcome]:
        return [await send(s, url, "generate keep_alive 1e300", "POST", "/api/generate", body=forever),
                await send(s, url, "GET /api/ps after it", "GET", "/api/ps")]

    async def embed(s: aiohttp.ClientSession, url: str) -> list[Outcome]:
        return [await send(s, url, "20,000 inputs, left after 5 s", "POST", "/api/embed", body=embed_many,
                           leave_after=5.0),
                await send(s, url, "2048 inputs (the bound), left after 3 s", "POST", "/api/embed",
                           body=embed_bound, leave_after=3.0)]

    async def abandoned(s: aiohttp.ClientSession, url: str) -> list[Outcome]:
        return [await send(s, url, "endless chat, left after 2 s", "POST", "/api/chat", body=leaving,
                           leave_after=2.0)]

    async def malformed(s: aiohttp.ClientSession, url: str) -> list[Outcome]:
        out = [await send(s, url, "100,000-deep JSON body", "POST", "/api/generate", body=deep_body),
               await send(s, url, "100,000-deep JSON in format", "POST", "/api/generate", body=deep_format),
               await send(s, url, "out-of-range context tokens", "POST", "/api/generate", body=context)]
        for label, schema in schemas.items():
            out.append(await send(s, url, label, "POST", "/api/generate", body=encode(
                {"model": MODEL, "prompt": "hi", "stream": False, "options": QUICK, "format": schema})))
        return out

    async def origin(s: aiohttp.ClientSession, url: str) -> list[Outcome]:
        evil = {"Origin": EVIL_ORIGIN}
        return [await send(s, url, "GET /api/version", "GET", "/api/version", headers=evil),
                await send(s, url, "POST /api/chat", "POST", "/api/chat", body=chat_probe, headers=evil),
                await send(s, url, "OPTIONS preflight", "OPTIONS", "/api/chat",
                           headers={**evil, "Access-Control-Request-Method": "POST"})]

    return [
        Row("Go template with nested ranges, 8 clients leave after 3 s",
            "each pins a worker thread forever; listing and healthy generation time out", template),
        Row("/api/chat with many short messages",
            "2000 messages over 200 s; 100k messages runs for hours", many_messages),
        Row("options.repeat_last_n = 2147483647", "an 8 GB ring buffer per request",
            single("repeat_last_n 2^31-1", "/api/generate", repeat)),
        Row("format: 100,000-entry enum", "30 s per token; a neighbour's 8 s answer took 92 s",
            single("100,000-entry enum", "/api/generate", enum)),
        Row("200 concurrent streams (OLLAMA_MAX_QUEUE=16)", "all admitted, no 503", queue),
        Row("60 MB prompt, 6 at once", "+1.6 GB per request", prompt),
        Row("200,000 stop strings", "a neighbour 3.3x slower",
            single("200,000 stop strings", "/api/generate", stops)),
        Row("keep_alive: 1e300, then GET /api/ps", "/api/ps answers 500 for everyone", keep_alive),
        Row("/api/embed with 20,000 inputs, abandoned", "runs 90 s+, cannot be cancelled, pins a worker", embed),
        Row("generation abandoned by its client", "(issue: work must stop when the client leaves)", abandoned),
        Row("deep JSON, deep/recursive schema, bad context, bad grammar", "500 instead of 400", malformed),
        Row(f"Origin: {EVIL_ORIGIN}", "allowed by the * pattern", origin),
    ]


# --- healthy clients ------------------------------------------------------------------------------------------


@dataclass
class Healthy:
    chats: list[tuple[float, float, float, float]] = field(default_factory=list)  # start, end, ttft, total
    tags: list[tuple[float, float, float]] = field(default_factory=list)  # start, end, latency
    busy: int = 0  # designed 503s (the queue bound)
    server_errors: int = 0  # any other 5xx
    failures: Counter[str] = field(default_factory=Counter)


async def healthy_chat(session: aiohttp.ClientSession, url: str, sink: Healthy) -> None:
    start = time.monotonic()
    ttft = None
    try:
        async with session.post(url + "/api/chat", json=CHAT,
                                timeout=aiohttp.ClientTimeout(total=HEALTHY_GUARD)) as response:
            if response.status != 200:
                text = await response.text()
                if response.status == 503 and BUSY in text:
                    sink.busy += 1
                else:
                    sink.server_errors += response.status >= 500
                    sink.failures[f"chat {response.status}: {text[:120]}"] += 1
                return
            last: dict[str, Any] = {}
            async for line in response.content:
                if not line.strip():
                    continue
                last = json.loads(line)
                if "error" in last:
                    sink.failures[f"chat stream error: {last['error'][:120]}"] += 1
                    return
                if ttft is None and (last.get("message") or {}).get("content"):
                    ttft = time.monotonic() - start
            if not last.get("done"):
                sink.failures["chat stream ended without done"] += 1
                return
    except (TimeoutError, aiohttp.ClientError) as exc:
        sink.failures[f"chat {type(exc).__name__}"] += 1
        return
    end = time.monotonic()
    sink.chats.append((start, end, ttft if ttft is not None else end - start, end - start))


async def healthy_tags(session: aiohttp.ClientSession, url: str, sink: Healthy) -> None:
    start = time.monotonic()
    try:
        async with session.get(url + "/api/tags", timeout=aiohttp.ClientTimeout(total=HEALTHY_GUARD)) as response:
            text = await response.text()
            if response.status != 200 or MODEL not in text:
                sink.server_errors += response.status >= 500
                sink.failures[f"tags {response.status}: {text[:120]}"] += 1
                return
    except (TimeoutError, aiohttp.ClientError) as exc:
        sink.failures[f"tags {type(exc).__name__}"] += 1
        return
    end = time.monotonic()
    sink.tags.append((start, end, end - start))


async def loop(step: Callable[[], Awaitable[None]], stop: asyncio.Event, gap: float) -> None:
    while not stop.is_set():
        await step()
        await asyncio.sleep(gap)


def healthy_stats(sink: Healthy, windows: list[tuple[float, float]] | None = None) -> dict[str, Any]:
    def inside(a: float, b: float) -> bool:
        return windows is None or any(a < w1 and b > w0 for w0, w1 in windows)

    chats = [c for c in sink.chats if inside(c[0], c[1])]
    return {"chat_ttft_ms": stats_ms([c[2] for c in chats]), "chat_total_ms": stats_ms([c[3] for c in chats]),
            "tags_ms": stats_ms([t[2] for t in sink.tags if inside(t[0], t[1])])}


# --- the soak ----------------------------------------------------------------------------------------------------


async def metrics(session: aiohttp.ClientSession, url: str) -> tuple[float, float]:
    """(slots busy, requests waiting) as /metrics says."""
    async with session.get(url + "/metrics") as response:
        text = await response.text()
    busy = sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith("ollama_py_slots_busy{"))
    waiting = sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                  if line.startswith("ollama_py_num_requests_waiting "))
    return busy, waiting


async def quiet(session: aiohttp.ClientSession, url: str, chats: int, tags: int) -> Healthy:
    sink = Healthy()
    await healthy_chat(session, url, Healthy())  # loads the model: not measured
    for _ in range(chats):
        await healthy_chat(session, url, sink)
    for _ in range(tags):
        await healthy_tags(session, url, sink)
        await asyncio.sleep(0.02)
    if sink.failures or sink.busy:
        raise RuntimeError(f"the quiet server failed healthy requests: {dict(sink.failures)}")
    return sink


async def shutdown_under_load(session: aiohttp.ClientSession, server: Server, table: list[Row]) -> dict[str, Any]:
    """SIGTERM while templates, an embedding at its bound and healthy streams are in flight: the time to exit."""
    assert server.proc is not None
    inflight = [asyncio.create_task(table[0].run(session, server.url)),
                asyncio.create_task(table[8].run(session, server.url)),
                *(asyncio.create_task(healthy_chat(session, server.url, Healthy())) for _ in range(2))]
    await asyncio.sleep(1.0)
    start = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    code = None
    while time.monotonic() - start < 120:
        code = server.proc.poll()
        if code is not None:
            break
        await asyncio.sleep(0.1)
    exit_s = time.monotonic() - start
    for task in inflight:
        task.cancel()
    await asyncio.gather(*inflight, return_exceptions=True)
    await asyncio.sleep(2.0)
    left = session_rss(server.proc.pid)[2]
    return {"in_flight": "8 template requests, /api/embed with 20,000 then 2048 inputs, 2 healthy chats",
            "exit_s": round(exit_s, 2), "exit_code": code, "hang": code is None, "runners_left": left}


async def soak(args: argparse.Namespace, server: Server, sampler: Sampler) -> dict[str, Any]:
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await ready(session, server, args)
        url = server.url
        quiet_before = healthy_stats(await quiet(session, url, args.quiet_chats, args.quiet_tags))
        print(f"quiet: {json.dumps(quiet_before)}", file=sys.stderr, flush=True)
        rss_start = sampler.samples[-1] if sampler.samples else None

        table = rows()
        sink = Healthy()
        stop = asyncio.Event()
        healthy = [asyncio.create_task(loop(lambda: healthy_chat(session, url, sink), stop, 0.0)) for _ in range(2)]
        healthy.append(asyncio.create_task(loop(lambda: healthy_tags(session, url, sink), stop, 0.1)))
        began = time.monotonic()
        cycles = 0
        per_cycle: list[dict[str, Any]] = []
        while time.monotonic() - began < args.minutes * 60 and running(server):
            cycle_start = time.monotonic()
            for row in table:
                start = time.monotonic()
                got = await row.run(session, url)
                row.outcomes.extend(got)
                row.windows.append((start, time.monotonic()))
                print(f"  {time.monotonic() - began:6.0f} s  {row.name}: {dict(Counter(str(o.status) for o in got))}",
                      file=sys.stderr, flush=True)
                if not running(server):
                    break
                await asyncio.sleep(0.2)
            cycles += 1
            per_cycle.append({"end": mb(sampler.samples[-1]) if sampler.samples else None,
                              "peak": sampler.peak_mb([(cycle_start, time.monotonic())])})
        soaked = time.monotonic() - began
        stop.set()
        await asyncio.gather(*healthy)
        died = not running(server)

        settled: dict[str, Any] = {"slots_busy": None, "waiting": None, "settled_s": None}
        if not died:
            start = time.monotonic()
            while time.monotonic() - start < 120:
                busy, waiting = await metrics(session, url)
                settled.update(slots_busy=busy, waiting=waiting)
                if busy == 0 and waiting == 0:
                    settled["settled_s"] = round(time.monotonic() - start, 2)
                    break
                await asyncio.sleep(0.5)
        rss_end = sampler.samples[-1] if sampler.samples else None
        quiet_after = healthy_stats(await quiet(session, url, args.quiet_chats, args.quiet_tags)) if not died else {}
        quiet_stats = fastest(quiet_before, quiet_after)
        shutdown = await shutdown_under_load(session, server, table) if not died else {}

    outcomes = [o for row in table for o in row.outcomes]
    server_5xx = [o for o in outcomes if isinstance(o.status, int) and o.status >= 500
                  and not (o.status == 503 and BUSY in o.body)]
    streamed = [o for o in outcomes if isinstance(o.status, str) and "then error" in o.status]
    hangs = [o for o in outcomes if o.status == "hang"]
    cors = [o for o in outcomes if o.cors_allowed]
    result: dict[str, Any] = {
        "soak_s": round(soaked, 1), "cycles": cycles,
        "quiet_before": quiet_before, "quiet_after": quiet_after, "quiet": quiet_stats,
        "healthy": {key: with_ratios(value, quiet_stats[key]) for key, value in healthy_stats(sink).items()}
        | {"chats": len(sink.chats), "tags": len(sink.tags), "designed_503": sink.busy,
           "failed": sum(sink.failures.values()), "failures": dict(sink.failures)},
        "rows": {row.name: row_summary(row, sink, quiet_stats, sampler) for row in table},
        "rss_mb": {"peak": sampler.peak_mb(),
                   "soak_start": mb(rss_start), "per_cycle": per_cycle, "soak_end": mb(rss_end),
                   "peak_growth_first_to_last_cycle_pct": {
                       part: growth_mb([c["peak"] for c in per_cycle], part) for part in ("server", "runners")},
                   "server_growth_pct": growth(rss_start, rss_end, 1),
                   "samples": len(sampler.samples)},
        "end_state": settled,
        "shutdown": shutdown,
        "server_5xx": len(server_5xx) + sink.server_errors,
        "server_5xx_examples": [dataclasses.asdict(o) for o in server_5xx[:5]],
        "errors_inside_200_streams": [dataclasses.asdict(o) for o in streamed[:5]],
        "designed_503": sum(1 for o in outcomes if o.status == 503 and BUSY in o.body) + sink.busy,
        "hangs": [dataclasses.asdict(o) for o in hangs[:5]],
        "evil_origin_allowed": len(cors),
        "server_died": died,
    }
    return result


def fastest(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """The quiet baseline: each statistic the faster of before and after the soak (the machine's load moves)."""
    return {key: {stat: min(v for v in (before[key][stat], after.get(key, {}).get(stat)) if v is not None)
                  for stat in ("p50", "p99", "max")} for key in before}


def mb(sample: tuple[float, int, int, int] | None) -> dict[str, float] | None:
    if sample is None:
        return None
    return {"server": round(sample[1] / 2**20, 1), "runners": round(sample[2] / 2**20, 1)}


def growth(a: tuple[float, int, int, int] | None, b: tuple[float, int, int, int] | None, index: int) -> float | None:
    if a is None or b is None or not a[index]:
        return None
    return round((b[index] - a[index]) / a[index] * 100, 1)


def growth_mb(peaks: list[dict[str, float]], part: str) -> float | None:
    """From the first cycle's peak (every kind of request seen once) to the last's: a leak grows it cycle by
    cycle, while memory the allocator keeps after a burst (and reuses) does not."""
    if len(peaks) < 2 or not peaks[0] or not peaks[-1]:
        return None
    return round((peaks[-1][part] - peaks[0][part]) / peaks[0][part] * 100, 1)


def row_summary(row: Row, sink: Healthy, quiet_stats: dict[str, Any], sampler: Sampler) -> dict[str, Any]:
    requests: dict[str, Any] = {}
    for o in row.outcomes:
        entry = requests.setdefault(o.label, {"statuses": Counter(), "answer_s": [], "examples": {}})
        entry["statuses"][str(o.status)] += 1
        entry["answer_s"].append(o.answer_s)
        if str(o.status) not in entry["examples"] and o.body:
            entry["examples"][str(o.status)] = o.body[:240]
    for entry in requests.values():
        times = entry.pop("answer_s")
        entry["statuses"] = dict(entry["statuses"])
        entry["answer_s"] = {"n": len(times), "p50": round(statistics.median(times), 3),
                             "max": round(max(times), 3)}
    while_running = healthy_stats(sink, row.windows)
    return {"issue": row.issue, "runs": len(row.windows),
            "seconds": round(sum(b - a for a, b in row.windows), 1),
            "requests": requests,
            "healthy_while_running": {key: with_ratios(value, quiet_stats[key])
                                      for key, value in while_running.items()},
            "peak_rss_mb": sampler.peak_mb(row.windows)}


def _interrupted(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")  # so the server is stopped on the way out


def main() -> int:
    signal.signal(signal.SIGTERM, _interrupted)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=5.0, help="how long the hostile lane cycles")
    parser.add_argument("--out", type=Path, required=True, help="the figures, as JSON")
    parser.add_argument("--quiet-chats", type=int, default=12, help="healthy chats timed on the quiet server")
    parser.add_argument("--quiet-tags", type=int, default=100, help="/api/tags timed on the quiet server")
    args = parser.parse_args()
    load_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="soak-") as scratch:
        store = Path(scratch) / "models"
        import_default(store)
        log = Path(scratch) / "server.log"
        server = ollama_py_server(store, log)
        server.start()
        assert server.proc is not None
        sampler = Sampler(server.proc.pid)
        sampler.start()
        try:
            result = asyncio.run(soak(args, server, sampler))
        finally:
            sampler.stopped.set()
            server.stop()
            errors = log_errors(log)
            kept = Path(tempfile.gettempdir()) / f"soak-server-{server.port}.log"
            kept.write_bytes(log.read_bytes())
    result = {"args": {"minutes": args.minutes, "quiet_chats": args.quiet_chats, "quiet_tags": args.quiet_tags},
              "settings": {"OLLAMA_NUM_PARALLEL": 4, "OLLAMA_MAX_QUEUE": 16, "others": "defaults"},
              "cpu_count": os.cpu_count(), "load_start": round(load_start, 1),
              "load_end": round(os.getloadavg()[0], 1), "server_log": str(kept),
              "server_log_errors": errors, **result}
    result["ok"] = (result["server_5xx"] == 0 and not result["hangs"] and not result["server_died"]
                    and not result["shutdown"].get("hang") and not result["errors_inside_200_streams"])
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("ok", "server_5xx", "designed_503", "hangs", "server_died",
                                             "healthy", "rss_mb", "end_state", "shutdown")}, indent=2))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
