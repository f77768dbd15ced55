"""Runner isolation (issue 12): what a model does to llama.cpp ends its own runner process, never the server.

1. Hostile models, written by the test from the default GGUF (tests/hostile_models.py): metadata that trips a
   GGML_ASSERT at load, one that trips it at the first tokenize, a Jinja template that recurses (in the GGUF and
   as a plain `template` on /api/create), one that loops, one that grows a string without bound. While the
   default model streams to a client, each is created and asked for: the stream completes with its full greedy
   output, the bad request gets an error, the server stays up, and a second request for the bad model fails
   too without starting a runner process (the failure is recorded, not repeated).
2. A runner SIGKILLed mid-answer: its stream ends with an error line, the next request reloads the model and
   succeeds, and no process, zombie, slot or shared-memory segment is left behind.

The server runs in this process (tests/server_harness.py), so its runner processes are this process's children
(`runner_pids`). With a server that loads models in its own process there are none: each test fails at its first
look for the runner, before any hostile model is created, so it cannot take pytest down with it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from ollama_py import settings
from ollama_py.settings import Settings
from ollama_py.store import default_model
from ollama_py.store.manifests import Store
from tests import hostile_models
from tests.server_harness import GUARD, MODEL, LiveServer, default_store, live_server, server_settings, wait_for

# ---- runner processes, seen from the test ----------------------------------------------------------------

# How a runner process is recognised: a child of this process (the server runs in-thread) started as
# `python -P -m <module> ...` with <module> matching this. Adapt it if the runner module moves or is renamed.
RUNNER_MODULE = re.compile(r"^ollama_py\.engine\.[A-Za-z_]\w*$")


def _children() -> dict[int, tuple[str, list[str]]]:
    """This process's children: pid -> (state letter, argv). A zombie's argv is empty."""
    me = os.getpid()
    pids: set[int] = set()
    try:  # each thread's children (CONFIG_PROC_CHILDREN): cheap enough to poll often
        for task in os.listdir(f"/proc/{me}/task"):
            with open(f"/proc/{me}/task/{task}/children") as f:
                pids.update(int(p) for p in f.read().split())
    except FileNotFoundError:
        pids = {int(p) for p in os.listdir("/proc") if p.isdigit()}
    found: dict[int, tuple[str, list[str]]] = {}
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read()
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
        except (FileNotFoundError, ProcessLookupError):
            continue  # gone meanwhile
        state, ppid = stat[stat.rindex(")") + 2:].split()[:2]  # the name may hold spaces and parentheses
        if int(ppid) == me:
            found[pid] = (state, argv)
    return found


def _is_runner(argv: list[str]) -> bool:
    return any(a == "-m" and i + 1 < len(argv) and RUNNER_MODULE.match(argv[i + 1]) for i, a in enumerate(argv))


def runner_pids() -> set[int]:
    """The live runner processes of the server in this process."""
    return {pid for pid, (state, argv) in _children().items() if state != "Z" and _is_runner(argv)}


def the_runner() -> int:
    """The one runner process there is now; fails if there are none (models loaded in the server) or several."""
    pids = runner_pids()
    assert len(pids) == 1, f"expected one runner process (a child running `python -P -m ollama_py.engine.*`), " \
                           f"found {sorted(pids)}"
    return pids.pop()


def zombies() -> set[int]:
    """Children that exited and were never reaped."""
    return {pid for pid, (state, _) in _children().items() if state == "Z"}


def is_child(pid: int) -> bool:
    """Whether `pid` is still this process's child, running or a zombie."""
    return pid in _children()


class RunnerWatch:
    """Every runner process that exists while the watch is open, polled often.

    A runner that starts and crashes between two looks still lives for an
    interpreter's start and its imports, far longer than the poll's interval.
    """

    def __init__(self) -> None:
        self.seen: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="runner watch", daemon=True)

    def _poll(self) -> None:
        while True:
            self.seen |= runner_pids()
            if self._stop.wait(0.02):
                self.seen |= runner_pids()
                return

    def __enter__(self) -> RunnerWatch:
        self.seen = runner_pids()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(GUARD)


def shm_entries() -> set[str]:
    try:
        return set(os.listdir("/dev/shm"))
    except FileNotFoundError:
        return set()


# ---- requests ------------------------------------------------------------------------------------------

# The healthy stream: greedy, long enough to be streaming while a bad model is created and asked for.
HEALTHY: dict[str, Any] = {
    "model": MODEL, "prompt": "Write a detailed story about a lighthouse keeper who finds a message in a bottle.",
    "stream": True, "options": {"temperature": 0, "seed": 0, "num_predict": 64}}


def isolation_settings(root: Path, cache: Path) -> Settings:
    """The harness's small server, with the watchdog's bounds short enough that a template which never ends is
    stopped within a test (a healthy load or generation step takes seconds at most, even on two busy cores)."""
    return server_settings(root, cache, runner_timeout=60, load_timeout=60.0)


def lines_of(response: httpx.Response) -> list[dict[str, Any]]:
    return [json.loads(line) for line in response.iter_lines() if line.strip()]


def error_of(status: int, rows: list[dict[str, Any]]) -> str | None:
    """The error a request ended with: its status's JSON body before the first byte, or an error last line."""
    if status >= 400:
        assert len(rows) == 1, rows
    if rows and isinstance(rows[-1].get("error"), str) and rows[-1]["error"].strip():
        assert not any(row.get("done") for row in rows), rows
        return str(rows[-1]["error"])
    return None


def ask(live: LiveServer, body: dict[str, Any]) -> tuple[int, list[dict[str, Any]]]:
    """A streamed request; its status and every line."""
    with live.client() as http, http.stream("POST", "/api/generate", json=body) as response:
        return response.status_code, lines_of(response)


def lines_of_request(live: LiveServer, body: dict[str, Any]) -> list[dict[str, Any]]:
    status, rows = ask(live, body)
    assert status == 200, (status, rows)
    return rows


def answer_text(rows: list[dict[str, Any]]) -> tuple[str, int, str]:
    """(the whole response, eval_count, done_reason) of a stream that completed."""
    assert rows and rows[-1].get("done") is True and "error" not in rows[-1], rows[-3:]
    assert not any("error" in row for row in rows), [row for row in rows if "error" in row]
    return "".join(str(row.get("response", "")) for row in rows), int(rows[-1]["eval_count"]), \
        str(rows[-1]["done_reason"])


class Stream:
    """A streamed /api/generate read in a thread: its lines as they come, and a signal at the first token."""

    def __init__(self, live: LiveServer, body: dict[str, Any], first: int = 1) -> None:
        self.rows: list[dict[str, Any]] = []
        self.status = 0
        self.started = threading.Event()  # `first` lines came, or the stream ended
        self.failure: BaseException | None = None
        self._first = first
        self._thread = threading.Thread(target=self._run, args=(live, body), name="client stream", daemon=True)
        self._thread.start()

    def _run(self, live: LiveServer, body: dict[str, Any]) -> None:
        try:
            with live.client() as http, http.stream("POST", "/api/generate", json=body) as response:
                self.status = response.status_code
                for line in response.iter_lines():
                    if line.strip():
                        self.rows.append(json.loads(line))
                        if len(self.rows) >= self._first:
                            self.started.set()
        except BaseException as exc:  # noqa: BLE001 - reported by join()
            self.failure = exc
        finally:
            self.started.set()

    def wait_started(self) -> None:
        assert self.started.wait(GUARD), f"no token came in {GUARD:g}s"
        assert self.failure is None and self.status == 200, (self.status, self.failure, self.rows)

    def join(self) -> list[dict[str, Any]]:
        self._thread.join(GUARD)
        assert not self._thread.is_alive(), f"the stream did not end in {GUARD:g}s"
        assert self.failure is None, self.failure
        assert self.status == 200, (self.status, self.rows)
        return self.rows


def loaded_models(live: LiveServer) -> list[str]:
    with live.client() as http:
        return [m["name"] for m in http.get("/api/ps").json()["models"]]


def gauge(live: LiveServer, name: str, model: str | None = None) -> float:
    """A gauge from /metrics (0 when absent: Prometheus omits a labelled gauge with no series)."""
    with live.client() as http:
        text = http.get("/metrics").text
    label = f'\\{{model="{re.escape(model)}"\\}}' if model else ""
    found = re.search(rf"^ollama_py_{name}{label} (\S+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def server_answers(live: LiveServer) -> bool:
    with live.client() as http:
        response = http.get("/api/version")
    return response.status_code == 200 and bool(response.json().get("version"))


# ---- fixtures ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Setup:
    root: Path
    cache: Path
    store: Store
    source: Path  # the default GGUF, the hostile models' source
    baseline: tuple[str, int, str]  # HEALTHY's answer, asked alone


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    root = tmp_path_factory.mktemp("isolation-store")
    cache = settings.load().cache
    store = default_store(root, cache)
    with live_server(isolation_settings(root, cache), store) as live:
        baseline = answer_text(lines_of_request(live, HEALTHY))
    assert baseline[1] == HEALTHY["options"]["num_predict"], baseline  # it streams for all of its tokens
    try:
        yield Setup(root, cache, store, default_model.ensure(cache), baseline)
    finally:
        shutil.rmtree(root, ignore_errors=True)  # each hostile model is another 100 MB blob


# ---- 1. hostile models -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Hostile:
    """A bad model: GGUF weights written from the default model, or the default model with a bad TEMPLATE."""

    name: str
    weights: Callable[[Path, Path], Path] | None = None  # (source GGUF, folder) -> the file
    template: str | None = None


def _load_abort(kind: str) -> Callable[[Path, Path], Path]:
    return lambda src, folder: hostile_models.load_abort(src, folder, kind)


HOSTILE = [
    *(Hostile(f"load-abort-{kind.replace('_', '-')}", weights=_load_abort(kind))
      for kind in hostile_models.LOAD_ABORTS),
    Hostile("tokenize-abort", weights=hostile_models.tokenize_abort),
    Hostile("recursive-gguf", weights=hostile_models.recursive_gguf),
    Hostile("recursive-template", template=hostile_models.RECURSIVE_TEMPLATE),
    Hostile("looping-template", template=hostile_models.LOOPING_TEMPLATE),
    Hostile("growing-template", template=hostile_models.GROWING_TEMPLATE),
]


def upload(live: LiveServer, path: Path) -> str:
    """Puts a file in the server's blob store as a client does; its digest."""
    digest = "sha256:" + sha256_of(path)
    with live.client() as http, path.open("rb") as f:
        response = http.post(f"/api/blobs/{digest}", content=f)
    assert response.status_code in (200, 201), response.text
    return digest


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def create_request(case: Hostile, name: str, digest: str | None) -> dict[str, Any]:
    if case.weights is not None:
        assert digest is not None
        return {"model": name, "files": {f"{case.name}.gguf": digest}, "stream": False}
    return {"model": name, "from": MODEL, "template": case.template, "stream": False}


@pytest.mark.parametrize("case", HOSTILE, ids=[case.name for case in HOSTILE])
def test_a_hostile_model_fails_alone_while_a_healthy_model_streams(setup: Setup, case: Hostile,
                                                                    tmp_path: Path) -> None:
    name = f"hostile-{case.name}:latest"
    bad = {"model": name, "prompt": "Hello! What can you do?", "stream": True, "options": {"num_predict": 8}}
    digest = None
    with live_server(isolation_settings(setup.root, setup.cache), setup.store) as live:
        if case.weights is not None:  # the upload is a copy of 100 MB: done before the healthy stream starts
            path = case.weights(setup.source, tmp_path)
            digest = upload(live, path)
            path.unlink()

        healthy = Stream(live, HEALTHY)
        healthy.wait_started()
        healthy_runner = the_runner()  # the healthy model's

        # While it streams: the bad model is created and asked for.
        with live.client() as http:
            created = http.post("/api/create", json=create_request(case, name, digest))
        assert created.status_code == 200 and created.json().get("status") == "success", created.text
        status, rows = ask(live, bad)
        first_error = error_of(status, rows)
        assert first_error, f"the hostile model answered: {status} {rows[-3:]}"

        # The healthy stream completes with its whole greedy answer, from the same runner process.
        assert answer_text(healthy.join()) == setup.baseline
        assert server_answers(live)
        assert healthy_runner in runner_pids()
        wait_for(lambda: runner_pids() == {healthy_runner}, "the crashed runner process is still there")
        wait_for(lambda: not zombies(), "a runner process was left a zombie")

        # Asked again, the bad model fails again, without a new runner process: its failure was recorded.
        with RunnerWatch() as watch:
            status, rows = ask(live, bad)
        second_error = error_of(status, rows)
        assert second_error, f"the hostile model answered the second time: {status} {rows[-3:]}"
        assert watch.seen == {healthy_runner}, f"runner processes started for the second request: " \
                                               f"{watch.seen - {healthy_runner}}"
        assert server_answers(live)
        assert loaded_models(live) == [MODEL]
        assert runner_pids() == {healthy_runner}
        with live.client() as http:
            assert http.request("DELETE", "/api/delete", json={"model": name}).status_code == 200
    wait_for(lambda: not runner_pids() and not zombies(), "runner processes outlived the server")


# ---- 2. a runner killed mid-answer ---------------------------------------------------------------------


def test_a_runner_killed_mid_answer_fails_its_stream_and_reloads(setup: Setup) -> None:
    shm_before = shm_entries()
    # Sampled, and to the end of the context: this answer is still streaming long after the kill.
    long = {"model": MODEL, "prompt": "Count from one to one thousand, one number per line.", "stream": True,
            "options": {"temperature": 1.0, "seed": 7, "num_predict": -1}}
    with live_server(isolation_settings(setup.root, setup.cache), setup.store) as live:
        stream = Stream(live, long, first=3)
        stream.wait_started()
        victim = the_runner()
        os.kill(victim, signal.SIGKILL)

        rows = stream.join()
        assert len(rows) >= 3 and not any(row.get("done") for row in rows), rows[-3:]
        assert isinstance(rows[-1].get("error"), str) and rows[-1]["error"].strip(), rows[-3:]
        wait_for(lambda: not is_child(victim), f"the killed runner {victim} was never reaped")
        assert server_answers(live)

        # The next request loads the model again, in a new process, and succeeds.
        again = answer_text(lines_of_request(live, HEALTHY))
        assert again == setup.baseline
        reloaded = the_runner()
        assert reloaded != victim
        assert loaded_models(live) == [MODEL]
        wait_for(lambda: gauge(live, "slots_busy", MODEL) == 0, "a slot is still busy after the answers ended")
        assert gauge(live, "loaded_models") == 1
        assert gauge(live, "num_requests_waiting") == 0
        assert not zombies()
    wait_for(lambda: not runner_pids() and not zombies(), "runner processes outlived the server")
    leaked = shm_entries() - shm_before
    assert not leaked, f"shared-memory segments left in /dev/shm: {sorted(leaked)}"
