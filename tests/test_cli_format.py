"""What the CLI prints for sizes, times, placements and addresses, checked against what `ollama` prints."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from ollama_py.api.native import Metrics
from ollama_py.cli import format as fmt
from ollama_py.cli.client import BaseURL


@pytest.mark.parametrize(("size", "shown"), [
    (98_362_432, "98 MB"), (1_500_000_000, "1.5 GB"), (2_000_000_000, "2 GB"), (512, "512 B"), (12_345, "12 KB"),
])
def test_sizes_are_decimal_like_ollama(size: int, shown: str) -> None:
    assert fmt.human_bytes(size) == shown


@pytest.mark.parametrize(("size", "vram", "shown"), [
    (1000, 0, "100% CPU"), (1000, 1000, "100% GPU"), (1000, 520, "48%/52% CPU/GPU"), (1000, 2000, "Unknown"),
])
def test_ps_processor_column(size: int, vram: int, shown: str) -> None:
    assert fmt.processor(size, vram) == shown


def test_times_read_as_ollama_words_them() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert fmt.human_time(now + timedelta(minutes=4, seconds=30), "Never", now) == "4 minutes from now"
    assert fmt.human_time(now - timedelta(seconds=70), "Never", now) == "About a minute ago"
    assert fmt.human_time(now - timedelta(days=3), "Never", now) == "3 days ago"
    assert fmt.human_time(now + timedelta(days=365 * 300), "Never", now) == "Forever"
    assert fmt.human_time(None, "Never", now) == "Never"
    assert fmt.parse_time("2026-01-01T00:00:00.123456789Z") == now + timedelta(microseconds=123456)
    assert fmt.parse_time("0001-01-01T00:00:00Z") is None


def test_verbose_summary_prints_go_durations_and_rates() -> None:
    text = fmt.summary(Metrics(total_duration=1_500_000_000, load_duration=12_300_000, prompt_eval_count=26,
                               prompt_eval_duration=130_000_000, eval_count=10, eval_duration=500_000_000))
    assert text.splitlines() == [
        "total duration:       1.5s",
        "load duration:        12.3ms",
        "prompt eval count:    26 token(s)",
        "prompt eval duration: 130ms",
        "prompt eval rate:     200.00 tokens/s",
        "eval count:           10 token(s)",
        "eval duration:        500ms",
        "eval rate:            20.00 tokens/s",
    ]
    assert fmt.go_duration(3_723_000_000_000) == "1h2m3s"


def test_tables_align_columns_without_borders() -> None:
    assert fmt.table(["NAME", "ID"], [["smollm2:135m", "abc"]]).splitlines() == [
        "NAME            ID",
        "smollm2:135m    abc",
    ]


@pytest.mark.parametrize(("host", "url", "local"), [
    ("", "http://127.0.0.1:11434", True),
    ("0.0.0.0", "http://0.0.0.0:11434", True),
    ("127.0.0.1:8080", "http://127.0.0.1:8080", True),
    ("http://example.com", "http://example.com:80", False),
    ("https://example.com/ollama", "https://example.com:443/ollama", False),
    ("[::1]:9000", "http://[::1]:9000", True),
    ("localhost", "http://localhost:11434", True),
])
def test_ollama_host_is_read_as_ollama_reads_it(host: str, url: str, local: bool) -> None:
    base = BaseURL.parse(host)
    assert str(base) == url
    assert base.is_local is local
