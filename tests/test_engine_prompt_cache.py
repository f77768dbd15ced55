"""Prompt states saved beyond the slots: restored from host RAM, and from disk after a restart."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import msgspec
import pytest

from ollama_py import settings
from ollama_py.engine.prompt_cache import DiskCache, SavedState
from ollama_py.engine.runner import Runner, RunnerOptions
from ollama_py.engine.types import (
    Done,
    DoneReason,
    GenerationRequest,
    Grammar,
    Sampling,
    Token,
)
from ollama_py.llama.model import Model
from tests import fixtures_models
from tests.server_harness import default_store, live_server, server_settings

SYSTEM = ("You are a careful assistant for a small bakery. Answer briefly and politely, name prices in euros, "
          "never invent products, and suggest the daily special when a customer is unsure what to order. ")
GREEDY = Sampling(temperature=0, num_predict=16)
KEY = {"model": "0" * 64, "kv_cache_type": "f16", "flash_attention": True}


@dataclass
class Result:
    tokens: list[int]
    done: Done


def prompt_of(model: Model, question: str) -> tuple[int, ...]:
    return tuple(model.vocab.tokenize(f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n{question}"
                                      "<|im_end|>\n<|im_start|>assistant\n", parse_special=True))


def follow_up(model: Model, question: str) -> tuple[int, ...]:
    return tuple(model.vocab.tokenize(f"<|im_end|>\n<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n",
                                      add_special=False, parse_special=True))


async def run(runner: Runner, prompt: tuple[int, ...], sampling: Sampling = GREEDY) -> Result:
    tokens: list[int] = []
    async with contextlib.aclosing(runner.submit(GenerationRequest(id="c", prompt=prompt, sampling=sampling))) as s:
        async for event in s:
            if isinstance(event, Token):
                tokens.append(event.token)
            elif isinstance(event, Done):
                return Result(tokens, event)
    raise AssertionError("the stream ended without Done")


def options(**changes: object) -> RunnerOptions:
    return RunnerOptions(num_ctx=1024, num_parallel=1, num_batch=128, **changes)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def cold(model: Model) -> Iterator[Runner]:
    """No cache beyond its one slot: what every prompt costs without saved states."""
    with Runner(model, options(cache_ram=0)) as r:
        yield r


@pytest.mark.asyncio
async def test_ram_restore_gives_the_cold_output_and_counts_cached_tokens(model: Model, cold: Runner) -> None:
    first, other = prompt_of(model, "Do you sell rye bread?"), prompt_of(model, "When do you open on Sunday?")
    with Runner(model, options(cache_ram=64 << 20)) as warm:
        reference = await run(warm, first)
        assert reference.done.prompt_cached == 0
        await run(warm, other)  # takes the only slot: the first prompt's state goes to RAM
        again = await run(warm, first)
        assert warm.stats().cache_states >= 1
    assert again.tokens == reference.tokens
    assert again.done.prompt_cached == len(first) - 1  # the last token is evaluated again for its logits
    assert again.done.prompt_eval_count == 1
    # Without the RAM tier the slot keeps only the shared system prompt.
    await run(cold, first)
    await run(cold, other)
    uncached = await run(cold, first)
    assert uncached.tokens == reference.tokens
    assert uncached.done.prompt_cached < again.done.prompt_cached


@pytest.mark.asyncio
async def test_a_sliding_window_state_restored_for_a_shorter_prefix_answers_as_fresh() -> None:
    # A Gemma 3 whose layers attend through a window of 8 tokens: its saved state holds only the cells its
    # last token still reached, so a prompt sharing just the first 24 tokens of it is evaluated afresh instead
    # of decoding beside missing cells.
    with Model(fixtures_models.sliding_window(settings.load().cache)) as swa:
        assert swa.n_swa == 8
        words = tuple(swa.vocab.tokenize(" ".join(f"item {i}," for i in range(20)), add_special=False))
        first, other = words[:40], words[40:60]
        later = words[:24] + tuple(swa.vocab.tokenize(" and then the list ends.", add_special=False))
        small = RunnerOptions(num_ctx=256, num_parallel=1, num_batch=64, draft_max=0, cache_ram=0)
        with Runner(swa, small) as fresh:
            expected = await run(fresh, later)
        with Runner(swa, msgspec.structs.replace(small, cache_ram=64 << 20)) as warm:
            await run(warm, first)
            await run(warm, other)  # takes the only slot: the first prompt's state goes to RAM
            got = await run(warm, later)
            assert warm.stats().cache_states >= 1
    assert got.tokens == expected.tokens
    assert got.done.prompt_cached == 0


@pytest.mark.asyncio
async def test_disk_tier_turn_two_after_a_restart_evaluates_only_new_tokens(
        model: Model, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    first = prompt_of(model, "What is the capital of France?")
    added = follow_up(model, "And of Spain?")
    with Runner(model, options(cache_ram=0)) as unbroken:  # the same two turns without a restart
        answer = await run(unbroken, first, Sampling(temperature=0, num_predict=200))
        second = first + tuple(answer.tokens) + added
        expected = await run(unbroken, second)
    assert answer.done.reason is DoneReason.STOP  # so every answer token was decoded into the state
    with Runner(model, options(cache_ram=0, cache_dir=str(tmp_path))) as before:
        assert (await run(before, first, Sampling(temperature=0, num_predict=200))).tokens == answer.tokens
    assert list(tmp_path.glob("*.state")), "the finished request's state was written"
    with Runner(model, options(cache_ram=0, cache_dir=str(tmp_path))) as after:
        restored = await run(after, second)
    assert restored.done.prompt_eval_count == len(added)
    assert restored.done.prompt_cached == len(first) + len(answer.tokens)
    assert restored.tokens == expected.tokens

    # One payload byte changed: noticed when read, ignored with a warning, removed; the prompt is evaluated.
    (path,) = tmp_path.glob("*.state")
    data = bytearray(path.read_bytes())
    data[-100] ^= 0xFF
    path.write_bytes(data)
    caplog.set_level(logging.WARNING, logger="ollama_py.engine.prompt_cache")
    with Runner(model, options(cache_ram=0, cache_dir=str(tmp_path))) as corrupt:
        fresh = await run(corrupt, second)
    assert "payload does not match its checksum" in caplog.text
    assert fresh.done.prompt_cached == 0 and fresh.done.prompt_eval_count == len(second)
    assert fresh.tokens


async def finishing_order(model: Model, runner: Runner, waiting: list[tuple[str, tuple[int, ...]]]
                          ) -> list[tuple[str, Result]]:
    """Submits the requests, in order, while a request holds the runner's one slot, then frees the slot:
    the order in which they finish is the order in which they got it."""
    # Holds the slot until cancelled: the grammar allows no end for hundreds of tokens.
    busy = runner.submit(GenerationRequest(id="busy", prompt=prompt_of(model, "Spell a long word."),
                                           sampling=Sampling(temperature=0, num_predict=-1),
                                           grammar=Grammar(gbnf="root ::= [a-z]{2000}")))
    await anext(busy)
    finished: list[tuple[str, Result]] = []

    async def request(label: str, prompt: tuple[int, ...]) -> None:
        finished.append((label, await run(runner, prompt)))

    tasks = [asyncio.create_task(request(label, prompt)) for label, prompt in waiting]
    while runner.stats().waiting < len(tasks):
        await asyncio.sleep(0.01)
    await busy.aclose()
    await asyncio.gather(*tasks)
    return finished


@pytest.mark.asyncio
@pytest.mark.parametrize("cached_first, expected", [(0, ["new", "back", "back"]), (1, ["back", "new", "back"])])
async def test_a_returning_conversation_goes_first_but_passes_each_request_a_bounded_number_of_times(
        model: Model, cached_first: int, expected: list[str]) -> None:
    """One slot, busy; a new conversation waits, then two come back. With `cached_first` the first to come
    back goes first, reusing its saved state, but passes the new one only once: then the new one's turn."""
    firsts = [prompt_of(model, "Do you sell rye bread?"), prompt_of(model, "Do you bake cakes to order?")]
    added = follow_up(model, "How much is it?")
    with Runner(model, options(cache_ram=64 << 20, cached_first=cached_first)) as runner:
        returning = [first + tuple((await run(runner, first)).tokens) + added for first in firsts]
        finished = await finishing_order(model, runner, [
            ("new", prompt_of(model, "When do you open on Sunday?")),
            ("back 1", returning[0]), ("back 2", returning[1])])
    assert [label.split()[0] for label, _ in finished] == expected
    for label, result in finished:
        if label.startswith("back"):  # the state its first turn left in RAM, whichever order it ran in
            prompt = returning[int(label[-1]) - 1]
            assert result.done.prompt_cached > len(prompt) - len(added) - 2


def test_cached_first_is_on_by_default_and_refuses_a_negative_number() -> None:
    assert settings.load({}).cached_first == 4
    assert settings.load({"OLLAMA_PY_CACHED_FIRST": "0"}).cached_first == 0
    with pytest.raises(settings.SettingsError, match="OLLAMA_PY_CACHED_FIRST"):
        settings.load({"OLLAMA_PY_CACHED_FIRST": "-1"})


def _written(directory: Path, key: dict[str, object]) -> Path:
    disk = DiskCache(directory, key, 1 << 30)
    disk.save(SavedState(tuple(range(40)), bytearray(b"state" * 100)))
    disk.close()
    (path,) = directory.glob("*.state")
    return path


@pytest.mark.parametrize("damage, problem", [
    (lambda b: b"XXXXXXXX" + b[8:], "bad magic"),
    (lambda b: b[:-7], "payload is truncated"),
    (lambda b: b + b"!", "trailing bytes"),
    (lambda b: b.replace(b'"n_tokens": 40', b'"n_tokens": 39'), "token list does not match its hash"),
])
def test_a_damaged_file_is_never_trusted(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                         damage: object, problem: str) -> None:
    path = _written(tmp_path, KEY)
    path.write_bytes(damage(path.read_bytes()))  # type: ignore[operator]
    caplog.set_level(logging.WARNING, logger="ollama_py.engine.prompt_cache")
    disk = DiskCache(tmp_path, KEY, 1 << 30)
    loaded: list[SavedState | None] = []
    disk.load(tuple(range(50)), loaded.append)
    disk.close()
    assert loaded == [None]
    assert problem in caplog.text
    assert not path.exists()


def test_a_file_for_another_model_is_not_read(tmp_path: Path) -> None:
    path = _written(tmp_path, KEY)
    other = DiskCache(tmp_path, {**KEY, "model": "1" * 64}, 1 << 30)
    assert other.longest(tuple(range(50))) == 0  # another key: its files are not even listed
    other.close()
    path.rename(tmp_path / path.name.replace(path.name.split("-")[0], "f" * 16))
    renamed = DiskCache(tmp_path, {**KEY, "model": "1" * 64}, 1 << 30)
    assert renamed.longest(tuple(range(50))) == 0
    renamed.close()


def test_the_disk_tier_keeps_to_its_budget(tmp_path: Path) -> None:
    disk = DiskCache(tmp_path, KEY, 3000)
    for start in range(5):
        disk.save(SavedState(tuple(range(start * 100, start * 100 + 20)), bytearray(1000)))
    disk.close()
    sizes = [p.stat().st_size for p in tmp_path.glob("*.state")]
    assert 0 < len(sizes) < 5 and sum(sizes) <= 3000


def test_a_longer_state_replaces_the_one_it_extends(tmp_path: Path) -> None:
    disk = DiskCache(tmp_path, KEY, 1 << 30)
    disk.save(SavedState(tuple(range(20)), bytearray(100)))
    disk.save(SavedState(tuple(range(30)), bytearray(150)))
    disk.close()
    assert len(list(tmp_path.glob("*.state"))) == 1
    assert DiskCache(tmp_path, KEY, 1 << 30).longest(tuple(range(40))) == 30


def test_cached_counts_over_http_after_a_restart(tmp_path: Path) -> None:
    """Ollama's prompt_eval_cached_count and OpenAI's cached_tokens, the second turn on a restarted server."""
    cache = settings.load().cache
    store = default_store(tmp_path / "store", cache)
    config = server_settings(tmp_path / "store", cache, prompt_cache_dir=str(tmp_path / "states"))
    turn = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "What is the capital of France?"}]
    options = {"temperature": 0, "num_predict": 96}  # room for the first answer to end (72 tokens, flash attention on)
    with live_server(config, store) as first, first.client() as client:
        one = _chat(client, turn, options)
    assert one["prompt_eval_cached_count"] == 0
    assert one["done_reason"] == "stop"  # the end of turn came from the model: every answer token is in the state
    turn2 = turn + [{"role": "assistant", "content": one["message"]["content"]},
                    {"role": "user", "content": "And of Spain?"}]
    with live_server(config, store) as second, second.client() as client:
        two = _chat(client, turn2, options)
        repeat = client.post("/v1/chat/completions", json={
            "model": "smollm2:135m", "messages": turn2, "max_tokens": 4, "temperature": 0}, timeout=300)
    # The restored state holds the first turn's prompt and answer; only the new turn is evaluated.
    assert two["prompt_eval_cached_count"] == one["prompt_eval_count"] + one["eval_count"]
    assert two["prompt_eval_count"] > two["prompt_eval_cached_count"]
    usage = repeat.json()["usage"]
    assert usage["prompt_tokens"] == two["prompt_eval_count"]
    assert usage["prompt_tokens_details"]["cached_tokens"] == usage["prompt_tokens"] - 1


def _chat(client: httpx.Client, messages: list[dict[str, str]], options: dict[str, object]) -> dict[str, object]:
    reply = client.post("/api/chat", json={"model": "smollm2:135m", "messages": messages, "stream": False,
                                           "options": options}, timeout=300)
    assert reply.status_code == 200, reply.text
    return reply.json()  # type: ignore[no-any-return]
