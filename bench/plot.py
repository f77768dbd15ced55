"""Draws benchmark results as one PNG for docs/benchmarks.md, a row of panels per JSON file.

    python bench/plot.py OUT.png "title" RESULT.json [RESULT.json ...]

Each file is what `http_bench.py --out` wrote (its workload decides the panels: fresh prompts give tokens/s
and TTFT by streams, the chat TTFT p50 by turn, grounded text the decode rate a stream, a restart the
second turn's TTFT and cached share) or what `engine_bench.py` wrote (the older in-process figures). Needs matplotlib (`pip install -e .[bench]`).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.axes import Axes

NAMES = {"candidate": "ollama-py", "candidate-nodraft": "ollama-py, drafting off", "llama-server": "llama-server",
         "llama-server-nospec": "llama-server, no speculation"}


def servers(summary: dict[str, Any]) -> list[str]:
    return [label for label in summary if "/" not in label]


def fresh(data: dict[str, Any], axes: list[Axes]) -> None:
    levels = {int(k): v["summary"] for k, v in data["levels"].items()}
    streams = sorted(levels)
    agg, ttft = axes
    for label in servers(levels[streams[0]]):
        agg.plot(streams, [levels[n][label]["tps_median"] for n in streams], marker="o", label=NAMES.get(label, label))
        ttft.plot(streams, [levels[n][label]["ttft_p50_ms_median"] for n in streams], marker="o",
                  label=NAMES.get(label, label))
    for n in streams:
        agg.annotate(f"{levels[n]['candidate/llama-server']['ratio_of_medians']:.2f}x",
                     (n, levels[n]["candidate"]["tps_median"]), textcoords="offset points", xytext=(0, 6),
                     ha="center", fontsize=8)
    # `--mixed`: every other stream asks for an eighth of the tokens.
    name = "(a) fresh prompts, mixed lengths" if data["args"].get("mixed") == "True" else "(a) fresh prompts"
    agg.set(title=name, xlabel="concurrent streams", ylabel="aggregate tokens/s", xticks=streams)
    ttft.set(title=name, xlabel="concurrent streams", ylabel="TTFT p50 (ms)", xticks=streams)


def chat(data: dict[str, Any], axes: list[Axes]) -> None:
    (level,) = data["levels"].values()
    summary = level["summary"]
    labels = servers(summary)
    ttft, tps = axes
    turns = len(summary[labels[0]]["ttft_p50_ms"])
    width = 0.8 / len(labels)
    for i, label in enumerate(labels):
        xs = [t + 1 + (i - (len(labels) - 1) / 2) * width for t in range(turns)]
        ttft.bar(xs, [v / 1e3 for v in summary[label]["ttft_p50_ms"]], width, label=NAMES.get(label, label))
    ratio = summary["candidate/llama-server"]
    ttft.set(title=f"(b) chat: TTFT p50 by turn (turns 2-{turns}: {ratio['ttft_p50_later_turns']:.2f}x)",
             xlabel="turn", ylabel="seconds", xticks=range(1, turns + 1))
    tps.bar([NAMES.get(label, label) for label in labels], [summary[label]["tps_median"] for label in labels],
            color=[f"C{i}" for i in range(len(labels))])
    tps.set(title=f"(b) chat: aggregate tokens/s ({ratio['tps']:.2f}x)", ylabel="tokens/s")


def grounded(data: dict[str, Any], axes: list[Axes]) -> None:
    (level,) = data["levels"].values()
    summary = level["summary"]
    labels = servers(summary)
    decode, total = axes
    colors = [f"C{i}" for i in range(len(labels))]
    # Here llama-server speculates (http_bench's --llama-spec) unless its label says otherwise.
    names = [{"llama-server": "llama-server, n-gram"}.get(label, NAMES.get(label, label)).replace(", ", ",\n")
             for label in labels]
    others = [label for label in labels if label.startswith("llama-server")]

    def ratios(key: str) -> str:
        return ", ".join(f"{summary[f'candidate/{label}'][key]:.2f}x" for label in others)

    decode.bar(names, [summary[label]["decode_tps_median"] for label in labels], color=colors)
    decode.set(title=f"(c) grounded: decode a stream ({ratios('decode_ratio_of_medians')})",
               ylabel="tokens/s after the first")
    total.bar(names, [summary[label]["tps_median"] for label in labels], color=colors)
    total.set(title=f"(c) grounded: with the prompt ({ratios('ratio_of_medians')})", ylabel="tokens/s")


def restart(data: dict[str, Any], axes: list[Axes]) -> None:
    levels = {int(k): v["summary"] for k, v in data["levels"].items()}
    streams = sorted(levels)
    labels = servers(levels[streams[0]])
    ttft, cached = axes
    width = 0.8 / len(labels)
    for i, label in enumerate(labels):
        xs = [k + (i - (len(labels) - 1) / 2) * width for k in range(len(streams))]
        ttft.bar(xs, [levels[n][label]["ttft_p50_ms"][1] for n in streams], width, label=NAMES.get(label, label))
        cached.bar(xs, [100 * levels[n][label]["cached_share"][1] for n in streams], width,
                   label=NAMES.get(label, label))
    for ax in axes:
        ax.set_xticks(range(len(streams)), [str(n) for n in streams])
        ax.set_xlabel("conversations at once")
    ratios = ", ".join(f"{levels[n]['candidate/llama-server']['ttft_p50_after_restart']:.2f}x" for n in streams)
    ttft.set(title=f"(d) turn 2 after a restart: TTFT p50 ({ratios})", ylabel="ms")
    cached.set(title="(d) turn 2 after a restart: prompt tokens cached", ylabel="%")


def engine(data: dict[str, Any], axes: list[Axes]) -> None:
    rows = data["results"]
    streams = [r["streams"] for r in rows]
    agg, ttft = axes
    for side, label in (("ours", "ollama-py engine"), ("llama_server", "llama-server")):
        agg.plot(streams, [r[side]["aggregate_tps"] for r in rows], marker="o", label=label)
        ttft.plot(streams, [r[side]["ttft_ms_median"] for r in rows], marker="o", label=label)
    agg.set(xlabel="concurrent streams", ylabel="aggregate tokens/s", xticks=streams)
    ttft.set(xlabel="concurrent streams", ylabel="median time to first token (ms)", xticks=streams)


def panels(data: dict[str, Any], axes: list[Axes]) -> None:
    if "results" in data:
        engine(data, axes)
        return
    {"fresh": fresh, "chat": chat, "grounded": grounded, "restart": restart}[data["args"]["workload"]](data, axes)


def main() -> None:
    out, title, *files = sys.argv[1:]
    fig, grid = plt.subplots(len(files), 2, figsize=(11, 3.8 * len(files)), squeeze=False)
    for path, axes in zip(files, grid, strict=True):
        panels(json.loads(Path(path).read_text()), list(axes))
        for ax in axes:
            ax.grid(alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0, 1, 0.98))  # room for the title
    fig.savefig(out, dpi=100)


if __name__ == "__main__":
    main()
