"""Prometheus metrics: counters and histograms fed per request, gauges read from the engine at scrape time.

Each app has its own registry, so several servers in one process (tests) do
not share counts. Queue depth and KV-cache use are named as the Gateway API
Inference Extension's model-server protocol expects gauges of that meaning.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ollama_py.engine.front import Engine
from ollama_py.store import names

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_PREFIX = "ollama_py"
# Seconds; first tokens range from a cached prompt on a GPU to a long prefill on a CPU.
_TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_TPOT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28)
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
_THROUGHPUT_WINDOW = 60.0  # seconds


class _EngineCollector(Collector):
    """Reads the engine and each loaded runner when Prometheus scrapes."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def collect(self) -> Iterator[Metric]:
        engine = self._engine
        waiting = GaugeMetricFamily(f"{_PREFIX}_num_requests_waiting",
                                    "Requests waiting for a model or for a free slot")
        loaded = GaugeMetricFamily(f"{_PREFIX}_loaded_models", "Models loaded now")
        busy = GaugeMetricFamily(f"{_PREFIX}_slots_busy", "Sequences generating now", labels=["model"])
        total = GaugeMetricFamily(f"{_PREFIX}_slots_total", "Sequences a loaded model can run at once",
                                  labels=["model"])
        kv = GaugeMetricFamily(f"{_PREFIX}_kv_cache_usage_perc",
                               "Share of the KV cache holding tokens (0 to 1)", labels=["model"])
        saved = GaugeMetricFamily(f"{_PREFIX}_prompt_cache_states",
                                  "Prompt states kept in host RAM beyond the slots, for later requests to restore",
                                  labels=["model"])
        saved_bytes = GaugeMetricFamily(f"{_PREFIX}_prompt_cache_bytes",
                                        "Host RAM the prompt states beyond the slots take", labels=["model"])
        entries = engine.loaded()
        queued = engine.waiting
        for entry in entries:
            stats = entry.runner.stats()
            queued += stats.waiting
            label = [names.parse(entry.name).display()]  # as the request metrics name it
            busy.add_metric(label, stats.slots_busy)
            total.add_metric(label, stats.slots_total)
            kv.add_metric(label, stats.kv_tokens / stats.kv_capacity if stats.kv_capacity else 0.0)
            saved.add_metric(label, stats.cache_states)
            saved_bytes.add_metric(label, stats.cache_bytes)
        waiting.add_metric([], queued)
        loaded.add_metric([], len(entries))
        failures = CounterMetricFamily(f"{_PREFIX}_runner_failures",
                                       "Runner processes that died or were stopped by their watchdog")
        failures.add_metric([], engine.runner_failures)
        yield from (waiting, loaded, busy, total, kv, saved, saved_bytes, failures)


class _Throughput(Collector):
    """Tokens generated per second over the last minute: a gauge an autoscaler reads without PromQL.

    Each finished generation counts for the part of its decode interval inside
    the window, so a long answer is spread over the time it took, not dropped
    in at its end. Answers still running count once they finish.
    """

    def __init__(self) -> None:
        self._spans: deque[tuple[float, float, str, int]] = deque()  # start, end, model, tokens; by end

    def add(self, model: str, tokens: int, seconds: float) -> None:
        end = time.monotonic()
        self._spans.append((end - seconds, end, model, tokens))

    def collect(self) -> Iterator[Metric]:
        since = time.monotonic() - _THROUGHPUT_WINDOW
        while self._spans and self._spans[0][1] <= since:
            self._spans.popleft()
        tokens: dict[str, float] = {}
        for start, end, model, count in self._spans:
            inside = (end - max(start, since)) / (end - start) if end > start else 1.0
            tokens[model] = tokens.get(model, 0.0) + count * inside
        rate = GaugeMetricFamily(f"{_PREFIX}_generation_tokens_per_second",
                                 "Tokens generated per second over the last minute", labels=["model"])
        for model, total in tokens.items():
            rate.add_metric([model], total / _THROUGHPUT_WINDOW)
        yield rate


class Metrics:
    def __init__(self, engine: Engine) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(f"{_PREFIX}_requests", "HTTP requests answered", ["route", "method", "status"],
                                registry=self.registry)
        self.latency = Histogram(f"{_PREFIX}_request_duration_seconds", "Time to answer a request, streams included",
                                 ["route"], buckets=_LATENCY_BUCKETS, registry=self.registry)
        self.prompt_tokens = Counter(f"{_PREFIX}_prompt_tokens", "Prompt tokens of finished generations",
                                     ["model"], registry=self.registry)
        self.generated_tokens = Counter(f"{_PREFIX}_generation_tokens", "Tokens generated", ["model"],
                                        registry=self.registry)
        self.ttft = Histogram(f"{_PREFIX}_time_to_first_token_seconds",
                              "From the request's arrival to its first generated text", ["model"],
                              buckets=_TTFT_BUCKETS, registry=self.registry)
        self.tpot = Histogram(f"{_PREFIX}_time_per_output_token_seconds",
                              "Mean time per generated token after the first, per request", ["model"],
                              buckets=_TPOT_BUCKETS, registry=self.registry)
        self.registry.register(_EngineCollector(engine))
        self._throughput = _Throughput()
        self.registry.register(self._throughput)

    def generated(self, model: str, tokens: int, seconds: float) -> None:
        """Counts a finished generation's tokens, and its decode time for the throughput gauge."""
        self.generated_tokens.labels(model).inc(tokens)
        self._throughput.add(model, tokens, seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
