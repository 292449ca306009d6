"""A sweep's rows and what is read from them: the Pareto frontier, the best file per model, and the files people
compare (results.json with every number, results.csv, results.md, pareto.png).

A row is one int8 file (model, target, method, samples) or the failure that stopped it; its fp32 parent's top-1
is on every row, so the drop is read along the row. Latency is the int8 file's p50 at batch 1 measured serially,
interleaved with its fp32 parent, after every accuracy job (never two files timed at once).
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from edgekit.onnxfile.artifact import write_text_atomic

COLUMNS = ("model", "target", "method", "samples", "status", "fp32_top1", "int8_top1", "drop", "agreement",
           "int8_bytes", "size_ratio", "int8_p50_ms", "fp32_p50_ms", "speedup", "fp32_nodes", "ranges_cached",
           "kernels", "file", "error")


@dataclass
class Row:
    model: str
    target: str
    method: str
    samples: int
    key: str
    status: str = "pending"  # ok | failed | pending (not run: the sweep was interrupted)
    fp32_top1: float | None = None
    int8_top1: float | None = None
    agreement: float | None = None  # % of images where int8 and fp32 predict the same class
    images: int = 0
    fp32_bytes: int | None = None
    int8_bytes: int | None = None
    fp32_nodes: int | None = None
    ranges_cached: bool | None = None
    holdout_sqnr_db: float | None = None
    kernels: str | None = None
    int8_p50_ms: float | None = None
    fp32_p50_ms: float | None = None
    file: str | None = None
    error: str | None = None
    seconds: float = 0.0  # quantize + evaluation, in the worker (0 for a row read from the cache)
    cached: bool = False  # read from the sweep's job cache, not run this time
    session_config: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.model}/{self.target}/{self.method}/{self.samples}"

    @property
    def drop(self) -> float | None:
        return None if self.fp32_top1 is None or self.int8_top1 is None else self.fp32_top1 - self.int8_top1

    @property
    def size_ratio(self) -> float | None:
        return self.fp32_bytes / self.int8_bytes if self.fp32_bytes and self.int8_bytes else None

    @property
    def speedup(self) -> float | None:
        return self.fp32_p50_ms / self.int8_p50_ms if self.fp32_p50_ms and self.int8_p50_ms else None

    def to_dict(self) -> dict:
        return {**asdict(self), "name": self.name, "drop": self.drop, "size_ratio": self.size_ratio,
                "speedup": self.speedup}

    @classmethod
    def from_dict(cls, data: dict) -> "Row":
        names = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in names})


def read_entry(path: Path) -> dict | None:
    """A job cache entry, or None when there is none or it cannot be read (then the job runs again)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def save_row(jobs: Path, row: Row) -> None:
    """A finished row into the job cache, under its content key."""
    if row.status == "ok":  # failures run again next time: they may have been the machine's, not the file's
        write_text_atomic(jobs / f"{row.key}.json", json.dumps(row.to_dict(), default=str) + "\n")


def pareto_frontier(rows: list[Row]) -> list[Row]:
    """Per model, the finished files no other file of the same model beats on both top-1 drop and latency (file
    size when latency was not measured), sorted by that cost. Per model: the drops of two models are measured
    from two different fp32 references, so one model's file never hides another's."""
    done = [r for r in rows if r.status == "ok" and r.drop is not None]
    cost = (lambda r: r.int8_p50_ms) if done and all(r.int8_p50_ms for r in done) else (lambda r: r.int8_bytes)
    frontier = []
    for model in dict.fromkeys(r.model for r in done):
        best_drop = float("inf")
        for row in sorted((r for r in done if r.model == model), key=lambda r: (cost(r), r.drop)):
            if row.drop < best_drop:
                frontier.append(row)
                best_drop = row.drop
    return frontier


def best_per_model(rows: list[Row], max_drop: float | None) -> dict[str, Row | None]:
    """Per model, the fastest file (else the smallest) whose drop is within `max_drop` (None: the smallest drop)."""
    best: dict[str, Row | None] = {}
    for model in dict.fromkeys(r.model for r in rows):
        done = [r for r in rows if r.model == model and r.status == "ok" and r.drop is not None]
        if max_drop is None:
            best[model] = min(done, key=lambda r: (r.drop, r.int8_p50_ms or 0, r.int8_bytes), default=None)
        else:
            within = [r for r in done if r.drop <= max_drop + 1e-9]
            best[model] = min(within, key=lambda r: (r.int8_p50_ms or 0, r.int8_bytes, r.drop), default=None)
    return best


def cell(row: Row, column: str) -> str:
    value = row.to_dict().get(column)
    if value is None:
        return ""
    if column in ("fp32_top1", "int8_top1", "agreement"):
        return f"{value:.2f}"
    if column == "drop":
        return f"{value:+.2f}"
    if column in ("size_ratio", "speedup"):
        return f"{value:.2f}"
    if column.endswith("_ms"):
        return f"{value:.3f}"
    return str(value)


def write_results(folder: Path, rows: list[Row], summary: dict, plot: bool = True) -> dict[str, Path]:
    """results.json, results.csv, results.md (and pareto.png with at least one finished row), each atomically."""
    frontier = pareto_frontier(rows)
    best = best_per_model(rows, summary.get("max_drop"))
    data = {**summary, "rows": [r.to_dict() for r in rows], "frontier": [r.name for r in frontier],
            "best": {m: (r.name if r else None) for m, r in best.items()}}
    written = {"json": write_text_atomic(folder / "results.json", json.dumps(data, indent=1, default=str) + "\n")}
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(COLUMNS)
    for row in rows:
        writer.writerow([cell(row, c) for c in COLUMNS])
    written["csv"] = write_text_atomic(folder / "results.csv", buffer.getvalue())
    written["md"] = write_text_atomic(folder / "results.md", markdown(rows, summary, frontier, best))
    if plot and frontier:
        from edgekit.plots import plot_pareto

        written["png"] = plot_pareto(rows, frontier, folder / "pareto.png", summary.get("title", "edgekit sweep"))
    return written


MD_COLUMNS = ("model", "target", "method", "samples", "int8_top1", "drop", "agreement", "size_ratio", "int8_p50_ms",
              "speedup", "fp32_nodes")


def markdown(rows: list[Row], summary: dict, frontier: list[Row], best: dict[str, Row | None]) -> str:
    on_frontier = {r.name for r in frontier}
    lines = [f"# {summary.get('title', 'edgekit sweep')}", "",
             f"CPU: {summary.get('cpu', {}).get('model', '?')} ({summary.get('cpu', {}).get('kind', '?')}). "
             f"{summary.get('latency_note', '')}", "",
             "| " + " | ".join((*MD_COLUMNS, "status")) + " |", "|" + "---|" * (len(MD_COLUMNS) + 1)]
    for row in rows:
        status = row.status if row.status != "failed" else f"failed: {row.error}"
        mark = " (frontier)" if row.name in on_frontier else ""
        lines.append("| " + " | ".join(cell(row, c) for c in MD_COLUMNS) + f" | {status}{mark} |")
    lines += ["", "fp32 top-1 per model: " + ", ".join(
        f"{m} {next((r.fp32_top1 for r in rows if r.model == m and r.fp32_top1 is not None), float('nan')):.2f}"
        for m in dict.fromkeys(r.model for r in rows)), ""]
    limit = summary.get("max_drop")
    for model, row in best.items():
        within = f"within a drop of {limit:g} points" if limit is not None else "smallest drop"
        lines.append(f"- best {model} ({within}): " + (f"{row.name}, {row.file}" if row else "none"))
    return "\n".join(lines) + "\n"
