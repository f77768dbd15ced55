""""A healthy stream and /api/tags keep answering while X runs": the check every bounded request needs.

`Neighbours` measures, on a quiet server, a short healthy stream on a model
and a `/api/tags` listing (each the slowest of a few tries), then runs both in
a loop on threads of their own while the test sends its hostile request(s).
`check` fails when either took longer than a generous factor of its unloaded
time (the stream also gets the time of one micro-batch of prefill per step,
which any long prompt costs it), or never completed while X ran. No wall-clock constant is involved: a
busy machine slows the baseline too.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx

from tests.server_harness import GUARD, LiveServer

# How much slower than unloaded a neighbour may answer while X runs. Generous: two shared, busy cores, and
# X itself may use one. A starved neighbour (a pinned thread pool, a stalled model) waits for X: far more.
STREAM_FACTOR = 25.0
# A listing takes milliseconds, so scheduler noise is a large share of it: a larger factor, still far
# below "waits for X" (whole seconds).
TAGS_FACTOR = 100.0


@dataclass
class _Probe:
    name: str
    run: Callable[[httpx.Client], None]
    baseline: float = 0.0
    allowance: float = 0.0  # the time sharing steps with a legitimate long prompt costs, on top of the factor
    times: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


class Neighbours:
    """Healthy traffic beside a hostile request: `with Neighbours(server, model) as n: ...; n.check()`."""

    def __init__(self, server: LiveServer, model: str, *, num_predict: int = 4, tries: int = 3) -> None:
        self.server = server
        body = {"model": model, "prompt": "Say hello.", "stream": True,
                "options": {"temperature": 0, "num_predict": num_predict}}

        def stream(client: httpx.Client) -> None:
            with client.stream("POST", "/api/generate", json=body) as response:
                response.raise_for_status()
                lines = [line for line in response.iter_lines() if line]
            if not lines or '"done":true' not in lines[-1].replace(" ", ""):
                raise AssertionError(f"the healthy stream did not end well: {lines[-1:]}")

        def tags(client: httpx.Client) -> None:
            client.get("/api/tags").raise_for_status()

        def one_step(client: httpx.Client, n: int) -> None:
            # A prompt of about one micro-batch (512 tokens), different from its first token on: no cache helps.
            client.post("/api/generate", json={"model": model, "prompt": f"{n} " + "lorem ipsum " * 240, "raw": True,
                                               "stream": False, "options": {"num_predict": 1}}).raise_for_status()

        self.probes = [_Probe("healthy stream", stream), _Probe("/api/tags", tags)]
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        with server.client() as client:
            stream(client)  # loads the model: loading is not what is measured
            for probe in self.probes:
                probe.baseline = max(_timed(probe.run, client) for _ in range(tries))
            # Any long prompt, hostile or not, shares each step with the running streams one micro-batch at a
            # time: each of the stream's steps (its prompt, then each token) may wait for one such chunk.
            step = max(_timed(lambda c, n=n: one_step(c, n), client) for n in range(tries))
            self.probes[0].allowance = (num_predict + 1) * step

    def __enter__(self) -> Neighbours:
        self._stop.clear()
        self._threads.clear()
        for probe in self.probes:
            probe.times.clear()
            probe.errors.clear()
            thread = threading.Thread(target=self._loop, args=(probe,), name=f"neighbour {probe.name}", daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(GUARD)

    def _loop(self, probe: _Probe) -> None:
        with self.server.client() as client:
            while not self._stop.is_set():
                try:
                    probe.times.append(_timed(probe.run, client))
                except Exception as exc:  # noqa: BLE001 - reported by check()
                    probe.errors.append(repr(exc))

    def check(self) -> None:
        """Each neighbour answered while X ran, every time within its factor of its unloaded time."""
        for probe, factor in zip(self.probes, (STREAM_FACTOR, TAGS_FACTOR), strict=True):
            assert not probe.errors, f"{probe.name} failed while X ran: {probe.errors[:3]}"
            assert probe.times, f"{probe.name} never completed while X ran"
            slowest = max(probe.times)
            assert slowest <= factor * probe.baseline + probe.allowance, (
                f"{probe.name} took {slowest:.3f}s while X ran, over {factor:g} times its unloaded "
                f"{probe.baseline:.3f}s plus {probe.allowance:.3f}s for sharing steps with a long prompt")


def _timed(run: Callable[[httpx.Client], None], client: httpx.Client) -> float:
    start = time.monotonic()
    run(client)
    return time.monotonic() - start
