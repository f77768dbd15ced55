"""How the CLI writes numbers, times and tables: the way `ollama` writes them.

People compare our output with Ollama's and scripts parse it, so sizes are
decimal ("98 MB"), times are relative ("2 minutes ago", "4 minutes from now"),
durations print as Go prints them ("1.234s", "56.7ms") and tables are
left-aligned columns without borders.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import UTC, datetime

from ollama_py.api.native import ListModel, Metrics, ProcessModel, ShowResponse

_UNITS = (("TB", 1000**4), ("GB", 1000**3), ("MB", 1000**2), ("KB", 1000))
# Ollama reports "Forever" for an expiry further away than this (keep_alive < 0).
_FOREVER_YEARS = 20


def human_bytes(size: int) -> str:
    """98362432 -> '98 MB', 1500000000 -> '1.5 GB' (format.HumanBytes)."""
    for unit, scale in _UNITS:
        if size >= scale:
            value = size / scale
            if value >= 10 or value == math.trunc(value):
                return f"{int(value)} {unit}"
            return f"{value:.1f} {unit}"
    return f"{size} B"


def human_duration(seconds: float) -> str:
    """A rounded length of time as Ollama words it ('About a minute', '3 days')."""
    whole = int(seconds)
    if whole < 1:
        return "Less than a second"
    if whole == 1:
        return "1 second"
    if whole < 60:
        return f"{whole} seconds"
    minutes = whole // 60
    if minutes == 1:
        return "About a minute"
    if minutes < 60:
        return f"{minutes} minutes"
    hours = round(seconds / 3600)
    if hours == 1:
        return "About an hour"
    if hours < 48:
        return f"{hours} hours"
    if hours < 24 * 7 * 2:
        return f"{hours // 24} days"
    if hours < 24 * 30 * 2:
        return f"{hours // (24 * 7)} weeks"
    if hours < 24 * 365 * 2:
        return f"{hours // (24 * 30)} months"
    return f"{int(seconds / (3600 * 24 * 365))} years"


def human_time(when: datetime | None, zero: str, now: datetime | None = None) -> str:
    """'2 minutes ago', '4 minutes from now', 'Forever', or `zero` when there is no time."""
    if when is None:
        return zero
    now = now or datetime.now(UTC)
    delta = (now - when).total_seconds()
    if delta < -_FOREVER_YEARS * 365 * 24 * 3600:
        return "Forever"
    if delta < 0:
        return human_duration(-delta) + " from now"
    return human_duration(delta) + " ago"


def parse_time(text: str) -> datetime | None:
    """An RFC 3339 time from the API; Go's zero time and an empty string mean none."""
    if not text or text.startswith("0001-01-01"):
        return None
    # Go writes up to nine fractional digits; Python reads six.
    head, dot, rest = text.partition(".")
    if dot:
        digits = "".join(c for c in rest if c.isdigit())
        zone = rest[len(digits):]
        text = f"{head}.{digits[:6]}{zone}"
    parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def go_duration(ns: int) -> str:
    """Nanoseconds as Go's time.Duration prints them: '1.5s', '12.3ms', '1h2m3s'."""
    if ns == 0:
        return "0s"
    sign = "-" if ns < 0 else ""
    ns = abs(ns)
    if ns < 1_000:
        return f"{sign}{ns}ns"
    if ns < 1_000_000:
        return f"{sign}{_decimal(ns, 1_000)}µs"
    if ns < 1_000_000_000:
        return f"{sign}{_decimal(ns, 1_000_000)}ms"
    hours, rest = divmod(ns, 3600 * 10**9)
    minutes, rest = divmod(rest, 60 * 10**9)
    text = f"{_decimal(rest, 10**9)}s"
    if hours or minutes:
        text = f"{minutes}m{text}"
    if hours:
        text = f"{hours}h{text}"
    return sign + text


def _decimal(value: int, unit: int) -> str:
    whole, fraction = divmod(value, unit)
    digits = str(fraction).rjust(len(str(unit)) - 1, "0").rstrip("0")
    return f"{whole}.{digits}" if digits else str(whole)


def processor(size: int, size_vram: int) -> str:
    """Where a loaded model sits: '100% CPU', '100% GPU' or '48%/52% CPU/GPU' (ollama ps)."""
    if size_vram == 0:
        return "100% CPU"
    if size_vram == size:
        return "100% GPU"
    if size_vram > size or size == 0:
        return "Unknown"
    cpu = round((size - size_vram) / size * 100)
    return f"{cpu}%/{100 - cpu}% CPU/GPU"


def table(header: Sequence[str], rows: Sequence[Sequence[str]], *, gap: int = 4) -> str:
    """Left-aligned columns, padded to the widest cell, no borders; the last column is not padded."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = []
    for row in [header, *rows]:
        cells = [cell.ljust(width + gap) for cell, width in zip(row[:-1], widths[:-1], strict=True)]
        lines.append("".join(cells) + row[-1])
    return "\n".join(lines)


def summary(metrics: Metrics) -> str:
    """The timing block `ollama run --verbose` prints after an answer (api Metrics.Summary)."""
    lines = []
    if metrics.total_duration > 0:
        lines.append(f"total duration:       {go_duration(metrics.total_duration)}")
    if metrics.load_duration > 0:
        lines.append(f"load duration:        {go_duration(metrics.load_duration)}")
    for label, count, duration in (("prompt eval", metrics.prompt_eval_count, metrics.prompt_eval_duration),
                                   ("eval", metrics.eval_count, metrics.eval_duration)):
        if count > 0:
            lines.append(f"{label + ' count:':<22}{count} token(s)")
        if duration > 0:
            lines.append(f"{label + ' duration:':<22}{go_duration(duration)}")
            lines.append(f"{label + ' rate:':<22}{count / (duration / 1e9):.2f} tokens/s")
    return "\n".join(lines)


def models_table(models: Sequence[ListModel], prefix: str | None = None) -> str:
    """`ollama list`: NAME ID SIZE MODIFIED, in the server's order."""
    rows = [[m.name, m.digest[:12], human_bytes(m.size), human_time(parse_time(m.modified_at), "Never")]
            for m in models if not prefix or m.name.startswith(prefix)]
    return table(["NAME", "ID", "SIZE", "MODIFIED"], rows)


def running_table(models: Sequence[ProcessModel], prefix: str | None = None) -> str:
    """`ollama ps`: NAME ID SIZE PROCESSOR CONTEXT UNTIL; then, for a model split across RPC workers, its layers."""
    shown = [m for m in models if not prefix or m.name.startswith(prefix)]
    rows = [[m.name, m.digest[:12], human_bytes(m.size), _rpc_share(m) or processor(m.size, m.size_vram),
             str(m.context_length), human_time(parse_time(m.expires_at), "Never")] for m in shown]
    split = [f"{m.name} layers: " + ", ".join(f"{p.first_layer}-{p.last_layer} {p.device}"
                                              + (f" ({p.endpoint})" if p.endpoint else "") for p in m.placement)
             for m in shown if _rpc_share(m)]
    listing = table(["NAME", "ID", "SIZE", "PROCESSOR", "CONTEXT", "UNTIL"], rows)
    return listing + "\n\n" + "\n".join(split) if split else listing


def _rpc_share(model: ProcessModel) -> str:
    """'35%/65% CPU/RPC' by layers for a model with layers on RPC workers (ollama-py's own), else ''."""
    remote = sum(p.layers for p in model.placement if p.endpoint)
    if not remote:
        return ""
    total = sum(p.layers for p in model.placement)
    local = round((total - remote) * 100 / total)
    return "100% RPC" if not local else f"{local}%/{100 - local}% CPU/RPC"


def model_info(info: ShowResponse) -> str:
    """`ollama show`'s sections: Model, Capabilities, Parameters, System and License (two lines of each)."""
    meta = info.model_info or {}
    arch = str(meta.get("general.architecture", info.details.family))
    model_rows = [["architecture", arch], ["parameters", info.details.parameter_size]]
    for key, label in (("context_length", "context length"), ("embedding_length", "embedding length")):
        if f"{arch}.{key}" in meta:
            model_rows.append([label, str(meta[f"{arch}.{key}"])])
    model_rows.append(["quantization", info.details.quantization_level])
    parameters = [line.split(None, 1) for line in info.parameters.splitlines() if line.strip()]
    sections = [("Model", model_rows), ("Capabilities", [[c] for c in info.capabilities or []]),
                ("Parameters", [row + [""] * (2 - len(row)) for row in parameters]),
                ("System", _head(info.system)), ("License", _head(info.license))]
    out = []
    for title, rows in sections:
        if rows:
            body = table(rows[0], rows[1:]) if len(rows[0]) > 1 else "\n".join(r[0] for r in rows)
            out.append(f"  {title}\n" + "\n".join(f"    {line}" for line in body.splitlines()) + "\n")
    return "\n".join(out)


def _head(text: str, n: int = 2) -> list[list[str]]:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return [[line] for line in lines[:n]] + ([["..."]] if len(lines) > n else [])
