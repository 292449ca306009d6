"""A sweep's rows and what is read from them: the Pareto frontier, the best file per model, and the files people
compare (results.json with every number, results.csv, results.md, pareto.png).

A row is one point of the sweep: one int8 file (model, target, method, samples and any other swept quantize knob,
in `knobs`) in one runtime (`runtime`: ort or openvino), or the failure that stopped it; its fp32 parent's top-1 in
the same runtime is on every row, so the drop is read along the row. With the fp32 fallback (a `max_drop` knob),
`fp32_groups` of `groups` QDQ groups are back in fp32 and `quantize_drop` is the drop quantize measured. Latency
is the p50 at batch 1 measured serially after every accuracy job, every runtime's int8 file and fp32 parent
interleaved in one run (never two files timed at once).
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from edgekit.onnxfile.artifact import write_text_atomic

COLUMNS = ("model", "target", "method", "samples", "knobs", "runtime", "status", "fp32_top1", "int8_top1", "drop", "agreement",
           "int8_bytes", "size_ratio", "int8_p50_ms", "fp32_p50_ms", "speedup", "fp32_nodes", "fp32_groups", "groups",
           "quantize_drop", "ranges_cached",
           "kernels", "file", "error")


@dataclass
class Row:
    model: str
    target: str
    method: str
    samples: int
    key: str
    status: str = "pending"  # ok | failed | pending (not run yet) | interrupted (not finished: the sweep was stopped)
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
    knobs: dict = field(default_factory=dict)  # the other swept quantize knobs of this point (max_drop, ...)
    runtime: str = "ort"  # where its top-1 and latency were measured
    options: dict = field(default_factory=dict)  # every quantize knob its job was given, beyond target/method/samples
    fp32_groups: int | None = None  # QDQ groups the fallback put back in fp32 (0: none; None: no budget)
    groups: int | None = None  # QDQ groups of the fully quantized file, with the fallback
    quantize_drop: float | None = None  # the top-1 drop quantize measured for its budget, points

    @property
    def file_name(self) -> str:
        """The int8 file's name: model/target/method/samples, then each other swept knob as name=value."""
        extra = "".join(f"/{k}={_knob_text(v)}" for k, v in self.knobs.items())
        return f"{self.model}/{self.target}/{self.method}/{self.samples}{extra}"

    @property
    def name(self) -> str:
        """The point's name: the file's, then @runtime where it is not ONNX Runtime."""
        return self.file_name + ("" if self.runtime == "ort" else f"@{self.runtime}")

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


def _knob_text(value) -> str:
    if isinstance(value, list):
        return "+".join(map(str, value)) or "none"
    return "none" if value is None else f"{value:g}" if isinstance(value, float) else str(value)


MAX_ENTRY_BYTES = 64 << 20  # an fp32 entry holds one prediction per image (at most 100,000): far below this
_ROW_TYPES = {"model": str, "target": str, "method": str, "samples": int, "key": str, "status": str,
              "images": int, "session_config": dict, "knobs": dict, "runtime": str, "options": dict}
_ROW_NUMBERS = ("fp32_top1", "int8_top1", "agreement", "holdout_sqnr_db", "int8_p50_ms", "fp32_p50_ms", "seconds",
                "quantize_drop")
_ROW_COUNTS = ("fp32_bytes", "int8_bytes", "fp32_nodes", "fp32_groups", "groups")


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value and abs(value) != float("inf")


def _row_problem(data: dict, key: str) -> str | None:
    """Why a job-cache row cannot be trusted, or None: the schema of Row.to_dict for a finished row, and its key."""
    for name, kind in _ROW_TYPES.items():
        value = data.get(name)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            return f"its {name} is {type(value).__name__ if name in data else 'missing'}, not {kind.__name__}"
    if data["key"] != key:
        return "its key is not the one it is stored under"
    if data["status"] != "ok":
        return f"its status is {data['status'][:20]!r}, not ok"
    if not _is_number(data.get("int8_top1")):
        return "it has no int8 top-1"
    for name in _ROW_NUMBERS:
        if data.get(name) is not None and not _is_number(data[name]):
            return f"its {name} is not a number"
    for name in _ROW_COUNTS:
        if data.get(name) is not None and (not isinstance(data[name], int) or isinstance(data[name], bool) or data[name] < 0):
            return f"its {name} is not a count"
    if not isinstance(data.get("file"), str) or not Path(data["file"]).is_file():
        return "its int8 file is gone"
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in data["session_config"].items()):
        return "its session_config is not names to values"
    return None


def _fp32_problem(data: dict, images: int | None) -> str | None:
    """Why a job-cache fp32 entry (top1, images, predictions) cannot be trusted, or None."""
    predictions = data.get("predictions")
    if not isinstance(predictions, list):
        return "it has no predictions"
    if images is not None and len(predictions) != images:
        return f"it has {len(predictions)} predictions for {images} images"
    if not all(isinstance(p, int) and not isinstance(p, bool) and p >= -1 for p in predictions):
        return "its predictions are not class indices"
    if data.get("top1") is not None and not _is_number(data["top1"]):
        return "its top1 is not a number"
    if not isinstance(data.get("images"), int) or isinstance(data.get("images"), bool):
        return "its images is not a count"
    return None


def read_entry(path: Path, key: str, kind: str, notes: list[str] | None = None, images: int | None = None) -> dict | None:
    """A job-cache entry (`kind` "row" or "fp32") stored under `key`, or None when there is none or it cannot be
    trusted: then the job runs again, and a damaged entry is said in one line added to `notes`. The cache is a
    convenience: an entry is read as a bounded regular file and checked against its schema and its key, never
    trusted as it is and never fatal."""
    from edgekit.core.files import read_small_regular

    if not path.exists() and not path.is_symlink():
        return None
    raw = read_small_regular(path, MAX_ENTRY_BYTES)
    problem = None
    data = None
    if raw is None:
        problem = "is not a regular file of at most 64 MiB"
    else:
        try:
            data = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError):
            problem = "is not JSON"
    if problem is None and not isinstance(data, dict):
        problem = "is not a JSON object"
    if problem is None:
        why = _row_problem(data, key) if kind == "row" else _fp32_problem(data, images)
        problem = f"cannot be trusted: {why}" if why else None
    if problem is None:
        return data
    if notes is not None:
        notes.append(f"job cache entry {path.parent.name}/{path.name} {problem}; computed again")
    return None


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
    if column == "knobs":
        return " ".join(f"{k}={_knob_text(v)}" for k, v in (value or {}).items())
    if value is None:
        return ""
    if column in ("fp32_top1", "int8_top1", "agreement"):
        return f"{value:.2f}"
    if column in ("drop", "quantize_drop"):
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


MD_COLUMNS = ("model", "target", "method", "samples", "knobs", "runtime", "int8_top1", "drop", "agreement", "size_ratio",
              "int8_p50_ms", "speedup", "fp32_groups", "fp32_nodes")


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
    refs = dict.fromkeys((r.model, r.runtime) for r in rows)
    lines += ["", "fp32 top-1 per model: " + ", ".join(
        f"{m}{'' if rt == 'ort' else '@' + rt} "
        f"{next((r.fp32_top1 for r in rows if (r.model, r.runtime) == (m, rt) and r.fp32_top1 is not None), float('nan')):.2f}"
        for m, rt in refs), ""]
    lines += [f"note: {n}" for n in summary.get("notes", [])] + ([""] if summary.get("notes") else [])
    limit = summary.get("max_drop")
    for model, row in best.items():
        within = f"within a drop of {limit:g} points" if limit is not None else "smallest drop"
        lines.append(f"- best {model} ({within}): " + (f"{row.name}, {row.file}" if row else "none"))
    return "\n".join(lines) + "\n"
