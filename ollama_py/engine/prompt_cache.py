"""Saved sequence states beyond the slots: host RAM first, then an optional directory.

A slot remembers only its own last sequence. Before a slot is given to a
prompt that does not extend what it holds, the runner saves that sequence's
KV cells here; a later prompt sharing a longer prefix with a saved state than
with any free slot gets it restored and prefills only the rest (llama-server's
`--cache-ram` does the same). The disk tier keeps each finished request's
state in files, so a returning conversation is warm after a restart.

A file is trusted only after checking it all: its magic, the key it was
written under (the model's digest and the options that shape the state's
bytes), the hash of its token list and the checksum of its payload. Anything
else is ignored with a warning and removed; it is our cache, never input.

The RAM tier belongs to the runner thread. The disk tier's table is shared
with its one I/O thread, under a lock that guards only the table.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import logging
import os
import queue
import re
import struct
import threading
from array import array
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

log = logging.getLogger(__name__)

State = ctypes.Array[ctypes.c_uint8] | bytearray

MIN_TOKENS = 16  # a shorter state is cheaper to prefill again than to keep and look up
_AUTO_RAM_CAP = 8192 << 20  # llama-server's default --cache-ram
_MAGIC = b"OPYSEQ\x00\x01"
_LENGTH = struct.Struct("<I")
_BLOB_NAME = re.compile(r"^sha256-([0-9a-f]{64})$")
_CHUNK = 1 << 20
_MAX_PENDING_WRITES = 4  # states copied for the disk and not yet written; more are dropped, not queued


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading tokens two sequences share; slices compare in C, so this is a binary search."""
    if not isinstance(a, tuple):
        a = tuple(a)
    if not isinstance(b, tuple):
        b = tuple(b)
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    lo, hi = 0, n - 1  # a[:lo] matches; a[:hi + 1] does not
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


def auto_ram_bytes() -> int:
    """A quarter of the memory available now, at most llama-server's default of 8 GiB."""
    available = 0
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    available = int(line.split()[1]) * 1024
                    break
    except OSError:
        pass
    if not available:
        try:
            available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError):
            available = 0
    return min(_AUTO_RAM_CAP, available // 4)


def model_digest(path: Path) -> str:
    """The model's sha256: the store names its blobs by it; any other file is hashed."""
    match = _BLOB_NAME.match(path.name)
    if match:
        return match.group(1)
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


@dataclass(eq=False)
class SavedState:
    """One sequence's KV cells and the tokens they hold, position i holding tokens[i]."""

    tokens: tuple[int, ...]
    data: State

    @property
    def size(self) -> int:
        return len(self.data)


class RamCache:
    """Saved states in host RAM up to a byte budget, the least recently used evicted first."""

    def __init__(self, limit_bytes: int) -> None:
        self.limit = limit_bytes
        self.bytes = 0
        self._entries: OrderedDict[int, SavedState] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def longest(self, prompt: Sequence[int]) -> tuple[SavedState | None, int]:
        """The state sharing the longest prefix with `prompt`, and that length (0: none)."""
        best: SavedState | None = None
        best_len = 0
        for state in self._entries.values():
            shared = common_prefix(state.tokens, prompt)
            if shared > best_len:
                best, best_len = state, shared
        return best, best_len

    def covers(self, tokens: Sequence[int]) -> bool:
        """Whether a saved state already holds all of `tokens` (restoring it and trimming gives them back)."""
        return any(len(s.tokens) >= len(tokens) and common_prefix(s.tokens, tokens) == len(tokens)
                   for s in self._entries.values())

    def add(self, state: SavedState) -> bool:
        """Keeps the state (dropping those it extends, then the least recently used); False if it cannot fit."""
        if state.size > self.limit:
            return False
        for key, old in list(self._entries.items()):
            if len(old.tokens) <= len(state.tokens) and common_prefix(old.tokens, state.tokens) == len(old.tokens):
                self._drop(key)
        while self._entries and self.bytes + state.size > self.limit:
            self._drop(next(iter(self._entries)))
        self._entries[id(state)] = state
        self.bytes += state.size
        return True

    def touch(self, state: SavedState) -> None:
        if id(state) in self._entries:
            self._entries.move_to_end(id(state))

    def _drop(self, key: int) -> None:
        self.bytes -= self._entries.pop(key).size


@dataclass(frozen=True)
class _FileEntry:
    path: Path
    tokens: tuple[int, ...]
    size: int


class DiskCache:
    """Saved states as files in one directory, bounded in bytes, read and written on a thread of its own."""

    def __init__(self, directory: Path, key: dict[str, object], limit_bytes: int) -> None:
        self.directory = directory
        self.limit = limit_bytes
        self._key = json.dumps(key, sort_keys=True, separators=(",", ":"))
        self._prefix = hashlib.sha256(self._key.encode()).hexdigest()[:16]
        self._lock = threading.Lock()  # guards _files only
        self._files: dict[Path, _FileEntry] = {}
        self._pending = 0
        self._jobs: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        directory.mkdir(parents=True, exist_ok=True)
        self._scan()
        self._thread = threading.Thread(target=self._work, name="prompt cache disk", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Finishes the writes already asked for, then stops the thread."""
        if self._thread.is_alive():
            self._jobs.put(None)
            self._thread.join()

    def longest(self, prompt: Sequence[int]) -> int:
        """How many leading tokens of `prompt` the best file holds."""
        with self._lock:
            entries = list(self._files.values())
        return max((common_prefix(e.tokens, prompt) for e in entries), default=0)

    def load(self, prompt: Sequence[int], done: Callable[[SavedState | None], None]) -> None:
        """Reads the file sharing the longest prefix with `prompt` on the I/O thread; `done` gets it or None."""
        def job() -> None:
            state: SavedState | None = None
            try:
                state = self._load(prompt)
            except Exception:
                log.exception("prompt cache: reading a saved state failed")
            done(state)  # always: the request waits for this answer

        self._jobs.put(job)

    def busy(self) -> bool:
        """Whether writes are backed up: a caller then skips copying a state that would be dropped."""
        with self._lock:
            return self._pending >= _MAX_PENDING_WRITES

    def save(self, state: SavedState) -> None:
        """Writes the state on the I/O thread, replacing files it extends; a file for the same tokens stays.

        While the disk lags behind, the state is dropped: a cache may forget, memory must stay bounded.
        """
        with self._lock:
            if self._pending >= _MAX_PENDING_WRITES:
                return
            self._pending += 1

        def job() -> None:
            try:
                self._save(state)
            finally:
                with self._lock:
                    self._pending -= 1

        self._jobs.put(job)

    # ---- the I/O thread ---------------------------------------------------------------

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            try:
                job()
            except Exception:  # a full disk or a vanished directory costs the cache, never the runner
                log.exception("prompt cache: disk job failed")

    def _name(self, tokens: Sequence[int]) -> Path:
        return self.directory / f"{self._prefix}-{hashlib.sha256(_token_bytes(tokens)).hexdigest()[:32]}.state"

    def _save(self, state: SavedState) -> None:
        path = self._name(state.tokens)
        with self._lock:
            if path in self._files:
                return
            extended = [e for e in self._files.values() if len(e.tokens) <= len(state.tokens)
                        and common_prefix(e.tokens, state.tokens) == len(e.tokens)]
        tokens = _token_bytes(state.tokens)
        payload = memoryview(state.data).cast("B")
        header = json.dumps({
            "key": json.loads(self._key), "n_tokens": len(state.tokens),
            "tokens_sha256": hashlib.sha256(tokens).hexdigest(), "payload_size": len(payload),
            "payload_sha256": hashlib.sha256(payload).hexdigest()}, sort_keys=True).encode()
        temp = path.with_suffix(f".tmp{os.getpid()}")
        with open(temp, "wb") as f:
            f.write(_MAGIC + _LENGTH.pack(len(header)) + header)
            f.write(tokens)
            f.write(payload)
        os.replace(temp, path)
        size = path.stat().st_size
        with self._lock:
            self._files[path] = _FileEntry(path, state.tokens, size)
        for entry in extended:
            self._remove(entry.path)
        self._evict()

    def _load(self, prompt: Sequence[int]) -> SavedState | None:
        while True:
            with self._lock:
                scored = [(common_prefix(e.tokens, prompt), e) for e in self._files.values()]
            shared, entry = max(scored, key=lambda s: s[0], default=(0, None))
            if entry is None or shared == 0:
                return None
            state = self._read(entry.path, with_payload=True)
            if state is not None:
                os.utime(entry.path)  # the file's age is its place in the eviction order
                return state
            self._remove(entry.path)

    def _scan(self) -> None:
        for path in sorted(self.directory.glob(f"{self._prefix}-*.state")):
            state = self._read(path, with_payload=False)
            if state is None:
                self._remove(path)
                continue
            self._files[path] = _FileEntry(path, state.tokens, path.stat().st_size)
        for stale in self.directory.glob(f"{self._prefix}-*.tmp*"):
            stale.unlink(missing_ok=True)  # a write cut short by a crash
        log.info("prompt cache: %d saved states in %s", len(self._files), self.directory)

    def _read(self, path: Path, *, with_payload: bool) -> SavedState | None:
        """The file's state if every check passes; None, with a warning saying which failed, if not."""
        try:
            with open(path, "rb") as f:
                problem, state = self._check(f, with_payload)
        except OSError as exc:
            problem, state = f"unreadable ({exc.strerror})", None
        if problem:
            log.warning("prompt cache: ignoring %s: %s", path.name, problem)
            return None
        return state

    def _check(self, f: BinaryIO, with_payload: bool) -> tuple[str, SavedState | None]:
        read = f.read
        if read(len(_MAGIC)) != _MAGIC:
            return "not a saved state (bad magic)", None
        raw_length = read(_LENGTH.size)
        if len(raw_length) != _LENGTH.size or (length := _LENGTH.unpack(raw_length)[0]) > 1 << 16:
            return "header length out of range", None
        try:
            header = json.loads(read(length))
            key, n_tokens = header["key"], int(header["n_tokens"])
            tokens_sha, payload_size, payload_sha = (str(header["tokens_sha256"]), int(header["payload_size"]),
                                                     str(header["payload_sha256"]))
        except (ValueError, KeyError, TypeError):
            return "header is not valid", None
        if json.dumps(key, sort_keys=True, separators=(",", ":")) != self._key:
            return "written for another model or other options", None
        if not 0 < n_tokens <= 1 << 24 or not 0 < payload_size <= 1 << 40:
            return "sizes out of range", None
        raw_tokens = read(4 * n_tokens)
        if len(raw_tokens) != 4 * n_tokens or hashlib.sha256(raw_tokens).hexdigest() != tokens_sha:
            return "token list does not match its hash", None
        tokens = array("i")
        tokens.frombytes(raw_tokens)
        if not with_payload:
            return "", SavedState(tuple(tokens), bytearray())
        payload = bytearray(payload_size)
        view, got, digest = memoryview(payload), 0, hashlib.sha256()
        while got < payload_size:
            n = f.readinto(view[got:got + _CHUNK])  # type: ignore[attr-defined]
            if not n:
                return "payload is truncated", None
            digest.update(view[got:got + n])
            got += n
        if read(1):
            return "trailing bytes after the payload", None
        if digest.hexdigest() != payload_sha:
            return "payload does not match its checksum", None
        return "", SavedState(tuple(tokens), payload)

    def _remove(self, path: Path) -> None:
        with self._lock:
            self._files.pop(path, None)
        path.unlink(missing_ok=True)

    def _evict(self) -> None:
        """Oldest used first, until the directory's files for this key fit the budget."""
        with self._lock:
            entries = list(self._files.values())
        total = sum(e.size for e in entries)
        if total <= self.limit:
            return
        by_age = sorted(entries, key=lambda e: e.path.stat().st_mtime if e.path.exists() else 0.0)
        for entry in by_age:
            if total <= self.limit:
                break
            self._remove(entry.path)
            total -= entry.size


def _token_bytes(tokens: Sequence[int]) -> bytes:
    return array("i", tokens).tobytes()
