"""Debian's nginx, with the shipped deploy/nginx/ollama-py.conf, in front of three real replicas.

Only the replica addresses, the listen address and the log path are changed
from the shipped file. Which replica answered each request comes from the
access log the configuration writes.
"""

from __future__ import annotations

import json
import re
import subprocess
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import orjson
import pytest

from ollama_py import settings
from tests.cluster_harness import (PROBE, SERVE, STORY, free_port, nginx_binary, nginx_config, server_env, stop,
                                   wait_until)
from tests.server_harness import GUARD, MODEL, default_store

SESSIONS = 60
SHORT = {"num_predict": 4, "num_thread": 1}  # light answers: three replicas share this machine's cores


@dataclass
class Proxy:
    url: str
    replicas: dict[str, subprocess.Popen[bytes]]  # by address, as nginx logs it
    access_log: Path

    def log(self) -> list[dict[str, str]]:
        return [json.loads(line) for line in self.access_log.read_text().splitlines() if line.strip()]

    def entries(self, start: int, sessions: Iterable[str], count: int) -> list[dict[str, str]]:
        """The log lines after `start` of these sessions, once there are `count` (nginx logs as it finishes)."""
        wanted = set(sessions)
        deadline = time.monotonic() + GUARD
        while len(found := [e for e in self.log()[start:] if e["session"] in wanted]) < count:
            if time.monotonic() > deadline:
                pytest.fail(f"{count} log lines expected, {len(found)} found")
            time.sleep(0.1)
        return found

    def busy_slots(self) -> int:
        """Sequences generating now, over the live replicas (asked directly, not through nginx)."""
        busy = 0
        for address, proc in self.replicas.items():
            if proc.poll() is None:
                metrics = httpx.get(f"http://{address}/metrics", timeout=GUARD).text
                busy += sum(int(float(m)) for m in re.findall(r"^ollama_py_slots_busy\{[^}]*\} (\S+)$", metrics, re.M))
        return busy


def served_by(entry: dict[str, str]) -> str:
    """The replica that answered: the last one nginx tried."""
    return entry["upstream"].split(", ")[-1]


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    nginx = nginx_binary()
    cache = settings.load().cache
    store = tmp_path_factory.mktemp("store")
    default_store(store, cache)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        replicas = {}
        for _ in range(3):  # three replicas sharing one store, as on a shared volume
            address = f"127.0.0.1:{free_port()}"
            env = server_env(address, store, cache, OLLAMA_NUM_PARALLEL="4", OLLAMA_CONTEXT_LENGTH="1024")
            replicas[address] = subprocess.Popen(SERVE, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            procs.append(replicas[address])
        for address, proc in replicas.items():
            wait_until(lambda a=address: httpx.get(f"http://{a}/health", timeout=PROBE).raise_for_status(),  # type: ignore[misc]
                       f"replica {address}", proc)
        directory = tmp_path_factory.mktemp("nginx")
        port = free_port()
        config = nginx_config(directory, list(replicas), port)
        server = subprocess.Popen([nginx, "-p", str(directory), "-c", str(config)], stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT)
        procs.append(server)
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: httpx.get(f"{url}/health", timeout=PROBE).raise_for_status(), "nginx", server)
        yield Proxy(url=url, replicas=replicas, access_log=directory / "access.log")
    finally:
        stop(procs)


def test_answers_stream_through_unbuffered(proxy: Proxy) -> None:
    """The first chunk of each answer reaches the client while the replica is still generating it."""
    with httpx.Client(base_url=proxy.url, timeout=300) as client:
        native = {"model": MODEL, "messages": STORY, "options": {"temperature": 0, "num_predict": 300}}
        with client.stream("POST", "/api/chat", json=native, headers={"X-Session-Id": "ndjson"}) as response:
            assert response.headers["content-type"].startswith("application/x-ndjson")
            lines = response.iter_lines()  # kept: a dropped iterator would close the stream
            first = orjson.loads(next(lines))
            assert first["done"] is False and first["message"]["content"]
            assert proxy.busy_slots() >= 1
        openai = {"model": MODEL, "messages": STORY, "temperature": 0, "max_tokens": 300, "stream": True}
        with client.stream("POST", "/v1/chat/completions", json=openai, headers={"X-Session-Id": "sse"}) as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            lines = response.iter_lines()
            event = next(line for line in lines if line.startswith("data: "))
            assert orjson.loads(event.removeprefix("data: "))["choices"]
            assert proxy.busy_slots() >= 1


def test_without_a_session_header_a_conversation_follows_its_first_message(proxy: Proxy) -> None:
    with httpx.Client(base_url=proxy.url, timeout=300) as client:
        for topic in ("rivers", "mountains", "birds", "clouds"):
            messages: list[dict[str, str]] = []
            replicas = set()
            for question in (f"Name one fact about {topic}.", "And another one?", "Thanks, one more?"):
                messages.append({"role": "user", "content": question})
                before = len(proxy.log())
                answer = client.post("/api/chat", json={"model": MODEL, "messages": messages, "stream": False,
                                                        "options": SHORT})
                assert answer.status_code == 200, answer.text
                messages.append(answer.json()["message"])
                replicas.add(served_by(proxy.entries(before, [""], 1)[0]))
            assert len(replicas) == 1, (topic, replicas)


@dataclass
class Turn:
    session: str
    ok: bool
    started: bool  # the replica had begun answering (status and headers sent): nginx can no longer move it
    error: str = ""
    content: str = ""


@dataclass
class Chat:
    session: str
    messages: list[dict[str, str]] = field(default_factory=list)

    def turn(self, client: httpx.Client, question: str) -> Turn:
        body = {"model": MODEL, "messages": [*self.messages, {"role": "user", "content": question}],
                "options": SHORT}
        started, content = False, []
        try:
            with client.stream("POST", "/api/chat", json=body, headers={"X-Session-Id": self.session}) as response:
                if response.status_code != 200:
                    return Turn(self.session, False, False, f"{response.status_code} {response.read()!r}")
                started = True
                for line in response.iter_lines():
                    chunk = orjson.loads(line)
                    if "error" in chunk:
                        return Turn(self.session, False, True, chunk["error"])
                    content.append(chunk["message"]["content"])
                    if chunk["done"]:
                        self.messages += [{"role": "user", "content": question},
                                          {"role": "assistant", "content": "".join(content)}]
                        return Turn(self.session, True, True)
            return Turn(self.session, False, started, "the stream ended before done")
        except httpx.HTTPError as exc:
            return Turn(self.session, False, started, repr(exc))


def run_turns(client: httpx.Client, chats: list[Chat], questions: list[str],
              after_each: threading.Event | None = None) -> list[Turn]:
    """Every chat asks its questions in order, all chats at once; a failed turn is asked again, once."""
    def converse(chat: Chat) -> list[Turn]:
        turns = []
        for question in questions:
            turns.append(chat.turn(client, question))
            if not turns[-1].ok:
                turns.append(chat.turn(client, question))  # as a user retries
            if after_each is not None:
                after_each.set()
        return turns

    with ThreadPoolExecutor(len(chats)) as pool:
        return [turn for turns in pool.map(converse, chats) for turn in turns]


def test_sessions_stick_to_a_replica_and_survive_losing_one(proxy: Proxy) -> None:
    chats = [Chat(f"session-{i}") for i in range(SESSIONS)]
    limits = httpx.Limits(max_connections=SESSIONS * 2, max_keepalive_connections=SESSIONS)
    with httpx.Client(base_url=proxy.url, timeout=600, limits=limits) as client:
        start = len(proxy.log())
        first = run_turns(client, chats, ["Tell me a fact about the sea.", "Why?"])
        assert [t for t in first if not t.ok] == []
        home: dict[str, set[str]] = {}
        for entry in proxy.entries(start, (c.session for c in chats), len(first)):
            home.setdefault(entry["session"], set()).add(served_by(entry))
        assert set(home) == {c.session for c in chats}
        assert all(len(replicas) == 1 for replicas in home.values()), home
        assigned = {session: replicas.pop() for session, replicas in home.items()}
        assert set(assigned.values()) == set(proxy.replicas)  # the sessions spread over all three

        # Stop the replica with the most sessions while the chats go on.
        victim = max(proxy.replicas, key=lambda r: sum(1 for home_of in assigned.values() if home_of == r))
        progress = threading.Event()

        def kill_when_running() -> None:
            progress.wait()
            proxy.replicas[victim].kill()

        killer = threading.Thread(target=kill_when_running)
        killer.start()
        start = len(proxy.log())
        second = run_turns(client, chats, ["Another one?", "Thanks."], progress)
        killer.join()

    lost = [t for t in second if not t.ok]
    assert all(t.started for t in lost), [t for t in lost if not t.started]  # none lost before it began
    assert all(assigned[t.session] == victim for t in lost), lost  # only answers the dead replica was giving
    assert all(len(c.messages) == 8 for c in chats)  # every chat finished (a retry at most)
    after: dict[str, set[str]] = {}
    for entry in proxy.entries(start, (c.session for c in chats), len(second)):
        after.setdefault(entry["session"], set()).add(served_by(entry))
    for session, replicas in after.items():
        if assigned[session] != victim:
            assert replicas == {assigned[session]}, (session, replicas)  # undisturbed
        else:
            assert len(replicas - {victim}) == 1, (session, replicas)  # moved, all to one other replica
