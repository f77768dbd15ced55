"""How fast is a pull? A 1 GB blob from Debian's docker-registry on loopback, beside a single-stream curl.

Starts `docker-registry` with its own storage, pushes a model whose weights
are SIZE MiB of random bytes, then times, REPEAT times each: our pull into an
empty store (hf_transfer's parallel ranges in a child process, then the
sha256 check and the manifest), the download part of that pull alone, and
`curl` fetching the same blob in one stream (with and without a `sha256sum`
after it, since a pull verifies). Writes medians and the ratios as JSON.

    PYTHONPATH=. python bench/pull_bench.py OUT.json [--size-mb 1024] [--repeat 3]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import msgspec

from ollama_py import settings as settings_module
from ollama_py.store import names, registry, transfer
from ollama_py.store.create import ProgressUpdate
from ollama_py.store.manifests import MEDIA_CONFIG, MEDIA_MODEL, Layer, Manifest, ModelConfig, Store
from tests.test_registry_harness import running_registry


def random_store(root: Path, name: names.ModelName, size_mb: int) -> Store:
    """A store holding one model whose weights are `size_mb` MiB of random bytes."""
    store = Store(root)
    data = root / "weights.bin"
    root.mkdir(parents=True)
    with data.open("wb") as f:
        for _ in range(size_mb):
            f.write(os.urandom(1 << 20))
    weights = store.blobs.write_file(data)
    data.unlink()
    config = msgspec.json.encode(ModelConfig(model_format="gguf"))
    store.write(name, Manifest(config=Layer(media_type=MEDIA_CONFIG, digest=store.blobs.write_bytes(config),
                                            size=len(config)),
                               layers=[Layer(media_type=MEDIA_MODEL, digest=weights, size=store.blobs.size(weights))]))
    return store


def timed_pull(root: Path, name: names.ModelName) -> tuple[float, float]:
    """Seconds for a whole pull into an empty store, and for its download part (up to `verifying`)."""
    shutil.rmtree(root, ignore_errors=True)
    s = dataclasses.replace(settings_module.load(), models=root, registry_credentials="")
    marks: dict[str, float] = {}

    def progress(update: ProgressUpdate) -> None:
        marks.setdefault(update.status, time.perf_counter())

    start = time.perf_counter()
    registry.pull(Store(root), name, settings=s, insecure=True, progress=progress)
    return time.perf_counter() - start, marks["verifying sha256 digest"] - start


def timed_curl(url: str, out: Path, *, verify: bool) -> float:
    out.unlink(missing_ok=True)
    start = time.perf_counter()
    subprocess.run(["curl", "-sSf", "-o", str(out), url], check=True)
    if verify:
        subprocess.run(["sha256sum", str(out)], check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--size-mb", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name, running_registry(Path(tmp_name) / "registry") as reg:
        tmp = Path(tmp_name)
        name = names.parse(f"{reg.host}/bench/blob:latest")
        source = random_store(tmp / "source", name, args.size_mb)
        s = dataclasses.replace(settings_module.load(), models=source.root, registry_credentials="")
        start = time.perf_counter()
        registry.push(source, name, settings=s, insecure=True)
        push_s = time.perf_counter() - start
        layer = source.read(name).layer(MEDIA_MODEL)
        assert layer is not None
        url = f"http://{reg.host}/v2/bench/blob/blobs/{layer.digest}"

        pulls = [timed_pull(tmp / "pulled", name) for _ in range(args.repeat)]
        curls = [timed_curl(url, tmp / "curl.bin", verify=False) for _ in range(args.repeat)]
        curls_verified = [timed_curl(url, tmp / "curl.bin", verify=True) for _ in range(args.repeat)]

    pull_s = statistics.median(p for p, _ in pulls)
    download_s = statistics.median(d for _, d in pulls)
    curl_s, curl_verified_s = statistics.median(curls), statistics.median(curls_verified)
    mib = layer.size / (1 << 20)
    result = {
        "blob_mib": mib, "repeat": args.repeat, "cpus": os.cpu_count(), "streams": transfer.STREAMS,
        "chunk_mib": transfer.CHUNK >> 20, "push_s": push_s,
        "pull_s": pull_s, "pull_download_s": download_s, "curl_s": curl_s, "curl_sha256sum_s": curl_verified_s,
        "pull_mib_s": mib / pull_s, "download_mib_s": mib / download_s, "curl_mib_s": mib / curl_s,
        "speedup_download_vs_curl": curl_s / download_s, "speedup_pull_vs_curl_sha256sum": curl_verified_s / pull_s,
        "runs": {"pull": pulls, "curl": curls, "curl_sha256sum": curls_verified},
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in result.items() if k != "runs"}))


if __name__ == "__main__":
    main()
