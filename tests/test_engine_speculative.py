"""Prompt-lookup speculative decoding on the real model: the same tokens as one token a step, sooner.

Each request runs on a runner that drafts and on one that does not; the
tokens, log-probabilities, stop handling and end reasons must agree exactly,
and the drafting runner must have had drafts accepted (so the comparison
cannot pass by speculation never running).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from ollama_py import settings
from ollama_py.engine.chat import grammar_for_format
from ollama_py.engine.runner import Runner, RunnerOptions
from ollama_py.engine.speculative import Drafter
from ollama_py.engine.types import GenerationRequest, Sampling
from ollama_py.llama.model import Model
from tests.runner_harness import collect

PASSAGE = ("The lighthouse stood on the northern cliff for two hundred years. Every night its keeper climbed "
           "the one hundred and twelve steps to light the lamp, and every morning he wrote the weather in a "
           "leather book. Ships passing the rocks used the light to find the harbour, and the town grew rich "
           "on the trade that came safely in.")
RECORD = {"name": "Margaret Hale", "city": "Milton", "age": 19, "occupation": "teacher"}
SCHEMA = {"type": "object", "properties": {"name": {"type": "string"}, "city": {"type": "string"},
                                           "age": {"type": "integer"}, "occupation": {"type": "string"}},
          "required": ["name", "city", "age", "occupation"]}
OPTIONS = RunnerOptions(num_ctx=1024, num_parallel=2, num_batch=128, cache_ram=0)


def chat_prompt(model: Model, question: str) -> tuple[int, ...]:
    return tuple(model.vocab.tokenize(f"<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n",
                                      parse_special=True))


@pytest.fixture(scope="module")
def plain(model: Model) -> Iterator[Runner]:
    with Runner(model, msgspec.structs.replace(OPTIONS, draft_max=0)) as runner:
        yield runner


@pytest.fixture(scope="module")
def drafting(model: Model) -> Iterator[Runner]:
    with Runner(model, OPTIONS) as runner:
        yield runner


def both(plain: Runner, drafting: Runner, request: GenerationRequest) -> tuple[tuple, tuple, int, int]:
    """The request's output on each runner, and the drafting runner's accepted drafts and steps for it."""
    expected = asyncio.run(collect(plain, request))
    accepted, steps = drafting.stats().accepted, drafting.steps
    got = asyncio.run(collect(drafting, request))
    return expected, got, drafting.stats().accepted - accepted, drafting.steps - steps


def quote(model: Model, n: int, **sampling: object) -> GenerationRequest:
    return GenerationRequest(
        id="quote", prompt=chat_prompt(model, f"Here is a passage:\n\n{PASSAGE}\n\nRepeat the passage exactly, "
                                              "word for word."),
        sampling=Sampling(**{"temperature": 0, "num_predict": n, **sampling}))  # type: ignore[arg-type]


def test_quoting_answer_is_token_identical_in_fewer_steps(model: Model, plain: Runner, drafting: Runner) -> None:
    expected, got, accepted, steps = both(plain, drafting, msgspec.structs.replace(
        quote(model, 48), logprobs=True, top_logprobs=2))
    assert got[0] == expected[0]
    assert got[1] == expected[1]
    assert PASSAGE[:60] in got[1]  # the answer quotes the passage, so drafting had something to find
    assert got[2] == expected[2]  # log-probabilities of each verified row as of its own step
    assert got[3].reason == expected[3].reason and got[3].eval_count == expected[3].eval_count == 48
    assert accepted >= 24, f"only {accepted} drafted tokens accepted for a quoted passage"
    assert steps <= 48 - accepted + 1


def about_the_notes(model: Model, ask: str) -> GenerationRequest:
    """A request whose prompt passes 300 tokens: past 256 the KV view reaches 512 cells, where ggml's CPU
    attention would treat a lone row otherwise than several. The question comes first, so that no two of
    these prompts share more than the template's first tokens (a longer shared prefix is taken from a
    slot's cache, and the rest of the prompt then computes in other chunks)."""
    notes = "\n\n".join(f"Note {n}. {PASSAGE}" for n in range(1, 5))
    request = GenerationRequest(id=ask, prompt=chat_prompt(model, f"{ask}\n\nThe keeper's notes:\n\n{notes}"),
                                sampling=Sampling(temperature=0, num_predict=48), logprobs=True, top_logprobs=2)
    assert len(request.prompt) > 300
    return request


def test_answer_past_256_tokens_of_context_is_identical_to_the_bit(model: Model, plain: Runner,
                                                                     drafting: Runner) -> None:
    request = about_the_notes(model, "Repeat note 4 exactly, word for word.")
    expected, got, accepted, _ = both(plain, drafting, request)
    assert got[0] == expected[0]
    assert got[2] == expected[2]  # each token's log-probabilities, exactly as decoded alone
    assert accepted >= 16, f"only {accepted} drafted tokens accepted for a quoted passage"


def test_long_streams_together_match_running_alone_to_the_bit(model: Model) -> None:
    # A short request takes the middle of three slots and ends at once; the long stream in slot 2 then moves
    # to slot 1 (Runner._pack), and each step llama.cpp cuts the rows of a draft past its sequence's first
    # into micro-batches of their own, some of a single row. Fresh runners: a prompt part of which a slot
    # still holds computes its rest in other cuts, which changes its last bits (docs/api.md).
    options = msgspec.structs.replace(OPTIONS, num_parallel=3)
    requests = [about_the_notes(model, "Repeat note 2 exactly, word for word."),
                GenerationRequest(id="short", prompt=chat_prompt(model, "Hi"), sampling=Sampling(num_predict=1)),
                about_the_notes(model, "What did the keeper write every morning, and why did it matter?")]
    alone = []
    for request in requests[::2]:
        with Runner(model, msgspec.structs.replace(options, draft_max=0)) as plain:
            alone.append(asyncio.run(collect(plain, request)))

    async def together(runner: Runner) -> list[tuple]:
        return list(await asyncio.gather(*(collect(runner, r) for r in requests)))

    with Runner(model, options) as drafting:
        for got, expected in zip(asyncio.run(together(drafting))[::2], alone, strict=True):
            assert got[0] == expected[0]
            assert got[2] == expected[2]
        assert drafting.stats().accepted >= 16


def test_stop_string_inside_a_draft_ends_the_answer_where_it_would(model: Model, plain: Runner,
                                                                  drafting: Runner) -> None:
    expected, got, accepted, _ = both(plain, drafting, quote(model, 80, stop=("twelve steps",)))
    assert got[1] == expected[1] and got[1].rstrip().endswith("one hundred and")
    assert got[3].reason == expected[3].reason and got[3].stop_sequence == "twelve steps"
    assert got[3].eval_count == expected[3].eval_count
    assert accepted > 0


def test_num_predict_ending_inside_a_draft_is_exact(model: Model, plain: Runner, drafting: Runner) -> None:
    for n in (1, 2, 13):
        expected, got, _, _ = both(plain, drafting, quote(model, n))
        assert got[0] == expected[0] and len(got[0]) == n
        assert str(got[3].reason) == "length"


def test_json_schema_answer_is_identical_with_drafts(model: Model, plain: Runner, drafting: Runner) -> None:
    grammar = grammar_for_format(SCHEMA)
    request = GenerationRequest(
        id="json", prompt=chat_prompt(model, f"Here is a record: {json.dumps(RECORD)}\n\nRepeat it as JSON."),
        sampling=Sampling(temperature=0, num_predict=48), grammar=grammar)
    expected, got, accepted, _ = both(plain, drafting, request)
    assert got[0] == expected[0]
    assert json.loads(got[1]) == json.loads(expected[1])
    assert accepted > 0


def test_repeated_request_after_rejected_drafts_reuses_a_clean_slot(model: Model, drafting: Runner) -> None:
    """Rejected drafts leave nothing behind: the same prompt again reuses the slot and answers the same."""
    request = GenerationRequest(
        id="rewrite", prompt=chat_prompt(model, f"Here is a passage:\n\n{PASSAGE}\n\nRewrite it in the present "
                                                "tense."), sampling=Sampling(temperature=0, num_predict=40))
    first = asyncio.run(collect(drafting, request))
    drafted, accepted = drafting.stats().drafted, drafting.stats().accepted
    second = asyncio.run(collect(drafting, request))
    assert second[0] == first[0]
    assert second[3].prompt_cached == len(request.prompt) - 1
    assert drafting.stats().drafted - drafted > drafting.stats().accepted - accepted  # some drafts were refused


def test_concurrent_drafting_streams_match_running_alone(model: Model, plain: Runner, drafting: Runner) -> None:
    quoting = quote(model, 32)
    other = GenerationRequest(id="other", prompt=chat_prompt(model, "List three fruits."),
                              sampling=Sampling(temperature=0, num_predict=32))
    alone = [asyncio.run(collect(plain, r))[0] for r in (quoting, other)]

    async def together() -> list[list[int]]:
        results = await asyncio.gather(*(collect(drafting, r) for r in (quoting, other)))
        return [r[0] for r in results]

    assert asyncio.run(together()) == alone


def test_sampled_answers_above_the_threshold_do_not_draft(model: Model, drafting: Runner) -> None:
    drafted = drafting.stats().drafted
    asyncio.run(collect(drafting, quote(model, 16, temperature=0.9, seed=7)))
    assert drafting.stats().drafted == drafted


def test_no_drafts_where_a_rows_logits_depend_on_its_batch(model: Model, f16_model_path: Path) -> None:
    """Without flash attention, or with F16 weights (another matrix kernel from two tokens on), verified rows
    would differ in their last bits from one-token steps: the load-time check turns drafting off."""
    with Runner(model, msgspec.structs.replace(OPTIONS, flash_attention="off")) as runner:
        asyncio.run(collect(runner, quote(model, 12)))
        assert runner.stats().drafted == 0
    with Model(f16_model_path) as f16, Runner(f16, OPTIONS) as runner:
        asyncio.run(collect(runner, quote(f16, 12)))
        assert runner.stats().drafted == 0


def test_drafter_proposes_what_followed_the_latest_match_as_far_as_its_record_earns() -> None:
    drafter = Drafter([1, 2, 3, 4, 5, 9, 2, 3, 4, 6, 7], max_draft=3)
    assert drafter.draft(8) == []  # 4 6 7 never occurred before
    for token in (2, 3, 4):
        drafter.append(token)
    assert drafter.draft(8) == [6, 7]  # what followed 2 3 4 last time; a new sequence's record earns two
    assert drafter.draft(1) == [6]
    drafter.feedback(2, 2)
    assert drafter.draft(8) == [6, 7, 2]  # all taken: up to max_draft
    drafter.feedback(3, 0)
    drafter.feedback(1, 0)
    assert drafter.draft(8) == []  # wrong from the first token twice: no draft is worth its rows now
    for _ in range(5):
        drafter.draft(8)
    assert drafter.draft(8) == [6]  # steps without drafts bring the record back towards the prior: it tries again
    fresh = Drafter([], max_draft=16)
    assert fresh.record.length(sharing=1) == 2
    assert fresh.record.length(sharing=8) == 0  # beside 7 other streams a row costs more than an untested record earns


def test_drafts_end_before_an_image() -> None:
    # An image stands in the prompt as negative placeholder ids (engine/vision.py), which are no tokens to decode.
    drafter = Drafter([1, 2, 3, 7, -5, -5, 8, 1, 2, 3], max_draft=16)
    assert drafter.draft(8) == [7]


def test_draft_setting_is_read_and_checked() -> None:
    assert settings.load({}).draft_max == 16
    assert settings.load({"OLLAMA_PY_DRAFT_MAX": "0"}).draft_max == 0
    with pytest.raises(settings.SettingsError, match="OLLAMA_PY_DRAFT_MAX"):
        settings.load({"OLLAMA_PY_DRAFT_MAX": "-3"})


def test_a_context_whose_steps_hold_fewer_tokens_than_a_draft_still_answers(model: Model) -> None:
    # The load-time check decodes a draft's worth of rows at once; here a step holds only 16 tokens.
    with Runner(model, RunnerOptions(num_ctx=16, num_parallel=1, num_batch=1, cache_ram=0)) as runner:
        request = GenerationRequest(id="small", prompt=tuple(model.vocab.tokenize("Hello there")),
                                    sampling=Sampling(temperature=0, num_predict=4))
        tokens, _, _, done = asyncio.run(collect(runner, request))
    assert done.eval_count == len(tokens) == 4
