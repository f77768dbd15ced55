"""The continuous-batching loop of one loaded model (DESIGN.md decision 3).

One thread owns the llama context. Each step it puts into one batch the next
token of every generating slot and then prefill chunks of admitted prompts,
up to n_batch tokens, so a long prompt arriving never freezes the streams
already running. Everyone else talks to the thread through its inbox; events
go back to the asyncio side in one `call_soon_threadsafe` per step.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ctypes
import itertools
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TypeVar

import msgspec

from ollama_py.engine import vision
from ollama_py.engine.draft_model import DraftModel
from ollama_py.engine.prompt_cache import (
    MIN_TOKENS,
    DiskCache,
    RamCache,
    SavedState,
    auto_ram_bytes,
    common_prefix,
    model_digest,
)
from ollama_py.engine.sampling import ReasoningGate, sampler_config, worth_drafting
from ollama_py.engine.speculative import Drafter, DraftSource, batch_invariant
from ollama_py.engine.stops import StopMatcher, TokenText
from ollama_py.engine.types import (
    Done,
    DoneReason,
    EngineError,
    Event,
    Failed,
    GenerationRequest,
    InvalidRequest,
    Logprob,
    PromptTooLong,
    Token,
    TokenLogprob,
)
from ollama_py.llama import attention, capi
from ollama_py.llama.batch import Batch
from ollama_py.llama.context import Context, ContextOptions, DecodeError
from ollama_py.llama.lib import LlamaError, shim
from ollama_py.llama.model import Model, Vocab
from ollama_py.llama.sampler import GrammarError, SamplerChain
from ollama_py.store import gguf

log = logging.getLogger(__name__)
E = TypeVar("E")
R = TypeVar("R")

_KV_TYPES = {"f16": capi.GGML_TYPE_F16, "q8_0": capi.GGML_TYPE_Q8_0, "q4_0": capi.GGML_TYPE_Q4_0}
_FLASH_ATTENTION = {"auto": capi.FLASH_ATTN_AUTO, "on": capi.FLASH_ATTN_ENABLED, "off": capi.FLASH_ATTN_DISABLED}
# Tokens one step may hold (llama-server's n_batch); num_batch, the micro-batch llama.cpp computes at once
# (its n_ubatch), splits them. A larger step prefills a long prompt in fewer steps.
_STEP_TOKENS = 2048
# From this many rows of a sequence in a micro-batch, ggml's CPU flash attention computes them tile by tile
# (GGML_FA_TILE_Q), below it row by row: the same row gets other bits each way.
_TILED_ROWS = 64


def _tiled_weights(model: Model) -> bool:
    """Whether any weight is of a type ggml's CPU multiplies by its tiled kernel (K-quants, IQ types)."""
    try:
        tensors = gguf.read(model.path).tensors
    except (OSError, gguf.GGUFError):
        return True
    return any(t.type.endswith("_K") or t.type.startswith("IQ") for t in tensors)


class RunnerOptions(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What the context is built with; a change means a new runner (Ollama's load options)."""

    num_ctx: int = 4096  # per slot, as Ollama counts it
    num_parallel: int = 4
    num_batch: int = 512  # the micro-batch (llama.cpp's n_ubatch), as Ollama's num_batch
    num_thread: int = 0  # 0: the physical cores
    flash_attention: str = "auto"  # "auto", "on" or "off"
    cpu_attention: bool = True  # ollama-py's CPU flash attention kernel where it may (llama/attention.py)
    kv_cache_type: str = "f16"
    # Saved prompt states beyond the slots (engine/prompt_cache.py); not load options: they never change
    # what a sequence computes, only what it need not compute again.
    cache_ram: int = -1  # bytes of host RAM; -1: a quarter of what is available, at most 8 GiB; 0: off
    cache_dir: str = ""  # a directory that keeps finished requests' states across restarts; "": none
    cache_disk: int = 10 << 30  # bytes that directory may hold for this model and these options
    # Most tokens a generating slot drafts per step, by prompt lookup (engine/speculative.py) or a draft model
    # (engine/draft_model.py); 0: none.
    draft_max: int = 16
    # How many later requests may take a slot before a waiting one because more of their prompts is cached
    # (a conversation coming back); 0: strictly oldest first, as Ollama.
    cached_first: int = 0


def fit_prompt(prompt: list[int], num_ctx: int, num_keep: int, truncate: bool,
               shift: bool = True) -> tuple[list[int], bool]:
    """The prompt cut to leave room for an answer, and whether it was cut.

    As in Ollama, the first `num_keep` tokens stay and the oldest after them
    go. Ollama cuts a long prompt to the context and then shifts the context
    while prefilling, dropping half of what follows `num_keep`: the same
    prompt is cut here at once to `num_keep` plus half of the rest. Without
    shifting the answer has only the room the prompt leaves, so the prompt is
    cut to three quarters of the context, as llama-server does. Without
    truncating, a prompt that exactly fills the context still runs (its answer
    then shifts or stops at "length"), as Ollama's runner refuses only a longer one.
    """
    if not prompt:
        raise ValueError("the prompt has no tokens")
    if not truncate:
        PromptTooLong.check(len(prompt), num_ctx)
        return prompt, False
    if len(prompt) < num_ctx:
        return prompt, False
    if shift:
        keep = min(max(num_keep, 0), num_ctx - 1)
        target = keep + (num_ctx - keep) // 2
    else:
        target = max(1, num_ctx * 3 // 4)
        keep = min(max(num_keep, 0), target - 1)
    return prompt[:keep] + prompt[len(prompt) - (target - keep):], True


class _Stream:
    """The asyncio end of one request; only the event loop's thread touches it."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.queue: asyncio.Queue[Event | Failed] = asyncio.Queue()
        self.closed = False


@dataclass(frozen=True)
class RunnerStats:
    """A snapshot for metrics, read without stopping the runner thread (so only roughly consistent)."""

    slots_busy: int
    slots_total: int
    waiting: int  # submitted, not yet given a slot
    kv_tokens: int  # tokens whose keys and values the context holds, over all slots
    kv_capacity: int
    cache_states: int = 0  # prompt states saved in host RAM beyond the slots
    cache_bytes: int = 0
    drafted: int = 0  # tokens proposed by prompt lookup or the draft model since load
    accepted: int = 0  # of those, tokens the samplers confirmed


@dataclass(eq=False)
class _Submit:
    request: GenerationRequest
    stream: _Stream
    submitted_ns: int
    truncated: bool
    restored: SavedState | None = None  # read from the disk tier for this request
    disk_checked: bool = False
    cached: int = 0  # prompt tokens a slot or a saved state held when it came (with RunnerOptions.cached_first)
    passed: int = 0  # later requests admitted before this one (RunnerOptions.cached_first bounds it)


@dataclass(frozen=True)
class _Loaded:
    """The disk tier's answer for a request that waited on it."""

    submit: _Submit
    state: SavedState | None


@dataclass(frozen=True)
class _Cancel:
    stream: _Stream


@dataclass(frozen=True)
class _Call:
    """Other work that computes with ggml, run between two steps (`Runner.call`)."""

    work: Callable[[], object]
    done: concurrent.futures.Future[object]


class _Stop:
    pass


@dataclass(eq=False)
class _Job:
    """A request admitted to a slot: its prompt still to prefill and its output state."""

    submit: _Submit
    sampler: SamplerChain
    pending: list[int]
    prompt_eval_count: int
    cached: int  # prompt tokens whose keys and values were already there (slot, RAM or disk)
    admitted_ns: int
    text: TokenText = field(default_factory=TokenText)
    stops: StopMatcher = field(default_factory=lambda: StopMatcher(()))
    gate: ReasoningGate | None = None  # holds the grammar back while the model reasons
    next_token: int | None = None  # sampled, not yet decoded
    drafter: DraftSource | None = None  # prompt lookup or a draft model, for samplers where drafting pays
    drafts: list[int] = field(default_factory=list)  # decoded after next_token this step, not yet verified
    out_index: int = -1  # this step's logits row for the slot
    eval_count: int = 0
    first_token_ns: int = 0


@dataclass(eq=False)
class _Slot:
    seq: int  # the context's sequence holding the slot's cells; packing (Runner._pack) moves it
    draft_seq: int  # the draft model's sequence for the slot: fixed, as no two slots may share one there
    cache: list[int] = field(default_factory=list)  # tokens whose keys and values the context holds
    job: _Job | None = None
    last_used: int = 0
    shifted: bool = False  # the context was shifted: past `keep`, the cells no longer match a fresh prefill
    keep: int = 0


async def events_until_done(pending: asyncio.Queue[E | Failed], abandon: Callable[[], None],
                            last: type[E] | type[Done] = Done) -> AsyncIterator[E]:
    """One request's events up to its last one (a `last`), a Failed raised as InvalidRequest or EngineError.

    Closed before the end (the client went away), it calls `abandon`, which
    tells whoever runs the request to cancel it. Shared by the runner (token
    events) and the server's end of a runner process (chat events).
    """
    finished = False
    try:
        while not finished:
            event = await pending.get()
            if isinstance(event, Failed):
                finished = True
                raise (InvalidRequest if event.invalid else EngineError)(event.message)
            finished = isinstance(event, last)
            yield event
    finally:
        if not finished:
            abandon()


class Runner:
    """Serves one model to many concurrent requests on a thread of its own."""

    def __init__(self, model: Model, options: RunnerOptions = RunnerOptions(),
                 on_cancelled: Callable[[], None] = lambda: None, projector: Path | None = None,
                 draft: Model | None = None) -> None:
        """`on_cancelled` is called on the runner thread when a cancel freed a slot or a place in the queue:
        no event tells anyone else, and whoever reports `stats()` must hear of it. `projector`, the model's
        vision projector if it has one, is part of what saved states on disk depend on. `draft`, a model
        sharing this one's vocabulary (ValueError if it does not), drafts instead of prompt lookup; the
        caller keeps and closes it."""
        if options.kv_cache_type not in _KV_TYPES:
            raise ValueError(f"kv cache type {options.kv_cache_type!r}: expected one of {sorted(_KV_TYPES)}")
        if options.flash_attention not in _FLASH_ATTENTION:
            raise ValueError(f"flash attention {options.flash_attention!r}: expected one of {sorted(_FLASH_ATTENTION)}")
        self.model = model
        self.options = options
        n_ctx = min(options.num_ctx, model.n_ctx_train) if model.n_ctx_train > 0 else options.num_ctx
        micro = max(options.num_batch, options.num_parallel)
        self._capacity = max(micro, min(_STEP_TOKENS, n_ctx * options.num_parallel))
        self._micro = micro
        kv_type = options.kv_cache_type
        if kv_type != "f16" and options.flash_attention == "off":
            # As Ollama: a quantized cache needs flash attention, so without it the cache stays f16.
            log.warning("KV cache type %s needs flash attention, which is off; using f16", kv_type)
            kv_type = "f16"
        kv = _KV_TYPES[kv_type]
        if options.cpu_attention and options.flash_attention != "off":
            attention.enable()
        # One KV stream per slot (kv_unified off): each slot gets exactly num_ctx,
        # as in Ollama, and a slot's attention never sees another slot's cells.
        self._ctx = Context(model, ContextOptions(
            n_ctx=n_ctx * options.num_parallel, n_batch=self._capacity, n_ubatch=micro,
            n_seq_max=options.num_parallel, n_threads=options.num_thread, n_threads_batch=options.num_thread,
            flash_attn=_FLASH_ATTENTION[options.flash_attention],
            type_k=kv, type_v=kv, kv_unified=False))
        # llama.cpp pads the context; a slot still holds only what was asked for.
        self.num_ctx: int = min(n_ctx, self._ctx.n_ctx_seq)
        self._vocab: Vocab = model.vocab
        self._pieces: dict[int, bytes] = {}
        self._eog: dict[int, bool] = {}
        self._can_shift = self._ctx.can_shift()
        # Generated rows decode with ggml's reference CPU kernels where its flash attention would otherwise
        # treat a lone row differently (an f16 cache): a token's logits then never depend on which rows
        # share its step, so drafts are exact and a request answers alone as it does beside others. Not for
        # weights ggml has a tiled matrix kernel for (from 8 rows), which the reference kernels would give
        # up: their rows differ with the batch anyway.
        self._exact_rows = kv_type == "f16" and options.flash_attention != "off" and not _tiled_weights(model)
        # Drafts are exact only where a row's logits do not depend on its batch (engine/speculative.py);
        # the runner thread checks that before its first step. A sequence's rows in a step stay below
        # _TILED_ROWS, where attention would move to another kernel (llama/attention.py).
        self._draft_max = min(options.draft_max, _TILED_ROWS - 2)
        self._draft_model: DraftModel | None = None
        if draft is not None and options.draft_max > 0:
            try:
                self._draft_model = DraftModel(draft, model, num_ctx=self.num_ctx, num_parallel=options.num_parallel,
                                               options=self._ctx.options)
            except BaseException:
                self._ctx.close()
                raise
        self._drafted = 0
        self._accepted = 0
        ram = auto_ram_bytes() if options.cache_ram < 0 else options.cache_ram
        self._ram = RamCache(ram) if ram > 0 else None
        self._disk: DiskCache | None = None
        if options.cache_dir:
            # What the saved bytes depend on: the weights, the cache's layout (flash attention stores V
            # untransposed) and the attention kernel (a layer's keys come from the attention below it);
            # llama.cpp checks its own format version when it reads a state back.
            key = {"model": model_digest(model.path), "kv_cache_type": options.kv_cache_type,
                   "flash_attention": options.flash_attention, "cpu_attention": attention.enabled(),
                   **({"projector": model_digest(projector)} if projector is not None else {})}
            self._disk = DiskCache(Path(options.cache_dir), key, options.cache_disk)
        self._loading: dict[_Stream, _Submit] = {}  # waiting on the disk tier
        self._inbox: queue.SimpleQueue[_Submit | _Loaded | _Cancel | _Stop] = queue.SimpleQueue()
        self._lock = threading.Lock()  # orders "is the thread alive" against new submissions
        self._dead: str | None = None
        self._slots = [_Slot(seq, seq) for seq in range(options.num_parallel)]  # kept in order of `seq`
        self._waiting: deque[_Submit] = deque()
        self._step = 0
        self._on_cancelled = on_cancelled
        self._thread = threading.Thread(target=self._run, name=f"runner {model.path.name}", daemon=True)
        self._thread.start()

    def _exact_drafts(self) -> bool:
        if batch_invariant(self._ctx, self._vocab, 0, self._draft_max + 1, self._exact_rows):  # slots empty
            return True
        if self._draft_model is not None:
            self._draft_model.close()
            self._draft_model = None
        log.info("speculative decoding off for %s: a token's logits here depend on how many share its batch "
                 "(flash attention off, or weights whose matrix kernel changes with the batch)", self.model.path.name)
        return False

    # ---- asyncio side ----------------------------------------------------------------

    async def submit(self, request: GenerationRequest) -> AsyncIterator[Event]:
        """Streams the request's events, ending with Done.

        Closing the iterator early (a client that went away) cancels the
        request; its slot is free again within one step. Consume it under
        `contextlib.aclosing` so that happens at once.
        """
        prompt, truncated = fit_prompt(list(request.prompt), self.num_ctx, request.sampling.num_keep,
                                       request.truncate, request.shift and self._can_shift)
        if truncated and request.images:
            raise PromptTooLong(f"the prompt with its images ({len(request.prompt)} tokens) is longer than the "
                                f"context length ({self.num_ctx}); images are never cut")
        if truncated:
            log.warning("prompt of request %s truncated from %d to %d tokens", request.id, len(request.prompt),
                        len(prompt))
            request = msgspec.structs.replace(request, prompt=tuple(prompt))
        stream = _Stream(asyncio.get_running_loop())
        with self._lock:
            if self._dead is not None:
                raise EngineError(self._dead)
            self._inbox.put(_Submit(request, stream, time.monotonic_ns(), truncated))
        try:
            async with contextlib.aclosing(events_until_done(
                    stream.queue, lambda: self._inbox.put(_Cancel(stream)))) as events:
                async for event in events:
                    yield event
        finally:
            stream.closed = True

    def call(self, work: Callable[[], R]) -> R:
        """Runs `work` on the runner thread between two steps, blocking the caller until it is done.

        ggml's OpenMP keeps a team of threads for each thread that ever
        computed a graph, and one more team in the process made every later
        step twice as slow on two cores (an embedding from a worker thread
        took a stream from 78 to 29 tok/s for good), so whatever else this
        process computes with ggml computes here.
        """
        done: concurrent.futures.Future[object] = concurrent.futures.Future()
        with self._lock:
            if self._dead is not None:
                raise EngineError(self._dead)
            self._inbox.put(_Call(work, done))
        return done.result()  # type: ignore[return-value]

    def close(self) -> None:
        """Stops the thread (failing what is in flight) and frees the context."""
        if self._thread.is_alive():
            self._inbox.put(_Stop())
            self._thread.join()
        if self._disk is not None:
            self._disk.close()
        if self._draft_model is not None:
            self._draft_model.close()
        self._ctx.close()

    def __enter__(self) -> Runner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def alive(self) -> bool:
        return self._dead is None

    def stats(self) -> RunnerStats:
        return RunnerStats(
            slots_busy=sum(1 for s in self._slots if s.job is not None), slots_total=len(self._slots),
            waiting=len(self._waiting) + len(self._loading) + self._inbox.qsize(),
            kv_tokens=sum(len(s.cache) for s in self._slots), kv_capacity=self.num_ctx * len(self._slots),
            cache_states=len(self._ram) if self._ram else 0, cache_bytes=self._ram.bytes if self._ram else 0,
            drafted=self._drafted, accepted=self._accepted)

    @property
    def steps(self) -> int:
        """Decode calls so far (llama-server's n_decode_total), for metrics and tests."""
        return self._step

    # ---- runner thread -----------------------------------------------------------------

    def _run(self) -> None:
        outbox: list[tuple[_Stream, Event | Failed]] = []
        reason = "the model runner stopped"
        try:
            # Every decode runs on this thread: ggml's OpenMP keeps a team of threads per thread that
            # computed a graph, and a second team (the constructing thread's) made every later step of the
            # process twice as slow on two cores.
            if self._draft_max and not self._exact_drafts():
                self._draft_max = 0
            with Batch(self._capacity, 1) as batch:
                while self._take_inbox(outbox):
                    self._admit()
                    self._pack()
                    self._step_once(batch, outbox)
                    self._post(outbox)
        except Exception as exc:  # the thread must fail its requests, not vanish
            log.exception("model runner crashed")
            reason = f"the model runner failed: {exc}"
        with self._lock:
            self._dead = reason
        for slot in self._slots:
            if slot.job is not None:
                outbox.append((slot.job.submit.stream, Failed(message=reason)))
                self._release(slot)
        while True:
            try:
                message = self._inbox.get_nowait()
            except queue.Empty:
                break
            if isinstance(message, _Submit):
                self._waiting.append(message)
            elif isinstance(message, _Call):
                message.done.set_exception(EngineError(reason))
        outbox.extend((s.stream, Failed(message=reason)) for s in [*self._waiting, *self._loading.values()])
        self._waiting.clear()
        self._loading.clear()
        self._post(outbox)

    def _busy(self) -> bool:
        return bool(self._waiting) or any(s.job is not None for s in self._slots)

    def _take_inbox(self, outbox: list[tuple[_Stream, Event | Failed]]) -> bool:
        """Applies waiting messages (blocking while idle); False once told to stop."""
        while True:
            try:
                message = self._inbox.get() if not self._busy() else self._inbox.get_nowait()
            except queue.Empty:
                return True
            match message:
                case _Submit():
                    if self.options.cached_first:
                        message.cached = self._cached(message.request.prompt)
                    self._waiting.append(message)
                case _Loaded(submit, state):
                    if self._loading.pop(submit.stream, None) is not None:  # else cancelled meanwhile
                        self._waiting.appendleft(replace(submit, restored=state, disk_checked=True))
                case _Cancel(stream):
                    self._cancel(stream)
                    self._on_cancelled()
                case _Call(work, done):
                    if done.set_running_or_notify_cancel():
                        try:
                            done.set_result(work())
                        except Exception as exc:  # the caller's failure, not the runner's
                            done.set_exception(exc)
                case _Stop():
                    return False

    def _cancel(self, stream: _Stream) -> None:
        if self._loading.pop(stream, None) is not None:
            return
        for submit in self._waiting:
            if submit.stream is stream:
                self._waiting.remove(submit)
                return
        for slot in self._slots:
            if slot.job is not None and slot.job.submit.stream is stream:
                log.debug("slot %d cancelled", slot.seq)
                self._release(slot)
                return

    def _admit(self) -> None:
        """Gives waiting requests (`_next_waiting` says which first) a free slot holding the longest start of
        their prompt.

        That start is what the best free slot holds, or a saved state restored into the least recently used
        free slot when it holds more. A state on disk is read on the disk tier's thread while its request
        waits (others go ahead), so running streams never wait on a file.
        """
        while self._waiting:
            free = [s for s in self._slots if s.job is None]
            if not free:
                return
            submit = self._next_waiting()
            prompt = submit.request.prompt
            slot = max(free, key=lambda s: (common_prefix(s.cache, prompt), -s.last_used))
            in_slot = common_prefix(slot.cache, prompt)
            saved, in_saved = self._ram.longest(prompt) if self._ram is not None else (None, 0)
            if submit.restored is not None and (n := common_prefix(submit.restored.tokens, prompt)) > in_saved:
                saved, in_saved = submit.restored, n
            if (self._disk is not None and not submit.disk_checked
                    and self._disk.longest(prompt) >= max(in_slot, in_saved) + MIN_TOKENS):
                self._loading[submit.stream] = submit
                self._disk.load(prompt, lambda state, s=submit: self._inbox.put(_Loaded(s, state)))
                continue
            # Restoring is a copy of the state, cheaper than prefilling even a few tokens.
            restore = saved is not None and min(in_saved, len(prompt) - 1) > min(in_slot, len(prompt) - 1)
            if restore:
                slot = min(free, key=lambda s: s.last_used)
            self._save(slot, 0 if restore else min(common_prefix(slot.cache, prompt), len(prompt) - 1))
            if restore:
                assert saved is not None
                self._restore(slot, saved)
            # The last prompt token is always decoded again: its logits are the first sample's. An image is
            # kept whole or prefilled whole.
            keep = min(common_prefix(slot.cache, prompt), len(prompt) - 1)
            if submit.request.images:
                keep = submit.request.images.start_of(prompt, keep)
            # A saved state leaves out the cells a sliding window no longer reached from its last token
            # (llama_state_seq_get_data); going on from its end is fine, but the token at an earlier `keep`
            # attends back to keep - n_swa + 1, so a shorter prefix of such a state is evaluated again, as
            # llama-server does.
            partial = 0 < keep < len(slot.cache)
            if (not self._ctx.seq_rm(slot.seq, keep, -1) or partial
                    and not 0 <= self._ctx.seq_pos_min(slot.seq) <= max(0, keep + 1 - self.model.n_swa)):
                self._ctx.seq_rm(slot.seq)
                keep = 0
            del slot.cache[keep:]
            try:
                sampler = self._sampler(submit.request, prompt)
            except LlamaError as exc:
                self._post([(submit.stream, Failed(message=str(exc), invalid=isinstance(exc, GrammarError)))])
                continue
            request = submit.request
            gate = None
            if request.reasoning_tags is not None and sampler.has_grammar:
                gate = ReasoningGate(*request.reasoning_tags, opened=request.reasoning_opened)
            slot.job = _Job(submit=submit, sampler=sampler, pending=list(prompt[keep:]),
                            prompt_eval_count=len(prompt) - keep, cached=keep, admitted_ns=time.monotonic_ns(),
                            stops=StopMatcher(request.sampling.stop), gate=gate)
            slot.keep = min(max(request.sampling.num_keep, 0), self.num_ctx - 1)
            log.debug("slot %d: %d prompt tokens, %d cached", slot.seq, len(prompt), keep)

    def _next_waiting(self) -> _Submit:
        """Takes the waiting request with the most of its prompt cached, the oldest of those that tie; a request
        that later ones passed `cached_first` times is not passed again.

        Under a queue, a conversation coming back then goes on before new ones start: its state is still
        there to reuse, and its user waits for the next free slot instead of the whole queue
        (SGLang's longest-prefix-match order, bounded so that nobody waits for ever). How much is cached is
        counted once, when a request comes, so choosing is a scan of numbers however long the queue or the
        caches: a slot's state goes to RAM when the slot is taken, so the count goes stale only by eviction
        (or at once with the RAM tier off, which changes the order and nothing else).
        """
        bound = self.options.cached_first
        best = 0
        if bound > 0:
            most = -1
            for index, submit in enumerate(self._waiting):
                if submit.cached > most:
                    best, most = index, submit.cached
                if submit.passed >= bound:
                    break  # due: nobody behind it goes first
        submit = self._waiting[best]
        del self._waiting[best]
        for passed in itertools.islice(self._waiting, best):
            passed.passed += 1
        return submit

    def _cached(self, prompt: tuple[int, ...]) -> int:
        """How many leading tokens of `prompt` a slot, a state saved in RAM or one on disk holds."""
        return max(max(common_prefix(s.cache, prompt) for s in self._slots),
                   self._ram.longest(prompt)[1] if self._ram is not None else 0,
                   self._disk.longest(prompt) if self._disk is not None else 0)

    def _pack(self) -> None:
        """Moves busy slots' cells so that their sequences are consecutive.

        With a KV stream per sequence, llama.cpp puts several sequences' rows in
        one micro-batch only while their ids follow one another (llama-batch.cpp,
        split_equal), so busy slots 0, 1 and 3 take two passes over the weights a
        step where 0, 1 and 2 take one (in-process, 8 slots of 300 tokens each:
        six busy with gaps, 97 ms a step; six consecutive, 68). A request that ends
        in the middle leaves such a gap for as long as the others run. A move
        goes into a free slot inside the window of slots that already holds the
        most busy ones, what that slot held going to the prompt cache first. It
        is llama.cpp's own copy of the sequence's stream (`seq_cp`, done by the
        next decode): every cell where it was, the ones a sliding window has
        left behind too (a saved state leaves those out), so the moved sequence
        computes exactly as it would have in place.
        """
        busy = [s.seq for s in self._slots if s.job is not None]
        generating = any(s.job is not None and s.job.next_token is not None for s in self._slots)
        if not generating or len(busy) < 2 or busy[-1] - busy[0] == len(busy) - 1:
            return
        n = len(busy)
        start = max(range(len(self._slots) - n + 1), key=lambda at: sum(at <= seq < at + n for seq in busy))
        outside = [s for s in self._slots if s.job is not None and not start <= s.seq < start + n]
        inside = [s for s in self._slots if s.job is None and start <= s.seq < start + n]
        for moving, free in zip(outside, inside, strict=True):
            self._save(free, 0)
            self._ctx.seq_rm(free.seq)
            free.cache.clear()
            # The copy reads the source's buffer when the next decode starts: this step's decode of its
            # generated rows (only a step that has some packs). Removing the source now only frees its cells,
            # and nothing writes into them before that decode.
            self._ctx.seq_cp(moving.seq, free.seq)
            self._ctx.seq_rm(moving.seq)
            log.debug("slot %d moved to slot %d", moving.seq, free.seq)
            moving.seq, free.seq = free.seq, moving.seq
        # A new list, not sort() in place: stats() reads the slots from other threads, and a list being sorted
        # looks empty meanwhile.
        self._slots = sorted(self._slots, key=lambda s: s.seq)

    def _save(self, slot: _Slot, kept: int) -> None:
        """Keeps in RAM what the slot holds when its next request keeps only `kept` tokens of it."""
        if self._ram is None or len(slot.cache) - kept < MIN_TOKENS:
            return
        if not self._ram.covers(slot.cache):
            self._ram.add(SavedState(tuple(slot.cache), self._ctx.seq_state(slot.seq)))

    def _restore(self, slot: _Slot, saved: SavedState) -> None:
        self._ctx.seq_rm(slot.seq)
        slot.cache.clear()
        if self._ctx.set_seq_state(saved.data, slot.seq):
            slot.cache.extend(saved.tokens)
            if self._ram is not None:
                self._ram.touch(saved)
        else:
            log.warning("llama.cpp refused a saved prompt state of %d tokens; prefilling instead",
                        len(saved.tokens))
            self._ctx.seq_rm(slot.seq)

    def _sampler(self, request: GenerationRequest, prompt: tuple[int, ...]) -> SamplerChain:
        sampler = SamplerChain(self._vocab, sampler_config(request.sampling, request.grammar))
        # The repeat penalty looks back over the prompt too, as in Ollama and
        # llama-server; the grammar sees only its own prefill (the generation
        # prompt it starts with), never the prompt.
        last_n = request.sampling.repeat_last_n
        history = [t for t in (prompt[-last_n:] if last_n > 0 else prompt if last_n < 0 else ()) if t >= 0]
        try:
            for token in history:
                sampler.accept(token)
            for token in request.grammar_prefill:
                sampler.accept_grammar(token)
        except BaseException:
            sampler.close()
            raise
        return sampler

    def _step_once(self, batch: Batch, outbox: list[tuple[_Stream, Event | Failed]]) -> None:
        """One step: the generating slots' next tokens (and drafts) in one decode, then prompt chunks."""
        batch.clear()
        generating = [s for s in self._slots if s.job is not None and s.job.next_token is not None]
        # Drafts take at most half of a micro-batch, so a prompt waiting for its prefill still moves.
        draft_room = self._micro // 2 - len(generating)
        for slot in generating:
            job = slot.job
            assert job is not None and job.next_token is not None
            if len(slot.cache) + 1 >= self.num_ctx:
                self._shift(slot)
            job.out_index = batch.add(job.next_token, len(slot.cache), (slot.seq,), True)
            slot.cache.append(job.next_token)
            job.next_token = None
            if job.drafter is not None and draft_room > 0:
                draft_room -= self._add_drafts(batch, slot, job, draft_room, len(generating))
        self._decode(batch, generating, outbox, reference=self._exact_rows)
        # While streams are generating, prompts fill one micro-batch per step: a long prompt arriving then costs
        # each running stream one micro-batch of delay per token, not a whole step's worth.
        room = self._micro if generating else self._capacity
        cuts: list[tuple[_Slot, int]] = []
        for slot in sorted((s for s in self._slots if s.job is not None and s.job.pending),
                           key=lambda s: s.job.submit.submitted_ns if s.job else 0):
            if room <= 0:
                break
            job = slot.job
            assert job is not None
            if job.pending[0] < 0 and not self._prefill_image(slot, job, outbox):
                continue
            run = vision.text_run(job.pending, len(job.pending))
            if not run:  # another image next: the next step takes it
                continue
            # Whole micro-batches, or the rest of the text (before an image, or to the end), however many
            # prompts share the step: a prompt is cut the same way alone or beside others.
            take = run if run <= room else room - room % self._micro
            if take <= 0:
                break
            room -= take
            cuts.append((slot, take))
        # A cut long enough for the tiled attention decodes by itself (llama.cpp would cut it again to match
        # rows with another prompt's); short cuts together, with the kernels generated rows use: either way a
        # prompt's rows compute as they do alone.
        for slot, take in cuts:
            if take >= _TILED_ROWS:
                batch.clear()
                self._add_cut(batch, slot, take)
                self._decode(batch, [slot], outbox)
        batch.clear()
        # In the order of their sequences, which llama.cpp needs to put them in one micro-batch (Runner._pack).
        short = sorted(((slot, take) for slot, take in cuts if take < _TILED_ROWS), key=lambda cut: cut[0].seq)
        for slot, take in short:
            self._add_cut(batch, slot, take)
        self._decode(batch, [slot for slot, _ in short], outbox, reference=self._exact_rows)

    @staticmethod
    def _add_cut(batch: Batch, slot: _Slot, take: int) -> None:
        """Moves the first `take` pending prompt tokens of the slot into the batch; the last one has logits."""
        job = slot.job
        assert job is not None
        last = take == len(job.pending)
        index = batch.add_sequence(job.pending[:take], len(slot.cache), slot.seq, last_output=last)
        job.out_index = index if last else -1
        slot.cache.extend(job.pending[:take])
        del job.pending[:take]

    def _decode(self, batch: Batch, slots: list[_Slot], outbox: list[tuple[_Stream, Event | Failed]], *,
                reference: bool = False) -> None:
        """Decodes the batch `slots` filled and samples each slot whose row has logits; on failure fails
        them all."""
        if not slots:
            return
        self._step += 1
        try:
            self._ctx.decode(batch, reference=reference)
        except DecodeError as exc:
            log.error("decode failed for %d slots: %s", len(slots), exc)
            for slot in slots:
                assert slot.job is not None
                outbox.append((slot.job.submit.stream, Failed(message=str(exc))))
                self._release(slot)
                self._ctx.seq_rm(slot.seq)
                slot.cache.clear()
            return
        for slot in slots:
            job = slot.job
            assert job is not None
            if job.out_index >= 0:
                self._sample(slot, job, outbox)

    def _prefill_image(self, slot: _Slot, job: _Job, outbox: list[tuple[_Stream, Event | Failed]]) -> bool:
        """Encodes the image at the head of the slot's pending prompt and decodes its embeddings, in a decode
        of their own; False when that failed and the slot was freed."""
        request = job.submit.request
        assert request.images is not None
        try:
            n = vision.prefill(self._ctx, request.images, request.prompt, len(slot.cache), slot.seq, self._micro)
        except LlamaError as exc:
            log.error("slot %d: image prefill failed: %s", slot.seq, exc)
            outbox.append((job.submit.stream, Failed(message=str(exc))))
            self._release(slot)
            self._ctx.seq_rm(slot.seq)
            slot.cache.clear()
            return False
        slot.cache.extend(job.pending[:n])
        del job.pending[:n]
        return True
    def _add_drafts(self, batch: Batch, slot: _Slot, job: _Job, room: int, sharing: int) -> int:
        """Puts the job's drafted tokens after its next token, each with logits to verify it by."""
        assert job.drafter is not None
        limit = min(room, self.num_ctx - len(slot.cache) - 2)
        num_predict = job.submit.request.sampling.num_predict
        if num_predict > 0:
            limit = min(limit, num_predict - job.eval_count - 1)
        job.drafts = job.drafter.draft(limit, sharing)
        for k, token in enumerate(job.drafts):
            batch.add(token, len(slot.cache) + k, (slot.seq,), True)
        return len(job.drafts)

    def _sample(self, slot: _Slot, job: _Job, outbox: list[tuple[_Stream, Event | Failed]]) -> None:
        """Samples the slot's next token, then each of its drafts' rows while the draft holds the token sampled
        before it: what is emitted is what one token a step would have emitted."""
        request = job.submit.request
        if job.eval_count == 0 and self._draft_max and worth_drafting(request.sampling):
            job.drafter = self._drafter(slot, request)
        drafts, job.drafts = job.drafts, []
        row = job.out_index
        taken = 0
        while (token := self._sample_one(slot, job, outbox)) is not None:
            if job.drafter is not None:
                job.drafter.append(token)
            if taken == len(drafts) or token != drafts[taken]:
                break
            # The draft was right: its keys and values, decoded this step, are the sequence's own.
            slot.cache.append(token)
            job.next_token = None
            taken += 1
            job.out_index = row + taken
        if drafts:
            assert job.drafter is not None
            job.drafter.feedback(len(drafts), taken)
            self._drafted += len(drafts)
            self._accepted += taken
            if taken < len(drafts) and slot.job is job:
                self._ctx.seq_rm(slot.seq, len(slot.cache), -1)

    def _drafter(self, slot: _Slot, request: GenerationRequest) -> DraftSource:
        """The draft model where there is one, else prompt lookup (and for a prompt with images, which the
        draft model cannot see)."""
        if self._draft_model is not None and not request.images:
            return self._draft_model.drafter(slot.draft_seq, request.prompt, self._draft_max)
        return Drafter(request.prompt, self._draft_max)

    def _sample_one(self, slot: _Slot, job: _Job, outbox: list[tuple[_Stream, Event | Failed]]) -> int | None:
        """Samples and emits one token from row `job.out_index`; the token when the job goes on, else None."""
        request = job.submit.request
        stream = job.submit.stream
        num_predict = request.sampling.num_predict
        if not job.first_token_ns:
            job.first_token_ns = time.monotonic_ns()
        if num_predict == 0:
            self._finish(slot, DoneReason.LENGTH, outbox)
            return None
        token = self._next_token(job)
        if self._is_eog(token):
            self._finish(slot, DoneReason.STOP, outbox)
            return None
        job.eval_count += 1
        piece = self._vocab.token_to_piece(token, special=True) if token in request.special_tokens \
            else self._piece(token)
        if job.gate is not None and job.gate.stray:
            piece = piece.decode("utf-8", errors="replace")[:-job.gate.stray].encode()
            job.gate.stray = 0
        text, stopped = job.stops.feed(job.text.feed(piece))
        logprob = self._logprob(job.out_index, token, request.top_logprobs) if request.logprobs else None
        if text or logprob is not None:
            outbox.append((stream, Token(text=text, token=token, logprob=logprob)))
        shift = request.shift and self._can_shift
        if stopped:
            self._finish(slot, DoneReason.STOP, outbox, flush=False)
        elif 0 < num_predict <= job.eval_count or (len(slot.cache) + 1 >= self.num_ctx and not shift):
            self._finish(slot, DoneReason.LENGTH, outbox)
        else:
            job.next_token = token
            return token
        return None

    def _next_token(self, job: _Job) -> int:
        """The slot's next token; while a reasoning gate holds the grammar back, sampled freely, and sampled
        again under the grammar from the same logits when it turns out to start the answer."""
        gate = job.gate
        if gate is None or gate.done:
            return job.sampler.sample(self._ctx, job.out_index)
        token = job.sampler.sample(self._ctx, job.out_index, constrained=False, accept=False)
        if gate.admit(self._piece(token).decode("utf-8", errors="replace")):
            job.sampler.accept_sampled(token, constrained=False)
            return token
        return job.sampler.sample(self._ctx, job.out_index)

    def _piece(self, token: int) -> bytes:
        """A token's text (special tokens printed as nothing), remembered: the vocabulary never changes."""
        piece = self._pieces.get(token)
        if piece is None:
            piece = self._pieces[token] = self._vocab.token_to_piece(token)
        return piece

    def _is_eog(self, token: int) -> bool:
        eog = self._eog.get(token)
        if eog is None:
            eog = self._eog[token] = self._vocab.is_eog(token)
        return eog

    def _shift(self, slot: _Slot) -> None:
        """Makes room as Ollama does: the first `keep` tokens stay, the oldest half of the rest goes.

        The cells after the gap move back (llama.cpp re-rotates their keys), so they no longer match what a
        fresh prefill of the remaining tokens would compute: once the request ends the slot keeps only its
        first `keep` tokens for reuse.
        """
        keep = min(slot.keep, len(slot.cache) - 1)
        discard = max(1, (len(slot.cache) - keep) // 2)
        self._ctx.seq_rm(slot.seq, keep, keep + discard)
        self._ctx.seq_add(slot.seq, keep + discard, -1, -discard)
        del slot.cache[keep:keep + discard]
        slot.shifted = True
        log.debug("slot %d: context shifted, %d tokens dropped after the first %d", slot.seq, discard, keep)

    def _finish(self, slot: _Slot, reason: DoneReason, outbox: list[tuple[_Stream, Event | Failed]],
                flush: bool = True) -> None:
        job = slot.job
        assert job is not None
        if job.drafter is not None:
            # Drafts decoded after the last kept token, verified or not, are no part of what the slot holds.
            self._ctx.seq_rm(slot.seq, len(slot.cache), -1)
        now = time.monotonic_ns()
        tail = job.stops.feed(job.text.flush())[0] + job.stops.flush() if flush else ""
        outbox.append((job.submit.stream, Done(
            reason=reason, text=tail,
            prompt_eval_count=job.prompt_eval_count,
            prompt_eval_duration=job.first_token_ns - job.admitted_ns,
            eval_count=job.eval_count,
            eval_duration=now - job.first_token_ns,
            total_duration=now - job.submit.submitted_ns,
            prompt_tokens=len(job.submit.request.prompt),
            prompt_cached=job.cached, truncated=job.submit.truncated, stop_sequence=job.stops.matched)))
        self._release(slot)
        if self._disk is not None and len(slot.cache) >= MIN_TOKENS and not self._disk.busy():
            self._disk.save(SavedState(tuple(slot.cache), self._ctx.seq_state(slot.seq)))

    def _release(self, slot: _Slot) -> None:
        if slot.job is not None:
            slot.job.sampler.close()
        slot.job = None
        slot.last_used = self._step
        if slot.shifted:
            if not self._ctx.seq_rm(slot.seq, slot.keep, -1):
                self._ctx.seq_rm(slot.seq)
                slot.keep = 0
            del slot.cache[slot.keep:]
            slot.shifted = False

    def _logprob(self, index: int, token: int, top: int) -> Logprob:
        """Log-probabilities under the model's own distribution, before any sampler reshapes it (in C: a
        log-softmax over the vocabulary is too slow for the runner thread in Python)."""
        top = max(0, min(top, self._vocab.n_tokens))
        chosen = ctypes.c_float()
        ids = (capi.llama_token * max(top, 1))()
        values = (ctypes.c_float * max(top, 1))()
        n = shim().ollama_py_logprobs(self._ctx.ptr, index, token, top, ctypes.byref(chosen), ids, values)
        if n < 0:
            raise LlamaError(f"no logits for batch index {index}")
        mine = self._token_logprob(token, chosen.value)
        return Logprob(token=mine.token, logprob=mine.logprob, bytes=mine.bytes,
                       top_logprobs=tuple(self._token_logprob(ids[i], values[i]) for i in range(n)))

    def _token_logprob(self, token: int, logprob: float) -> TokenLogprob:
        piece = self._piece(token)
        return TokenLogprob(token=piece.decode("utf-8", errors="replace"), logprob=logprob, bytes=tuple(piece))

    def _post(self, outbox: list[tuple[_Stream, Event | Failed]]) -> None:
        """Hands a step's events to each event loop in one call."""
        if not outbox:
            return
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[_Stream, Event | Failed]]] = {}
        for stream, event in outbox:
            by_loop.setdefault(stream.loop, []).append((stream, event))
        outbox.clear()
        for loop, items in by_loop.items():
            try:
                loop.call_soon_threadsafe(_deliver, items)
            except RuntimeError:
                log.debug("event loop closed; %d events dropped", len(items))


def _deliver(items: list[tuple[_Stream, Event | Failed]]) -> None:
    for stream, event in items:
        if not stream.closed:
            stream.queue.put_nowait(event)
