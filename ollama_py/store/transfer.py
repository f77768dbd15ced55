"""Blobs over HTTP into the store: parallel, resumable, verified, and shared between pulls.

Registry pulls and Hugging Face pulls both end here. Three facts about
hf_transfer shape this module:

- It holds the GIL for the whole download, so in the server's process it would
  freeze the event loop. It runs in a child process instead
  (`python -m ollama_py.store.transfer`), and a cancelled pull kills the child,
  which works even while a connection is stalled.
- It writes chunks in whatever order they arrive, cannot resume, and deletes
  its file when it fails. So the partial file `blobs/sha256-<hex>-partial` is
  created sparse at its full size and handed to hf_transfer through a symlink
  (its clean-up removes only the link), and what has arrived is read back from
  the file itself: the data regions the filesystem reports (SEEK_DATA and
  SEEK_HOLE). A later pull fetches only the holes, with range requests of our
  own. Filesystems that report no holes cannot resume; the sha256 check below
  catches a partial file that only looks complete.
- It learns the size from the answer to a one-byte range request, so a server
  without range support is downloaded in one stream by our own code.

Nothing enters the store unverified: `verify` hashes the complete partial file
against its digest, `install` renames it to its blob name. Two pulls of one
blob in this process share one download; pulls in other processes wait on a
lock on the partial file and then find the blob there.
"""

from __future__ import annotations

import errno
import fcntl
import http.client
import json
import logging
import os
import select
import ssl
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from email.message import Message
from pathlib import Path
from typing import NamedTuple

import msgspec

from ollama_py.store.blobs import (
    TEMP_PREFIX,
    BlobStore,
    check_digest,
    disk_full,
    fsync_dir,
)

log = logging.getLogger(__name__)

USER_AGENT = "ollama-py/0.1"
TIMEOUT = 60.0  # seconds a connection may stay silent before it counts as dead
MAX_REDIRECTS = 10
SMALL_BLOB = 16 << 20  # fetched in this process with one request; a child costs more than it saves
STREAMS = 16  # parallel connections for a large blob, as Ollama uses
CHUNK = 16 << 20  # hf_transfer keeps each chunk in memory: STREAMS * CHUNK bytes at most
PIECE = 64 << 20  # largest range one resume request asks for
UNIT = 1 << 20  # resume granularity: a data region counts only in whole units (see _holes)
RETRIES = 3  # attempts per range before the download fails
POLL = 0.2  # seconds between checks for cancellation while waiting
DISK_FULL_EXIT = 28  # the child's exit status when the disk is full (ENOSPC's number, for a reader of `ps`)

Completed = Callable[[int], None]  # bytes of the blob present so far


class RegistryError(Exception):
    """A pull or push that failed; `status` is the HTTP status the API answers with."""

    def __init__(self, message: str, status: int = 502) -> None:
        super().__init__(message)
        self.status = status


class Cancelled(RegistryError):
    """The pull was cancelled (client gone, Ctrl-C); partial files are kept for the next pull."""

    def __init__(self, message: str = "pull cancelled") -> None:
        super().__init__(message, 499)


# -- HTTP ----------------------------------------------------------------


class Response(NamedTuple):
    status: int
    headers: Message
    url: str  # the URL that gave this answer, after redirects
    body: bytes
    complete: bool  # False when the body was longer than the caller's limit and was cut


def shown(url: str) -> str:
    """A URL for messages and logs: no query (pre-signed URLs carry credentials there), no user info."""
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}{f':{parts.port}' if parts.port else ''}{parts.path}"


def origin(url: str) -> tuple[str, str, int]:
    """Scheme, host and port: where credentials may go."""
    parts = urllib.parse.urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return parts.scheme, (parts.hostname or "").lower(), port


def _connect(url: str) -> tuple[http.client.HTTPConnection, str]:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise RegistryError(f"cannot fetch {shown(url)}: not an http or https URL")
    _, host, port = origin(url)
    if parts.scheme == "https":
        conn: http.client.HTTPConnection = http.client.HTTPSConnection(
            host, port, timeout=TIMEOUT, context=ssl.create_default_context(), blocksize=UNIT)
    else:
        conn = http.client.HTTPConnection(host, port, timeout=TIMEOUT, blocksize=UNIT)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return conn, target


def request(method: str, url: str, *, headers: Mapping[str, str] | None = None,
            body: bytes | Iterable[bytes] | None = None, limit: int = 1 << 20) -> Response:
    """One HTTP exchange, no redirects followed; at most `limit` bytes of the answer are read."""
    conn, target = _connect(url)
    try:
        conn.request(method, target, body=body, headers={"User-Agent": USER_AGENT, **(headers or {})})
        resp = conn.getresponse()
        data = b"" if method == "HEAD" else resp.read(limit + 1)
        return Response(resp.status, resp.headers, url, data[:limit], len(data) <= limit)
    except (OSError, http.client.HTTPException) as exc:
        raise RegistryError(f"{method} {shown(url)}: {exc or type(exc).__name__}") from None
    finally:
        conn.close()


def follow(method: str, url: str, *, headers: Mapping[str, str], limit: int = 1 << 20,
           private: Iterable[str] = ("Authorization",)) -> Response:
    """A GET or HEAD that follows redirects; `private` headers go only to the origin they were meant for.

    A registry sends blobs to a CDN with a pre-signed URL, and the Hub sends
    files to its own: our credentials must not follow there.
    """
    first = origin(url)
    for _ in range(MAX_REDIRECTS + 1):
        sent = {k: v for k, v in headers.items() if origin(url) == first or k not in set(private)}
        resp = request(method, url, headers=sent, limit=limit)
        location = resp.headers.get("Location")
        if resp.status not in (301, 302, 303, 307, 308) or not location:
            return resp
        url = urllib.parse.urljoin(url, location)
        if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
            raise RegistryError(f"{shown(resp.url)} redirects to a non-HTTP URL")
    raise RegistryError(f"{shown(url)}: more than {MAX_REDIRECTS} redirects")


@dataclass(frozen=True)
class Source:
    """Where a blob's bytes are, after redirects; the headers may hold credentials, so they stay out of repr."""

    url: str
    ranges: bool  # the server answers range requests
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)


def probe(url: str, headers: Mapping[str, str], size: int) -> Source:
    """Resolves redirects with a one-byte range request and checks that the server's size is the expected one.

    The size comes from a manifest or the Hub's listing; a server that
    disagrees is refused before a byte is written.
    """
    resp = follow("GET", url, headers={**headers, "Range": "bytes=0-0"}, limit=1)
    if resp.status == 206:
        total = resp.headers.get("Content-Range", "").rpartition("/")[2]
        ranges = True
    elif resp.status == 200:
        total = resp.headers.get("Content-Length", "")
        ranges = False
    else:
        raise RegistryError(f"GET {shown(url)}: {resp.status} {error_text(resp)}", upstream_status(resp.status))
    if not total.isdigit() or int(total) != size:
        raise RegistryError(f"{shown(url)} has {total or 'an unknown number of'} bytes, but {size} were announced")
    keep = origin(resp.url) == origin(url)
    return Source(resp.url, ranges, {k: v for k, v in headers.items() if keep or k != "Authorization"})


def error_text(resp: Response) -> str:
    """The registry's own words for an error ({"errors": [{"message": ...}]}), else the start of the body."""
    try:
        errors = json.loads(resp.body).get("errors") or []
        return "; ".join(str(e.get("message", e.get("code", ""))) for e in errors) or resp.body[:200].decode()
    except (ValueError, AttributeError, UnicodeDecodeError):
        return resp.body[:200].decode("utf-8", errors="replace")


def upstream_status(status: int) -> int:
    """The status the API answers with for a registry's status: auth and not-found pass through."""
    return status if status in (401, 403, 404, 429) else 502


# -- partial files ----------------------------------------------------------


def partial_path(blobs: BlobStore, digest: str) -> Path:
    """Ollama's name for a download in progress: `blobs/sha256-<hex>-partial`; never one that leads out of
    the store."""
    blob = blobs.path(digest)
    return blobs.inside(blob.with_name(blob.name + "-partial"))


def _holes(fd: int, size: int) -> list[tuple[int, int]]:
    """The byte ranges of a partial file that have not arrived yet.

    Data regions are whole filesystem blocks, and a write cut short by a kill
    ends on a page boundary, so only whole UNITs of data count as arrived
    (the end of the file excepted); what is discarded is fetched again.
    """
    have: list[tuple[int, int]] = []
    pos = 0
    while pos < size:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:
                break
            raise
        end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
        first, last = -(-start // UNIT) * UNIT, end if end == size else end // UNIT * UNIT
        if first < last:
            have.append((first, last))
        pos = end
    holes, pos = [], 0
    for first, last in have:
        if first > pos:
            holes.append((pos, first))
        pos = last
    if pos < size:
        holes.append((pos, size))
    return holes


def _reports_holes(fd: int) -> bool:
    """Whether this filesystem tells holes from data (a file that was just truncated is all hole)."""
    try:
        os.lseek(fd, 0, os.SEEK_DATA)
    except OSError as exc:
        return exc.errno == errno.ENXIO
    return False


@contextmanager
def _locked(path: Path, stopped: Callable[[], bool]) -> Iterator[int]:
    """The partial file, open and exclusively locked against other processes downloading it.

    A holder that finished renamed the file away, so after waiting the lock
    must be on the file the path names now.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if stopped():
                        raise Cancelled() from None
                    time.sleep(POLL)
            try:
                current = os.stat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                current = False
            if current:
                yield fd
                return
        finally:
            os.close(fd)


# -- the download itself: shared by this process and the child --------------


class Job(msgspec.Struct, kw_only=True):
    """What the child process downloads; sent on its stdin so credentials never show in `ps`."""

    url: str
    headers: dict[str, str]
    path: str
    size: int
    holes: list[tuple[int, int]]
    whole: bool  # hf_transfer fetches the whole file (the partial file is all hole)
    parent: int  # the process waiting for it


def _pieces(holes: list[tuple[int, int]], streams: int) -> list[tuple[int, int]]:
    """Holes cut into ranges small enough that `streams` connections share the work."""
    missing = sum(last - first for first, last in holes)
    step = min(PIECE, max(UNIT, -(-missing // streams // UNIT) * UNIT))
    return [(pos, min(pos + step, last)) for first, last in holes for pos in range(first, last, step)]


def download_ranges(source: Source, fd: int, holes: list[tuple[int, int]], size: int, *,
                    streams: int, report: Completed) -> None:
    """Fills the holes with range requests (one plain GET where the server has no ranges), `streams` at a time.

    `report` gets the bytes written so far by this call.
    """
    lock = threading.Lock()
    written = 0

    def wrote(n: int) -> None:
        nonlocal written
        with lock:
            written += n
            report(written)

    def fetch(first: int, last: int) -> None:
        pos = first

        def advance(n: int) -> None:
            nonlocal pos
            pos += n
            wrote(n)

        for attempt in range(RETRIES):
            try:
                _fetch_range(source, fd, pos, last, size, advance)
                return
            except (OSError, http.client.HTTPException, RegistryError) as exc:
                if attempt == RETRIES - 1 or disk_full(exc) or isinstance(exc, RegistryError) and exc.status != 502:
                    raise
                log.info("range %d-%d of %s failed (%s); retrying", pos, last, shown(source.url), exc)
                time.sleep(2 ** attempt)

    if not source.ranges:
        os.ftruncate(fd, 0)
        _fetch_range(source, fd, 0, size, size, wrote)
        return
    with ThreadPoolExecutor(max_workers=streams) as pool:
        for future in [pool.submit(fetch, first, last) for first, last in _pieces(holes, streams)]:
            future.result()


def _fetch_range(source: Source, fd: int, first: int, last: int, size: int, wrote: Completed) -> None:
    """Writes bytes first..last-1 at their offsets, telling `wrote` each block so a retry goes on from there."""
    conn, target = _connect(source.url)
    headers = {"User-Agent": USER_AGENT, **source.headers}
    if source.ranges:
        headers["Range"] = f"bytes={first}-{last - 1}"
    try:
        conn.request("GET", target, headers=headers)
        resp = conn.getresponse()
        expected = f"bytes {first}-{last - 1}/{size}"
        if source.ranges and (resp.status != 206 or resp.headers.get("Content-Range") != expected):
            raise RegistryError(f"GET {shown(source.url)} range {first}-{last - 1}: answered {resp.status} "
                                f"{resp.headers.get('Content-Range', '')}")
        if not source.ranges and resp.status != 200:
            raise RegistryError(f"GET {shown(source.url)}: answered {resp.status}")
        pos = first
        while pos < last:
            block = resp.read(min(UNIT, last - pos))
            if not block:
                raise http.client.IncompleteRead(b"", last - pos)
            os.pwrite(fd, block, pos)
            pos += len(block)
            wrote(len(block))
        if resp.read(1):
            raise RegistryError(f"GET {shown(source.url)}: more than {size} bytes")
    finally:
        conn.close()


def _child_main() -> None:
    """The child process: one Job from stdin, progress lines (bytes written) on stdout, errors on stderr."""
    job = msgspec.json.decode(sys.stdin.buffer.read(), type=Job)
    _die_with_parent(job.parent)

    def report(done: int) -> None:
        sys.stdout.write(f"{done}\n")
        sys.stdout.flush()

    if job.whole:
        import hf_transfer  # type: ignore[import-untyped]

        chunks = 0

        def chunk_done(_: int) -> None:
            nonlocal chunks
            chunks += 1
            report(min(chunks * CHUNK, job.size))

        # hf_transfer deletes its file on failure: give it a link to the partial file, which then survives.
        link = Path(job.path).with_name(f"{TEMP_PREFIX}link-{os.getpid()}")
        link.unlink(missing_ok=True)
        link.symlink_to(Path(job.path).name)
        try:
            hf_transfer.download(job.url, str(link), STREAMS, CHUNK, parallel_failures=STREAMS,
                                 max_retries=RETRIES, headers=job.headers, callback=chunk_done)
        finally:
            link.unlink(missing_ok=True)
    else:
        fd = os.open(job.path, os.O_RDWR)
        try:
            download_ranges(Source(job.url, True, job.headers), fd, job.holes, job.size,
                            streams=STREAMS, report=report)
        finally:
            os.close(fd)


def _die_with_parent(parent: int) -> None:
    """A download nobody waits for is wasted: ask Linux to kill this process when its parent dies."""
    import ctypes

    pr_set_pdeathsig = 1
    with suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, 9)
    if os.getppid() != parent:  # it died before the request took effect
        sys.exit(1)


def _run_child(job: Job, base: int, report: Completed, stopped: Callable[[], bool]) -> None:
    """Runs the child and relays its progress; kills it when every pull waiting for it is cancelled."""
    child = subprocess.Popen([sys.executable, "-m", "ollama_py.store.transfer"], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert child.stdin is not None and child.stdout is not None and child.stderr is not None
    try:
        child.stdin.write(msgspec.json.encode(job))
        child.stdin.close()
        pending = b""
        while True:
            ready, _, _ = select.select([child.stdout], [], [], POLL)
            if stopped():
                raise Cancelled()
            if not ready:
                continue
            data = os.read(child.stdout.fileno(), 65536)
            if not data:
                break
            pending += data
            *lines, pending = pending.split(b"\n")
            if lines:
                report(base + int(lines[-1]))
        if child.wait() == DISK_FULL_EXIT:
            raise RegistryError(f"not enough disk space for {job.path}", 507)
        if child.returncode != 0:
            said = child.stderr.read().decode("utf-8", errors="replace").strip().splitlines()
            raise RegistryError(f"download from {shown(job.url)} failed: {said[-1] if said else child.returncode}")
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        child.stdout.close()
        child.stderr.close()


# -- one download, shared by every pull in this process that needs the blob --


class _Transfer:
    """One blob download in a worker thread; pulls join it, watch its progress and may leave (cancel).

    The download stops only when every pull that joined has been cancelled.
    """

    def __init__(self, blobs: BlobStore, digest: str, size: int, locate: Callable[[], Source]) -> None:
        self.blobs = blobs
        self.digest = digest
        self.size = size
        self.locate = locate
        self.path = partial_path(blobs, digest)
        self.changed = threading.Condition()
        self.completed = -1  # unknown until the partial file has been looked at
        self.finished = False
        self.error: RegistryError | None = None
        self.cancels: list[threading.Event] = []
        self.abandoned = False

    def stopped(self) -> bool:
        return _transfers.abandon_if_cancelled(self)

    def progress(self, completed: int) -> None:
        with self.changed:
            self.completed = completed
            self.changed.notify_all()

    def run(self) -> None:
        try:
            self._download()
        except RegistryError as exc:
            self.error = exc
        except OSError as exc:
            self.error = RegistryError(f"downloading {self.digest}: {exc}", 507 if disk_full(exc) else 500)
        finally:
            _transfers.finish(self)
            with self.changed:
                self.finished = True
                self.changed.notify_all()

    def _download(self) -> None:
        with _locked(self.path, self.stopped) as fd:
            if self.blobs.exists(self.digest):
                self.progress(self.size)
                return
            resumable = True
            if os.fstat(fd).st_size != self.size:
                os.ftruncate(fd, 0)
                os.ftruncate(fd, self.size)
                resumable = _reports_holes(fd)
            holes = _holes(fd, self.size) if resumable else [(0, self.size)]
            base = self.size - sum(last - first for first, last in holes)
            self.progress(base)
            if not holes:
                return
            if base:
                log.info("resuming %s: %d of %d bytes are here", self.digest, base, self.size)
            try:
                source = self.locate()
                if self.size <= SMALL_BLOB or not source.ranges:
                    download_ranges(source, fd, holes, self.size, streams=1,
                                    report=lambda n: self.progress(base + n))
                else:
                    job = Job(url=source.url, headers=dict(source.headers), path=str(self.path), size=self.size,
                              holes=holes, whole=holes == [(0, self.size)], parent=os.getpid())
                    _run_child(job, base, self.progress, self.stopped)
                os.fsync(fd)
            except BaseException:
                if not resumable or _holes(fd, self.size) == [(0, self.size)]:
                    self.path.unlink(missing_ok=True)  # nothing in it worth keeping for a resume
                raise
            if os.fstat(fd).st_size != self.size:
                raise RegistryError(f"{self.digest}: the server sent more than {self.size} bytes")

    def wait(self, cancel: threading.Event, progress: Completed | None) -> None:
        shown_completed = -1
        while True:
            with self.changed:
                if not self.finished and self.completed == shown_completed:
                    self.changed.wait(POLL)
                finished, completed, error = self.finished, self.completed, self.error
            if progress is not None and completed != shown_completed and completed >= 0:
                progress(completed)
                shown_completed = completed
            if finished:
                if isinstance(error, Cancelled):
                    raise Cancelled(str(error))
                if error is not None:
                    raise RegistryError(str(error), error.status)
                return
            if cancel.is_set():
                raise Cancelled()


class _Transfers:
    """The downloads running in this process, by partial file; the only owner of that table."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: dict[Path, _Transfer] = {}

    def join(self, blobs: BlobStore, digest: str, size: int, locate: Callable[[], Source],
             cancel: threading.Event) -> _Transfer:
        with self._lock:
            transfer = self._running.get(partial_path(blobs, digest))
            if transfer is None or transfer.size != size:
                transfer = _Transfer(blobs, digest, size, locate)
                self._running[transfer.path] = transfer
                threading.Thread(target=transfer.run, name=f"download {digest[7:19]}", daemon=True).start()
            else:
                log.info("joining the download of %s already running", digest)
            transfer.cancels.append(cancel)
            return transfer

    def abandon_if_cancelled(self, transfer: _Transfer) -> bool:
        """True when every pull waiting for `transfer` was cancelled; later pulls then start a new one."""
        with self._lock:
            if not transfer.abandoned and transfer.cancels and all(c.is_set() for c in transfer.cancels):
                transfer.abandoned = True
                if self._running.get(transfer.path) is transfer:
                    del self._running[transfer.path]
            return transfer.abandoned

    def finish(self, transfer: _Transfer) -> None:
        with self._lock:
            if self._running.get(transfer.path) is transfer:
                del self._running[transfer.path]


_transfers = _Transfers()


def fetch(blobs: BlobStore, digest: str, size: int, locate: Callable[[], Source], *,
          progress: Completed | None = None, cancel: threading.Event | None = None) -> None:
    """Makes `blobs/<digest>-partial` hold all `size` bytes (unverified), unless the blob is already stored.

    `locate` is called only when bytes are missing (it may need a token);
    `progress` gets the bytes present so far. Raises Cancelled when `cancel`
    is set, RegistryError when the download fails; partial files stay.
    """
    check_digest(digest)
    if blobs.exists(digest):
        return
    transfer = _transfers.join(blobs, digest, size, locate, cancel or threading.Event())
    transfer.wait(cancel or threading.Event(), progress)


def verify(blobs: BlobStore, digest: str) -> None:
    """Hashes a fetched partial file; a mismatch deletes it (it must be downloaded again) and raises."""
    expected = check_digest(digest)
    path = partial_path(blobs, digest)
    if blobs.exists(digest):
        return
    try:
        got = blobs.hash_file(path)
    except FileNotFoundError:
        if blobs.exists(digest):
            return  # another pull of the same blob verified and installed it meanwhile
        raise RegistryError(f"{expected}: the downloaded file disappeared before it was verified", 500) from None
    if got != expected:
        path.unlink(missing_ok=True)
        log.warning("%s: the downloaded bytes hash to %s", expected, got)
        raise RegistryError(f"digest mismatch for {expected}: the registry sent other bytes; "
                            "the file was deleted and must be downloaded again")


def install(blobs: BlobStore, digest: str) -> None:
    """Renames a verified partial file to its blob name (hold the store's writing lock).

    That lock is shared by every writer, so two pulls of one blob may both get
    here: the second finds the partial file gone and the blob in place.
    """
    path = partial_path(blobs, digest)
    if blobs.exists(digest):
        path.unlink(missing_ok=True)
        return
    try:
        os.chmod(path, 0o644)
        os.replace(path, blobs.path(digest))
    except FileNotFoundError:
        if blobs.exists(digest):
            return
        raise
    fsync_dir(blobs.root)


if __name__ == "__main__":
    try:
        _child_main()
    except OSError as exc:
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        sys.exit(DISK_FULL_EXIT if disk_full(exc) else 1)
    except Exception as exc:  # noqa: BLE001 - hf_transfer raises plain Exception; the parent reports this line
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        sys.exit(1)
