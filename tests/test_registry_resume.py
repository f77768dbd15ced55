"""Interrupted and cancelled pulls resume with only the missing bytes; two pulls of one blob share a download.

A counting proxy between us and Debian's docker-registry cuts or slows the
large blob's ranges and counts every blob byte it passes, so the tests see
what went over the wire, as a user's bandwidth meter would.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from ollama_py.settings import Settings
from ollama_py.store import names, registry, transfer
from ollama_py.store.create import ProgressUpdate
from ollama_py.store.manifests import Store
from ollama_py.store.registry import Cancelled, RegistryError
from tests.test_registry import empty, model_digest, push_default, source, wait_for  # noqa: F401 (fixtures)
from tests.test_registry_harness import Proxy, RegistryProcess, running_registry

REPO_ROOT = Path(__file__).resolve().parent.parent


def bytes_in_place(partial: Path, blob: Path) -> int:
    """How many bytes of the partial file already equal the finished blob, counted in 1 MiB blocks."""
    same = 0
    with partial.open("rb") as a, blob.open("rb") as b:
        while block := b.read(1 << 20):
            same += len(block) if a.read(len(block)) == block else 0
    return same


@pytest.fixture
def pushed(tmp_path: Path, source: tuple[Store, Settings]) -> Iterator[tuple[RegistryProcess, names.ModelName, str]]:
    """A registry holding smollm2:135m; the name it was pushed as and its model blob's digest."""
    with running_registry(tmp_path / "registry") as reg:
        name = push_default(source, reg.host)
        yield reg, name, model_digest(source[0], name)


def resume_through_counting_proxy(reg: RegistryProcess, local: Store, s: Settings, digest: str,
                                  source_store: Store) -> None:
    """Pulls again through an honest proxy: only the bytes not yet in place may cross it."""
    partial = transfer.partial_path(local.blobs, digest)
    original = source_store.blobs.path(digest)
    size = original.stat().st_size
    kept = bytes_in_place(partial, original)
    assert 0 < kept < size
    proxy = Proxy(reg.host)
    try:
        name = names.parse(f"{proxy.host}/library/smollm2:135m")
        updates: list[ProgressUpdate] = []
        registry.pull(local, name, settings=s, insecure=True, progress=updates.append)
    finally:
        proxy.close()
    assert [u.completed for u in updates if u.digest == digest][:2] == [0, kept]
    assert proxy.blob_bytes[digest] <= size - kept + 1  # the remainder, and a one-byte range probe
    assert local.blobs.path(digest).read_bytes() == original.read_bytes()
    assert not partial.exists()


def test_pull_cut_off_midway_resumes_with_the_remainder(pushed: tuple[RegistryProcess, names.ModelName, str],
                                                        source: tuple[Store, Settings],
                                                        empty: tuple[Store, Settings]) -> None:
    reg, _, digest = pushed
    local, s = empty
    cutting = Proxy(reg.host, fail_from=3 * transfer.CHUNK)
    try:
        with pytest.raises(RegistryError) as err:
            registry.pull(local, names.parse(f"{cutting.host}/library/smollm2:135m"), settings=s, insecure=True)
    finally:
        cutting.close()
    assert "download from" in str(err.value)
    assert local.models() == [] and list(local.blobs.digests()) == []
    resume_through_counting_proxy(reg, local, s, digest, source[0])


def test_cancelled_pull_keeps_its_partial_file_and_resumes(pushed: tuple[RegistryProcess, names.ModelName, str],
                                                           source: tuple[Store, Settings],
                                                           empty: tuple[Store, Settings]) -> None:
    reg, _, digest = pushed
    local, s = empty
    cancel = threading.Event()

    def watch(update: ProgressUpdate) -> None:
        if update.digest == digest and update.completed >= 2 * transfer.CHUNK:
            cancel.set()  # the user presses Ctrl-C once a good part has arrived

    slow = Proxy(reg.host, slow_from=3 * transfer.CHUNK)
    try:
        with pytest.raises(Cancelled) as err:
            registry.pull(local, names.parse(f"{slow.host}/library/smollm2:135m"), settings=s, insecure=True,
                          progress=watch, cancel=cancel)
    finally:
        slow.close()
    assert err.value.status == 499
    assert local.models() == []
    resume_through_counting_proxy(reg, local, s, digest, source[0])


def _children(pid: int) -> list[int]:
    return [int(c) for task in Path(f"/proc/{pid}/task").iterdir()
            for c in (task / "children").read_text().split()]


def _gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


def test_killed_puller_takes_its_download_along_and_the_next_pull_resumes(
        pushed: tuple[RegistryProcess, names.ModelName, str], source: tuple[Store, Settings],
        empty: tuple[Store, Settings]) -> None:
    reg, _, digest = pushed
    local, s = empty
    puller = textwrap.dedent("""
        import sys
        from pathlib import Path
        from ollama_py.store import names, registry
        from ollama_py.store.manifests import Store
        from tests.test_registry import isolated_settings
        s = isolated_settings(Path(sys.argv[1]))
        registry.pull(Store.from_settings(s), names.parse(sys.argv[2]), settings=s, insecure=True,
                      progress=lambda u: print(u.digest or "-", u.completed, flush=True))
    """)
    slow = Proxy(reg.host, slow_from=3 * transfer.CHUNK)
    process = subprocess.Popen([sys.executable, "-c", puller, str(s.models), f"{slow.host}/library/smollm2:135m"],
                               cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        for line in process.stdout:
            got, completed = line.split()
            if got == digest and int(completed) >= 2 * transfer.CHUNK:
                break
        downloaders = _children(process.pid)
        assert downloaders  # the hf_transfer child, mid-download
        process.kill()  # as `kill -9` or a crash would
        process.wait()
        wait_for(lambda: all(_gone(pid) for pid in downloaders))
    finally:
        slow.close()
    assert local.models() == []
    resume_through_counting_proxy(reg, local, s, digest, source[0])


def test_two_pulls_of_one_blob_share_one_download(pushed: tuple[RegistryProcess, names.ModelName, str],
                                                  source: tuple[Store, Settings],
                                                  empty: tuple[Store, Settings]) -> None:
    reg, _, digest = pushed
    local, s = empty
    size = source[0].blobs.size(digest)
    proxy = Proxy(reg.host, slow_from=0, delay=0.004)
    seen: dict[int, list[int]] = {0: [], 1: []}
    errors: list[BaseException] = []
    started = threading.Barrier(2)

    def pull(i: int) -> None:
        try:
            started.wait()
            registry.pull(local, names.parse(f"{proxy.host}/library/smollm2:135m"), settings=s, insecure=True,
                          progress=lambda u: seen[i].append(u.completed) if u.digest == digest else None)
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=pull, args=(i,)) for i in range(2)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        proxy.close()
    assert errors == []
    assert proxy.blob_bytes[digest] <= size + 2  # once, plus the range probes
    assert all(completed[-1] == size for completed in seen.values())
    assert local.blobs.path(digest).read_bytes() == source[0].blobs.path(digest).read_bytes()
