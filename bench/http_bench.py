"""End to end over HTTP: a candidate ollama-py beside a baseline ollama-py and llama-server, rounds interleaved.

Every server is started here, on a free loopback port, with the same settings:
as many slots as streams, the same context per slot, the same threads, flash
attention, batch size and GPU layers. Each ollama-py gets its own fresh store
(OLLAMA_MODELS in a temp folder; the default model is imported from the
pinned wheel's GGUF) and serves a model created from smollm2:135m that pins
num_thread, num_gpu and repeat_penalty 1.0 (llama-server's default), so the
same request means the same work on every server. llama-server is compiled
from the same pinned llama.cpp in the same cached CMake build
(`build_backend.build_llama_server()`) and loads that same GGUF.

Each round sends N concurrent streaming /v1/chat/completions requests (the
same N prompts to every server in that round, new prompts each round so no
answer comes whole from a prompt cache; greedy, max_tokens), and measures

  aggregate tok/s = sum of `usage.completion_tokens` / wall time of the round
  TTFT            = request sent -> first chunk with content, p50 over the round's streams
  CPU ms/token    = CPU time of the server's process session (the server and its runner
                    processes, from /proc) during the round / completion tokens
  decode tok/s    = a stream's tokens after its first / time after its first, median over
                    the round's streams: the decode alone, which speculation speeds up

The servers take turns within each round, the first one rotating from round
to round, so a change in the machine's load hits all of them alike. Reported:
the median over rounds, and the candidate's ratio to each other server both
as a ratio of medians and as the median of the per-round (paired) ratios.

    .venv/bin/python bench/http_bench.py --streams 1 8 --rounds 5 --baseline /tmp/base/.venv/bin/ollama-py

prints a markdown table; --out FILE.json keeps every round.

--mixed makes every other stream ask for an eighth of --max-tokens, as
answers of different lengths do: the short ones end while the long ones go
on, leaving free slots between busy ones.

`--workload chat` is a multi-user chat instead: --conversations users at once
(32 by default) over --streams slots, each holding --turns turns (4) under
one shared system prompt of a few hundred tokens, every turn sending the
whole conversation so far (as chat clients do). Reported per server: the
aggregate tok/s of the whole session and TTFT p50/p99 per turn, so turns 2-4
show what a prompt cache saves; conversations are new every round, only the
system prompt repeats.

    .venv/bin/python bench/http_bench.py --workload chat --streams 8 --rounds 3

`--workload grounded` is grounded text: each request gives a passage of a
few hundred tokens and asks for an answer that quotes or rewrites it (repeat
it, rewrite it in the present tense, correct it), the case prompt-lookup
speculative decoding speeds up. Meant for one stream (--streams 1). ollama-py
drafts by default (OLLAMA_PY_DRAFT_MAX); llama-server gets its own n-gram
speculation (--llama-spec, by default ngram-simple with a 3-token lookup and
16-token drafts, ollama-py's longest draft; llama-server's own defaults, 12
and 48, draft less often). --also-without-drafts adds the candidate with
OLLAMA_PY_DRAFT_MAX=0, so the table shows what the drafts themselves gain;
--also-llama-defaults adds llama-server as it starts without speculation
flags (no speculation: what its users get unless they ask).

    .venv/bin/python bench/http_bench.py --workload grounded --streams 1 --rounds 5 --also-without-drafts --also-llama-defaults

`--workload restart` is the chat's second turn after a restart: --streams
conversations take their first turn at once, every server is stopped and
started again (and loads its model on one request of its own), then the
conversations take their second turn. ollama-py keeps prompt states on disk
(OLLAMA_PY_PROMPT_CACHE_DIR, in the scratch folder); llama-server has no
such tier (its --slot-save-path saves a slot only when asked over its API),
so it evaluates each conversation again. Reported: TTFT p50 and the cached
prompt tokens of the second turn.

    .venv/bin/python bench/http_bench.py --workload restart --streams 1 4 --rounds 3

On a machine whose cores are shared with other work, --threads equal to the
core count measures the scheduler more than the servers: llama.cpp's decode
threads wait for each other at every op, and one of them descheduled stalls
all (seen here: 2 threads on 2 busy cores gave 2-60 tok/s from one round to
the next, 1 thread a steady ~30). Use fewer threads than cores there.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
BASE_MODEL = "smollm2:135m"
BENCH_MODEL = "http-bench:latest"
SYSTEM = "You are a helpful assistant who writes long, detailed answers."
TOPICS = ["a lighthouse keeper", "the history of tea", "how volcanoes form", "a robot learning to paint",
          "the rules of chess", "a trip to Mars", "why the sea is salty", "a day in ancient Rome",
          "how bees make honey", "the life of a star", "a haunted library", "building a treehouse",
          "the water cycle", "a detective in Paris", "how bridges stand up", "a dragon who hates fire"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


CHAT_SYSTEM = (
    "You are the assistant of the Riverside Community Library. Answer visitors' questions briefly and kindly. "
    "The library opens Monday to Friday from nine in the morning to eight in the evening, Saturday from ten to "
    "five, and is closed on Sunday and on public holidays. Members may borrow up to twelve items at a time: "
    "books for three weeks, films and music for one week, magazines for one week, and board games for two "
    "weeks. Loans can be renewed twice online or at the desk unless another member has reserved the item. "
    "Late returns cost twenty cents per day per item, at most five euros per item; children's items never "
    "cost late fees. Membership is free for residents, who show proof of address; visitors pay ten euros a "
    "year. The reading room on the second floor is quiet; group study rooms on the first floor can be booked "
    "for two hours a day. Printing costs ten cents a page in black and white and fifty cents in colour. The "
    "children's corner holds story time on Wednesday and Saturday mornings at eleven. Wheelchair access is "
    "through the garden entrance, and the lift serves every floor. Lost cards are replaced for two euros. "
    "When you do not know an answer, say so and suggest asking at the front desk, and never invent rules, "
    "prices or events that are not listed here.")
CHAT_TURNS = ["Hello! I just moved here. Can I become a member, and what do I need to bring?",
              "Thanks. How many books can I take home, and for how long?",
              "What happens if I bring them back a few days late?",
              "Is there something for my six-year-old daughter on weekends?",
              "Can I print a few pages of a report while I am there?",
              "One more thing: is the building accessible with a wheelchair?"]


GROUNDED_PASSAGES = [
    ("The lighthouse on the northern cliff was built in 1821 from granite quarried two miles inland. For a "
     "century its keepers climbed one hundred and twelve steps every evening to trim the wicks and wind the "
     "clockwork that turned the lens. The keeper's log recorded the wind, the state of the sea and every ship "
     "that passed the rocks. In 1923 the lamp was electrified, and in 1987 the last keeper, Thomas Reid, locked "
     "the door for the final time. Today the tower is a museum, and the light still flashes twice every fifteen "
     "seconds, run by a computer in the harbour office."),
    ("To make a sourdough starter, mix fifty grams of wholemeal flour with fifty grams of water in a clean jar. "
     "Cover it loosely and leave it somewhere warm. Every day, throw away half of the mixture and feed what "
     "remains with fifty grams of flour and fifty grams of water. After five to seven days the starter should "
     "double in size within six hours of a feeding and smell pleasantly sour. Keep it in the fridge between "
     "bakes and feed it once a week. If a grey liquid forms on top, pour it off and feed the starter as usual."),
    ("The town council met on Tuesday evening to discuss the new cycle lanes. The transport officer explained "
     "that the lanes on Mill Road would be separated from traffic by a low kerb and that the work would take "
     "eleven weeks. Several shop owners worried that deliveries would become harder, and the council agreed to "
     "keep two loading bays open in the mornings. The plan was approved by seven votes to three. Construction "
     "will begin in March, and the lanes should open before the summer holidays."),
    ("Honey bees live in colonies of up to sixty thousand workers, a few hundred drones and a single queen. "
     "The workers are all female; in summer each lives about six weeks. A young worker first cleans cells and "
     "feeds larvae, then builds comb and guards the entrance, and only in the last weeks of her life does she "
     "fly out to collect nectar and pollen. A forager that finds a rich patch of flowers returns to the hive "
     "and performs a waggle dance whose angle and length tell her sisters the direction and the distance."),
]
GROUNDED_TASKS = ["Repeat the passage above word for word.",
                  "Rewrite the passage above in the present tense, keeping everything else the same.",
                  "Write the passage above out again, correcting any mistakes you find."]


def grounded_messages(n: int) -> list[dict[str, str]]:
    """The n-th grounded request: a passage and an instruction whose answer quotes or rewrites it."""
    k = n + n // 1000  # rounds start at multiples of 1000: each round a different passage and task
    passage = GROUNDED_PASSAGES[k % len(GROUNDED_PASSAGES)]
    task = GROUNDED_TASKS[(k // len(GROUNDED_PASSAGES)) % len(GROUNDED_TASKS)]
    return [{"role": "system", "content": SYSTEM},
            {"role": "user", "content": f"Request {n}.\n\n{passage}\n\n{task}"}]


def messages(n: int) -> list[dict[str, str]]:
    """The n-th prompt: a different opening each time, so only the system prompt is a shared prefix."""
    return [{"role": "system", "content": SYSTEM},
            {"role": "user", "content": f"Story {n}. Write a long, detailed story about {TOPICS[n % len(TOPICS)]}."}]


TICK = os.sysconf("SC_CLK_TCK")


def session_cpu_s(session: int) -> float:
    """CPU seconds (user + system) used so far by the live processes of one session: a server and its runners."""
    total = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                fields = f.read().rpartition(b")")[2].split()
        except OSError:
            continue
        if int(fields[3]) == session:
            total += int(fields[11]) + int(fields[12])
    return total / TICK


@dataclass
class Server:
    label: str
    argv: list[str]
    env: dict[str, str]
    model: str  # the `model` field of every request
    log: Path
    port: int
    proc: subprocess.Popen[bytes] | None = None
    rounds: list[dict[str, Any]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        with self.log.open("wb") as out:  # new session: stop() ends the server and any runner process it started
            self.proc = subprocess.Popen(self.argv, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            tail = self.log.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{self.label} exited with {self.proc.returncode}; its log {self.log} ends:\n{tail}")


def ollama_py(label: str, binary: Path, args: argparse.Namespace, streams: int, scratch: Path,
              **extra_env: str) -> Server:
    port = free_port()
    store = Path(tempfile.mkdtemp(prefix=f"store-{label}-{streams}-", dir=scratch))
    env = {**os.environ, "OLLAMA_HOST": f"127.0.0.1:{port}", "OLLAMA_MODELS": str(store),
           "OLLAMA_NUM_PARALLEL": str(streams), "OLLAMA_CONTEXT_LENGTH": str(args.ctx),
           "OLLAMA_FLASH_ATTENTION": args.flash_attention,
           "OLLAMA_KEEP_ALIVE": "-1", "OLLAMA_MAX_LOADED_MODELS": "1", **extra_env}
    env.pop("OLLAMA_PY_API_KEYS", None)
    env.pop("OLLAMA_PY_API_KEYS_FILE", None)
    return Server(label, [str(binary), "serve"], env, BENCH_MODEL, scratch / f"{label}-{streams}.log", port)


def llama_server(binary: Path, gguf: Path, args: argparse.Namespace, streams: int, scratch: Path,
                 label: str = "llama-server", spec: bool = True) -> Server:
    port = free_port()
    argv = [str(binary), "-m", str(gguf), "--host", "127.0.0.1", "--port", str(port),
            "-np", str(streams), "-c", str(args.ctx * streams), "-t", str(args.threads), "-tb", str(args.threads),
            "-fa", args.flash_attention, "-ngl", str(args.ngl), "-b", "512", "-ub", "512", "--no-webui"]
    if args.workload == "grounded" and spec:
        argv += args.llama_spec.split()
    return Server(label, argv, dict(os.environ), "smollm2", scratch / f"{label}-{streams}.log", port)


async def ready(session: aiohttp.ClientSession, server: Server, args: argparse.Namespace) -> None:
    """Waits for /health, then (ollama-py) creates the bench model with the shared load and sampling settings."""
    deadline = time.monotonic() + 300
    while True:
        server.alive()
        with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
            async with session.get(server.url + "/health", timeout=aiohttp.ClientTimeout(total=2)) as r:
                if r.status == 200:
                    break
        if time.monotonic() > deadline:
            raise RuntimeError(f"{server.label} not healthy after 300 s; see {server.log}")
        await asyncio.sleep(0.2)
    if server.model == BENCH_MODEL:
        body = {"model": BENCH_MODEL, "from": BASE_MODEL, "stream": False,
                "parameters": {"num_thread": args.threads, "num_gpu": args.ngl, "repeat_penalty": 1.0}}
        async with session.post(server.url + "/api/create", json=body) as r:
            if r.status != 200:
                raise RuntimeError(f"{server.label}: /api/create answered {r.status}: {await r.text()}")


async def one(session: aiohttp.ClientSession, server: Server, conversation: list[dict[str, str]],
              max_tokens: int) -> dict[str, Any]:
    body = {"model": server.model, "messages": conversation, "stream": True, "max_tokens": max_tokens,
            "temperature": 0, "stream_options": {"include_usage": True}}
    start = time.perf_counter()
    ttft = None
    usage = None
    chunks = 0
    finish = None
    content: list[str] = []
    async with session.post(server.url + "/v1/chat/completions", json=body) as r:
        if r.status != 200:
            raise RuntimeError(f"{server.label}: /v1/chat/completions answered {r.status}: {await r.text()}")
        async for raw in r.content:
            line = raw.strip()
            if not line.startswith(b"data: "):
                continue
            if line == b"data: [DONE]":
                break
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                usage = chunk["usage"]
            for choice in chunk.get("choices") or ():
                if text := (choice.get("delta") or {}).get("content"):
                    content.append(text)
                    chunks += 1
                    if ttft is None:
                        ttft = time.perf_counter() - start
                finish = choice.get("finish_reason") or finish
    end = time.perf_counter()
    if usage is None:
        raise RuntimeError(f"{server.label}: the stream had no usage")
    cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens")
    return {"completion_tokens": int(usage["completion_tokens"]), "prompt_tokens": int(usage["prompt_tokens"]),
            "cached_tokens": cached, "ttft_s": ttft if ttft is not None else end - start, "latency_s": end - start,
            "chunks": chunks, "finish_reason": finish, "content": "".join(content)}


async def run_round(session: aiohttp.ClientSession, server: Server, first: int, streams: int,
                    max_tokens: int, prompt: Callable[[int], list[dict[str, str]]] = messages,
                    mixed: bool = False) -> dict[str, Any]:
    server.alive()
    assert server.proc is not None
    limits = [max(max_tokens // 8, 1) if mixed and i % 2 else max_tokens for i in range(streams)]
    cpu = session_cpu_s(server.proc.pid)
    start = time.perf_counter()
    results = await asyncio.gather(*(one(session, server, prompt(first + i), limit)
                                     for i, limit in enumerate(limits)))
    wall = time.perf_counter() - start
    cpu = session_cpu_s(server.proc.pid) - cpu
    tokens = sum(r["completion_tokens"] for r in results)
    rates = [rate for r in results if (rate := decode_rate(r)) is not None]
    return {"wall_s": wall, "tokens": tokens, "tps": tokens / wall,
            "cpu_s": cpu, "cpu_ms_per_token": cpu / tokens * 1e3,
            "ttft_p50_ms": statistics.median(r["ttft_s"] for r in results) * 1e3,
            "decode_tps": statistics.median(rates) if rates else math.nan,
            "short_streams": sum(r["completion_tokens"] < limit for r, limit in zip(results, limits, strict=True)),
            "load1": os.getloadavg()[0], "streams": results}


def decode_rate(result: dict[str, Any]) -> float | None:
    """A stream's tokens per second after its first: its decode alone, without the prompt's evaluation
    (None for a stream of one token, which has no decode to time)."""
    if result["completion_tokens"] < 2 or result["chunks"] < 2:
        return None
    return (result["completion_tokens"] - 1) / (result["latency_s"] - result["ttft_s"])


async def conversation(session: aiohttp.ClientSession, server: Server, n: int, turns: int,
                       max_tokens: int) -> list[dict[str, Any]]:
    """One user's chat: each turn sends the conversation so far and the answer joins it."""
    history = [{"role": "system", "content": CHAT_SYSTEM}]
    results = []
    for turn in range(turns):
        ask(history, n, turn)
        result = await one(session, server, history, max_tokens)
        history.append({"role": "assistant", "content": result.pop("content")})
        results.append(result)
    return results


def ask(history: list[dict[str, str]], n: int, turn: int) -> None:
    """Adds visitor n's question of the given turn to its conversation."""
    history.append({"role": "user", "content": f"(visitor {n}) {CHAT_TURNS[(n + turn) % len(CHAT_TURNS)]}"})


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


async def run_chat_round(session: aiohttp.ClientSession, server: Server, first: int, conversations: int,
                         turns: int, max_tokens: int) -> dict[str, Any]:
    server.alive()
    start = time.perf_counter()
    chats = await asyncio.gather(*(conversation(session, server, first + i, turns, max_tokens)
                                   for i in range(conversations)))
    wall = time.perf_counter() - start
    tokens = sum(r["completion_tokens"] for chat in chats for r in chat)
    per_turn = [[chat[t] for chat in chats] for t in range(turns)]
    return {"wall_s": wall, "tokens": tokens, "tps": tokens / wall,
            "ttft_p50_ms": [statistics.median(r["ttft_s"] for r in rs) * 1e3 for rs in per_turn],
            "ttft_p99_ms": [percentile([r["ttft_s"] for r in rs], 0.99) * 1e3 for rs in per_turn],
            "prompt_tokens": [sum(r["prompt_tokens"] for r in rs) for rs in per_turn],
            "cached_tokens": [sum(r["cached_tokens"] or 0 for r in rs) for rs in per_turn],
            "load1": os.getloadavg()[0], "chats": chats}


async def chat_level(servers: list[Server], streams: int, args: argparse.Namespace) -> None:
    # A connection per request: llama-server's HTTP library drops idle keep-alive connections, which a
    # user between turns leaves idle; both servers pay the same connect.
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=3600), connector=connector) as session:
        await asyncio.gather(*(ready(session, s, args) for s in servers))
        for s in servers:  # warm-up: loads the model; not counted
            t = time.perf_counter()
            await run_chat_round(session, s, 100_000, streams, 1, 8)
            print(f"  {s.label}: ready, warm-up {time.perf_counter() - t:.1f} s", file=sys.stderr, flush=True)
        for r in range(args.rounds):
            order = servers[r % len(servers):] + servers[:r % len(servers)]
            for s in order:
                result = await run_chat_round(session, s, (r + 1) * 1000, args.conversations, args.turns,
                                              args.max_tokens)
                s.rounds.append(result)
                print(f"  chat round {r + 1} {s.label:13s} {result['tps']:7.1f} tok/s ({result['tokens']} tokens "
                      f"in {result['wall_s']:.1f} s) TTFT p50 per turn "
                      f"{' / '.join(f'{v:.0f}' for v in result['ttft_p50_ms'])} ms, cached "
                      f"{' / '.join(str(v) for v in result['cached_tokens'])} of "
                      f"{' / '.join(str(v) for v in result['prompt_tokens'])} prompt tokens, "
                      f"load {result['load1']:.1f}", file=sys.stderr, flush=True)


async def restart_level(servers: list[Server], streams: int, args: argparse.Namespace) -> None:
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=900), connector=connector) as session:
        await asyncio.gather(*(ready(session, s, args) for s in servers))
        for r in range(args.rounds):
            for s in servers[r % len(servers):] + servers[:r % len(servers)]:
                first = (r + 1) * 1000
                histories = [[{"role": "system", "content": CHAT_SYSTEM}] for _ in range(streams)]
                for i, history in enumerate(histories):
                    ask(history, first + i, 0)
                saved = states(s)
                before = await asyncio.gather(*(one(session, s, h, args.max_tokens) for h in histories))
                for i, (history, result) in enumerate(zip(histories, before, strict=True)):
                    history.append({"role": "assistant", "content": result.pop("content")})
                    ask(history, first + i, 1)
                await restart(session, s, args, saved, streams)
                after = await asyncio.gather(*(one(session, s, h, args.max_tokens) for h in histories))
                result = {"ttft_p50_ms": [statistics.median(x["ttft_s"] for x in turn) * 1e3
                                          for turn in (before, after)],
                          "prompt_tokens": [sum(x["prompt_tokens"] for x in turn) for turn in (before, after)],
                          "cached_tokens": [sum(x["cached_tokens"] or 0 for x in turn) for turn in (before, after)],
                          "load1": os.getloadavg()[0], "turns": [before, after]}
                s.rounds.append(result)
                print(f"  restart round {r + 1} {s.label:13s} TTFT p50 turn 1 {result['ttft_p50_ms'][0]:.0f} ms, "
                      f"turn 2 after the restart {result['ttft_p50_ms'][1]:.0f} ms, cached "
                      f"{result['cached_tokens'][1]} of {result['prompt_tokens'][1]} prompt tokens",
                      file=sys.stderr, flush=True)


def states(server: Server) -> set[Path]:
    """The prompt states a server keeps on disk now (none where it keeps none)."""
    folder = server.env.get("OLLAMA_PY_PROMPT_CACHE_DIR")
    return set(Path(folder).rglob("*.state")) if folder else set()


async def restart(session: aiohttp.ClientSession, server: Server, args: argparse.Namespace, saved: set[Path],
                  conversations: int) -> None:
    """Stops and starts the server once the first turns' states are on disk, and loads its model."""
    deadline = time.monotonic() + 60
    while server.env.get("OLLAMA_PY_PROMPT_CACHE_DIR") and len(states(server) - saved) < conversations:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{server.label}: the first turns' states never reached the disk")
        await asyncio.sleep(0.1)
    server.stop()
    server.start()
    await ready(session, server, args)
    await one(session, server, [{"role": "user", "content": "Hi"}], 1)  # the model loads, untimed


def summarize_restart(servers: list[Server]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for s in servers:
        out[s.label] = {"ttft_p50_ms": [statistics.median(r["ttft_p50_ms"][t] for r in s.rounds) for t in (0, 1)],
                        "cached_share": [sum(r["cached_tokens"][t] for r in s.rounds)
                                         / sum(r["prompt_tokens"][t] for r in s.rounds) for t in (0, 1)]}
    for s in servers:
        if s.label != "candidate":
            out[f"candidate/{s.label}"] = {"ttft_p50_after_restart": out["candidate"]["ttft_p50_ms"][1]
                                           / out[s.label]["ttft_p50_ms"][1]}
    return out


def restart_table(results: dict[int, dict[str, Any]], labels: list[str]) -> str:
    head = ["streams", *[f"{label}: TTFT p50 turn 1 / turn 2 after the restart (ms), cached share of turn 2"
                         for label in labels]]
    others = [label for label in labels if label != "candidate"]
    head += [f"**turn 2 TTFT, candidate / {label}**" for label in others]
    rows = []
    for streams, summary in results.items():
        cells = [str(streams)]
        for label in labels:
            s = summary[label]
            cells.append(f"{s['ttft_p50_ms'][0]:.0f} / {s['ttft_p50_ms'][1]:.0f}, {s['cached_share'][1]:.0%}")
        cells += [f"**{summary[f'candidate/{label}']['ttft_p50_after_restart']:.3f}**" for label in others]
        rows.append(cells)
    return markdown_table(head, rows)


def markdown_table(head: list[str], rows: list[list[str]]) -> str:
    return "\n".join("| " + " | ".join(cells) + " |" for cells in [head, ["---"] * len(head), *rows])


def summarize_chat(servers: list[Server]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for s in servers:
        turns = len(s.rounds[0]["ttft_p50_ms"])
        out[s.label] = {
            "tps_median": statistics.median(r["tps"] for r in s.rounds),
            "ttft_p50_ms": [statistics.median(r["ttft_p50_ms"][t] for r in s.rounds) for t in range(turns)],
            "ttft_p99_ms": [statistics.median(r["ttft_p99_ms"][t] for r in s.rounds) for t in range(turns)]}
    cand = out["candidate"]
    for label in [s.label for s in servers if s.label != "candidate"]:
        other = out[label]
        later = range(1, len(cand["ttft_p50_ms"]))
        out[f"candidate/{label}"] = {
            "tps": cand["tps_median"] / other["tps_median"],
            "ttft_p50_later_turns": (statistics.median(cand["ttft_p50_ms"][t] for t in later)
                                     / statistics.median(other["ttft_p50_ms"][t] for t in later)) if later else None}
    return out


def chat_table(summary: dict[str, Any], labels: list[str]) -> str:
    turns = len(summary[labels[0]]["ttft_p50_ms"])
    head = ["server", "tok/s", *[f"TTFT p50 / p99 turn {t + 1} (ms)" for t in range(turns)]]
    rows = [markdown_table(head, [[label, f"{summary[label]['tps_median']:.1f}", *[
        f"{summary[label]['ttft_p50_ms'][t]:.0f} / {summary[label]['ttft_p99_ms'][t]:.0f}" for t in range(turns)]]
        for label in labels])]
    for label in labels:
        if label != "candidate":
            ratio = summary[f"candidate/{label}"]
            later = ratio["ttft_p50_later_turns"]
            rows.append(f"\n**candidate / {label}**: tok/s {ratio['tps']:.3f}x"
                        + (f", TTFT p50 of turns 2-{turns} {later:.3f}x" if later is not None else ""))
    return "\n".join(rows)


async def level(servers: list[Server], streams: int, args: argparse.Namespace) -> None:
    prompt = grounded_messages if args.workload == "grounded" else messages
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=900), connector=connector) as session:
        await asyncio.gather(*(ready(session, s, args) for s in servers))
        for s in servers:  # warm-up: loads the model and touches every slot; not counted
            t = time.perf_counter()
            await run_round(session, s, 10_000, streams, 16, prompt)
            print(f"  {s.label}: ready, warm-up {time.perf_counter() - t:.1f} s", file=sys.stderr, flush=True)
        for r in range(args.rounds):
            order = servers[r % len(servers):] + servers[:r % len(servers)]
            for s in order:
                result = await run_round(session, s, (r + 1) * 1000, streams, args.max_tokens, prompt, args.mixed)
                s.rounds.append(result)
                print(f"  streams {streams} round {r + 1} {s.label:13s} {result['tps']:7.1f} tok/s "
                      f"({result['tokens']} tokens in {result['wall_s']:.2f} s) TTFT p50 "
                      f"{result['ttft_p50_ms']:.0f} ms, {result['cpu_ms_per_token']:.1f} CPU ms/token, "
                      f"load {result['load1']:.1f}", file=sys.stderr, flush=True)


def summarize(servers: list[Server]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for s in servers:
        tps = [r["tps"] for r in s.rounds]
        out[s.label] = {"tps_median": statistics.median(tps), "tps_min": min(tps), "tps_max": max(tps),
                        "ttft_p50_ms_median": statistics.median(r["ttft_p50_ms"] for r in s.rounds),
                        "decode_tps_median": statistics.median(r["decode_tps"] for r in s.rounds),
                        "cpu_ms_per_token_median": statistics.median(r["cpu_ms_per_token"] for r in s.rounds),
                        "tokens_per_round": statistics.median(r["tokens"] for r in s.rounds),
                        "short_streams": sum(r["short_streams"] for r in s.rounds)}
    cand = next(s for s in servers if s.label == "candidate")
    for other in servers:
        if other is cand:
            continue
        paired = [a["tps"] / b["tps"] for a, b in zip(cand.rounds, other.rounds, strict=True)]
        decode = [a["decode_tps"] / b["decode_tps"] for a, b in zip(cand.rounds, other.rounds, strict=True)]
        out[f"candidate/{other.label}"] = {
            "ratio_of_medians": out["candidate"]["tps_median"] / out[other.label]["tps_median"],
            "paired_median": statistics.median(paired), "paired_min": min(paired), "paired_max": max(paired),
            "decode_ratio_of_medians": out["candidate"]["decode_tps_median"] / out[other.label]["decode_tps_median"],
            "decode_paired_median": statistics.median(decode)}
    return out


def table(results: dict[int, dict[str, Any]], labels: list[str]) -> str:
    head = ["streams", *[f"{label} tok/s" for label in labels]]
    others = [label for label in labels if label != "candidate"]
    head += [f"**candidate / {label}**" for label in others]
    head += ["TTFT p50 ms (" + " / ".join(labels) + ")", "CPU ms/token (" + " / ".join(labels) + ")",
             "decode tok/s a stream (" + " / ".join(labels) + ")"]
    head += [f"decode candidate / {label}" for label in others]
    rows = []
    for streams, summary in results.items():
        cells = [str(streams)]
        for label in labels:
            s = summary[label]
            cells.append(f"{s['tps_median']:.1f} ({s['tps_min']:.0f}-{s['tps_max']:.0f})")
        for label in others:
            ratio = summary[f"candidate/{label}"]
            cells.append(f"**{ratio['ratio_of_medians']:.3f}** (paired {ratio['paired_median']:.3f}, "
                         f"{ratio['paired_min']:.2f}-{ratio['paired_max']:.2f})")
        cells.append(" / ".join(f"{summary[label]['ttft_p50_ms_median']:.0f}" for label in labels))
        cells.append(" / ".join(f"{summary[label]['cpu_ms_per_token_median']:.1f}" for label in labels))
        cells.append(" / ".join(f"{summary[label]['decode_tps_median']:.1f}" for label in labels))
        for label in others:
            ratio = summary[f"candidate/{label}"]
            cells.append(f"{ratio['decode_ratio_of_medians']:.3f} (paired {ratio['decode_paired_median']:.3f})")
        rows.append(cells)
    return markdown_table(head, rows)


def default_gguf() -> Path:
    from ollama_py import settings
    from ollama_py.store import default_model
    return Path(default_model.ensure(settings.load().cache))


def default_llama_server() -> Path:
    sys.path.insert(0, str(ROOT))
    import build_backend  # the same pin and flags as the package's own build; cached after the first time
    return Path(build_backend.build_llama_server())


WORKLOADS: dict[str, tuple[Callable[[list[Server], int, argparse.Namespace], Coroutine[Any, Any, None]],
                           Callable[[list[Server]], dict[str, Any]]]] = {
    "fresh": (level, summarize), "grounded": (level, summarize), "chat": (chat_level, summarize_chat),
    "restart": (restart_level, summarize_restart)}


def _interrupted(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")  # so the servers are stopped on the way out


def main() -> None:
    signal.signal(signal.SIGTERM, _interrupted)
    signal.signal(signal.SIGINT, _interrupted)  # also when started in the background, where SIGINT is ignored
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--baseline", type=Path, help="ollama-py console script of the baseline; default: none")
    parser.add_argument("--workload", choices=("fresh", "chat", "grounded", "restart"), default="fresh",
                        help="fresh prompts every round, a multi-user chat, grounded text, or a chat's second "
                             "turn after a restart (see above)")
    parser.add_argument("--llama-spec", default="--spec-type ngram-simple --spec-ngram-simple-size-n 3 "
                        "--spec-ngram-simple-size-m 16", help="grounded: llama-server's speculation flags")
    parser.add_argument("--also-without-drafts", action="store_true",
                        help="also the candidate with OLLAMA_PY_DRAFT_MAX=0 (what drafting itself gains)")
    parser.add_argument("--also-llama-defaults", action="store_true",
                        help="grounded: also llama-server without --llama-spec (what its users get by default)")
    parser.add_argument("--conversations", type=int, default=32, help="chat: users at once")
    parser.add_argument("--turns", type=int, default=4, help="chat: turns per conversation")
    parser.add_argument("--candidate", type=Path, default=ROOT / ".venv" / "bin" / "ollama-py")
    parser.add_argument("--llama-server", type=Path, help="default: build_backend.build_llama_server()")
    parser.add_argument("--no-llama-server", action="store_true", help="ollama-py against ollama-py only")
    parser.add_argument("--model", type=Path, help="GGUF for llama-server; default: the default model's")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--ctx", type=int, default=2048, help="context per slot")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--mixed", action="store_true", help="every other stream asks for an eighth of --max-tokens")
    parser.add_argument("--ngl", type=int, default=0, help="layers on the GPU, every server")
    parser.add_argument("--flash-attention", choices=("on", "off"), default="on")
    parser.add_argument("--out", type=Path, help="every round, as JSON")
    args = parser.parse_args()

    llama_bin = gguf = None
    if not args.no_llama_server:
        llama_bin = args.llama_server or default_llama_server()
        gguf = args.model or default_gguf()
    scratch = Path(tempfile.mkdtemp(prefix="http-bench-"))
    print(f"logs and stores under {scratch}; {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}",
          file=sys.stderr, flush=True)
    results: dict[int, dict[str, Any]] = {}
    raw: dict[str, Any] = {"args": {k: str(v) for k, v in vars(args).items()}, "cpu_count": os.cpu_count(),
                           "load_start": os.getloadavg()[0], "levels": {}}
    labels: list[str] = []
    for streams in args.streams:
        keep = {"OLLAMA_PY_PROMPT_CACHE_DIR": str(scratch / f"prompt-states-{streams}")} \
            if args.workload == "restart" else {}
        servers = [ollama_py("candidate", args.candidate, args, streams, scratch, **keep)]
        if args.also_without_drafts:
            servers.append(ollama_py("candidate-nodraft", args.candidate, args, streams, scratch,
                                     OLLAMA_PY_DRAFT_MAX="0"))
        if args.baseline is not None:
            servers.insert(0, ollama_py("baseline", args.baseline, args, streams, scratch))
        if llama_bin is not None and gguf is not None:
            servers.append(llama_server(llama_bin, gguf, args, streams, scratch))
            if args.also_llama_defaults and args.workload == "grounded":
                servers.append(llama_server(llama_bin, gguf, args, streams, scratch, "llama-server-nospec", False))
        labels = [s.label for s in servers]
        try:
            for s in servers:
                print(f"streams {streams}: {s.label}: {' '.join(s.argv)}", file=sys.stderr, flush=True)
                s.start()
            asyncio.run(WORKLOADS[args.workload][0](servers, streams, args))
        finally:
            for s in servers:
                s.stop()
                if "OLLAMA_MODELS" in s.env:  # a copy of the model per store: keep only the logs
                    shutil.rmtree(s.env["OLLAMA_MODELS"], ignore_errors=True)
        results[streams] = WORKLOADS[args.workload][1](servers)
        raw["levels"][str(streams)] = {"summary": results[streams],
                                       "servers": {s.label: {"argv": s.argv, "rounds": s.rounds} for s in servers}}
    raw["load_end"] = os.getloadavg()[0]
    if args.out:
        args.out.write_text(json.dumps(raw, indent=2))
    mixed = f" (every other stream {max(args.max_tokens // 8, 1)})" if args.mixed else ""
    print(f"\nSmolLM2-135M-Instruct Q4_1, {args.max_tokens} tokens per answer{mixed}, greedy, {args.ctx}-token "
          f"context per slot, {args.threads} threads, flash attention {args.flash_attention}, ngl {args.ngl}; "
          f"median of {args.rounds} interleaved rounds (min-max); {os.cpu_count()} CPUs, load "
          f"{raw['load_start']:.1f} -> {raw['load_end']:.1f}\n")
    if args.workload == "restart":
        print(restart_table(results, labels))
        return
    if args.workload == "chat":
        for streams, summary in results.items():
            print(f"{args.conversations} conversations of {args.turns} turns over {streams} slots\n")
            print(chat_table(summary, labels))
        return
    print(table(results, labels))
    short = {f"{st}/{label}": s["short_streams"] for st, summ in results.items() for label in labels
             if (s := summ[label])["short_streams"]}
    if short:
        print(f"\nstreams that ended before {args.max_tokens} tokens (EOS): {short}")


if __name__ == "__main__":
    main()
