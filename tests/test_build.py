"""The build: pinned source never committed, and a rebuild reuses the cache."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

import build_backend
from ollama_py.llama.lib import LIB_DIR

ROOT = Path(build_backend.__file__).parent


def test_only_the_pin_is_tracked_under_vendor() -> None:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    tracked = subprocess.run(["git", "ls-files", "vendor/llama.cpp"], cwd=ROOT, check=True,
                             capture_output=True, text=True).stdout.split()
    assert sorted(tracked) == ["vendor/llama.cpp/.gitignore", "vendor/llama.cpp/PIN"]


def test_installed_libraries_come_from_the_pinned_build() -> None:
    info = json.loads((LIB_DIR / "build.json").read_text())
    assert info["pin"] == build_backend.read_pin()
    assert info["pin"]["sha256"] == "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
    assert "-DGGML_RPC=ON" in info["args"]
    assert (LIB_DIR / "ggml-rpc-server").exists()


def test_second_build_reuses_the_cache(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    def no_compiling(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"the cached build was recompiled: {args}")

    monkeypatch.setattr(build_backend, "run_logged", no_compiling)
    dist = build_backend.build_llama(build_backend.read_pin())
    assert "reusing cached llama.cpp build" in capsys.readouterr().err
    assert (dist / "lib" / "libllama.so.0").read_bytes() == (LIB_DIR / "libllama.so.0").read_bytes()


def test_rpc_server_binary_runs() -> None:
    # The timeout is a guard against a hang on a busy machine, not a speed check.
    result = subprocess.run([str(LIB_DIR / "ggml-rpc-server"), "--help"], capture_output=True, text=True,
                            timeout=300)
    assert "port" in (result.stdout + result.stderr).lower()
