"""Draws the engine benchmark (engine_bench.py's JSON) as a PNG for docs/benchmarks.md.

    python bench/plot.py RESULT.json OUT.png "title"
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main() -> None:
    data = json.loads(Path(sys.argv[1]).read_text())
    rows = data["results"]
    streams = [r["streams"] for r in rows]
    fig, (agg, ttft) = plt.subplots(1, 2, figsize=(10, 4))
    for side, label in (("ours", "ollama-py engine"), ("llama_server", "llama-server")):
        agg.plot(streams, [r[side]["aggregate_tps"] for r in rows], marker="o", label=label)
        ttft.plot(streams, [r[side]["ttft_ms_median"] for r in rows], marker="o", label=label)
    agg.set(xlabel="concurrent streams", ylabel="aggregate tokens/s", xticks=streams)
    ttft.set(xlabel="concurrent streams", ylabel="median time to first token (ms)", xticks=streams)
    for ax in (agg, ttft):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(sys.argv[3])
    fig.tight_layout()
    fig.savefig(sys.argv[2], dpi=100)


if __name__ == "__main__":
    main()
