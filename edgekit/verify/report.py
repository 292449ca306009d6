"""A verify Report as a terminal table (rich renderables, printed by the CLI), JSON and Markdown;
the files are written atomically (temp file in the same folder, then os.replace)."""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path

from edgekit.judge.compare import OutputMetrics, Tolerance, failed_gates
from edgekit.core.errors import BadInput
from edgekit.verify.results import Comparison, Report


def _num(x: float, fmt: str = ".2e") -> str:
    if x is None:
        return "-"
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return format(x, fmt)


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%" if x < 1 else "100%"


def describe_gates(tol: Tolerance, ref: str = "PyTorch") -> str:
    """The gates in words, e.g. '|ORT - PyTorch| <= 1e-4 + 1e-3*|PyTorch|, identical top-1; NaN/Inf fail' (`ref`: what
    the reference is called)."""
    parts = []
    if tol.atol is not None or tol.rtol is not None:
        parts.append(f"|ORT - {ref}| <= {tol.atol or 0:g} + {tol.rtol or 0:g}*|{ref}| elementwise")
    if tol.same_top1:
        parts.append("identical top-1 (ties within the tolerance excepted)")
    if tol.min_top1_agreement is not None:
        parts.append(f"top-1 agreement >= {tol.min_top1_agreement:.0%}")
    if tol.min_sqnr_db is not None:
        parts.append(f"SQNR >= {tol.min_sqnr_db:g} dB")
    parts.append("any NaN/Inf fails")
    return ", ".join(parts)


def short_failures(m: OutputMetrics, tol: Tolerance) -> str:
    """The failed gates in a few words, for a table cell (the full sentences are in the error and the JSON)."""
    if not m.failures:
        return ""
    return ", ".join(short for short, _sentence in failed_gates(m, tol))


def _result(c: Comparison, m: OutputMetrics) -> str:
    if not c.gated:
        return "info"
    if not m.passed:
        return "FAIL"
    return "ok (NaN/Inf)" if c.nan_only else "PASS"


def _size(path: Path) -> str:
    from edgekit.onnxfile.artifact import artifact_bytes

    try:
        return f"{artifact_bytes(path) / 1e6:.1f} MB"
    except OSError:
        return "?"


def _text(value) -> str:
    """A path or a string from a file (a name, an ORT message) as literal text inside rich markup:
    `model[v2].onnx` prints as such, and a name holding `[/b]` cannot break the markup."""
    from rich.markup import escape

    from edgekit.core.files import shown_path

    return escape(shown_path(value if isinstance(value, (str, Path)) else str(value)))


def _ref_word(report: Report) -> str:
    return "PyTorch" if report.reference.kind == "pytorch" else "ref"


def _ref_label(report: Report) -> str:
    return "PyTorch fp32" if report.reference.kind == "pytorch" else report.reference.short


def header_lines(report: Report) -> list[str]:
    """What was verified, against what, with which gates, on which inputs and providers (rich markup;
    every path and string from the file or the user is escaped)."""
    lines = [
        f"[bold]verify[/] {_text(report.file)}  (sha256 {report.sha256[:12]}, {report.precision}, {_size(report.file)})",
        f"reference: {_text(report.reference.describe())}",
        f"gates ({_text(report.tolerance_source)}): {_text(describe_gates(report.tolerance, _ref_word(report)))}",
        "inputs: " + "; ".join(f"{_text(s.name)}: {_text(s.description)}" for s in report.input_sets),
    ]
    for run in report.providers:
        style = "yellow" if run.fell_back or run.elsewhere else ""
        text = f"provider {_text(run.requested)}: {_text(run.describe())}"
        lines.append(f"[{style}]{text}[/]" if style else text)
    return lines


# The columns a person decides on (readable at 80 columns); --verbose adds the rest, the reports hold everything.
BRIEF_COLUMNS = ("runtime", "inputs", "batch", "max abs", "SQNR dB", "top-1", "result")
VERBOSE_COLUMNS = ("runtime", "inputs", "batch", "n", "output", "max abs", "max rel", "mean abs", "cosine", "SQNR dB",
                   "top-1", "top-5", "NaN/Inf", "result", "failed gates")


def comparison_table(report: Report, verbose: bool = False):
    """One row per runtime/provider x input set x batch (x output): the deciding metrics and pass/fail, with the
    failed gates in the result cell; `verbose`: every metric in its own column."""
    from rich.table import Table

    columns = VERBOSE_COLUMNS if verbose else BRIEF_COLUMNS
    dense = report.reference.task == "dense"
    if dense:  # a dense map's top-1 is meaningless: cosine in its column, and top-1/top-5 not shown
        columns = tuple("cosine" if n == "top-1" else n for n in columns if n != "top-5" or "cosine" not in columns)
        columns = tuple(dict.fromkeys(columns))
    table = Table(title=f"{_text(report.file.name)} vs {_text(report.reference.short)}", show_lines=False)
    for name in columns:
        left = name in ("runtime", "inputs", "output", "result", "failed gates")
        table.add_column(name, justify="left" if left else "right", overflow="fold")
    for c in report.comparisons:
        for m in c.outputs:
            result = _result(c, m)
            style = {"PASS": "green", "FAIL": "bold red", "info": "dim", "ok (NaN/Inf)": "green"}[result]
            failed = _text(short_failures(m, c.tolerance))
            cells = {
                "runtime": _text(c.label), "inputs": _text(c.input_set), "batch": str(c.batch), "n": str(c.samples),
                "output": _text(m.name), "max abs": _num(m.max_abs), "max rel": _num(m.max_rel),
                "mean abs": _num(m.mean_abs), "cosine": _num(m.cosine, ".6f"), "SQNR dB": _num(m.sqnr_db, ".1f"),
                "top-1": _pct(m.top1_agreement), "top-5": _pct(m.top5_agreement), "NaN/Inf": f"{m.nan}/{m.inf}",
                "result": f"[{style}]{result}[/]" + (f" {failed}" if failed and not verbose else ""),
                "failed gates": failed,
            }
            table.add_row(*(cells[name] for name in columns))
    return table


def layers_table(report: Report, rows: int = 15):
    """The quantized activations with the lowest SQNR and the nodes adding the most error (None without --layers)."""
    from rich.markup import escape
    from rich.table import Table

    lr = report.layers
    if lr is None:
        return None
    kernels = ", ".join(f"{k}={v}" for k, v in lr.session_config.items()) or "ORT's default kernels"
    table = Table(title=f"per-layer int8 error vs fp32 ({lr.samples} images, {kernels}), worst {rows} of {len(lr.activations)}")
    for name in ("tensor", "node", "op", "depth", "SQNR dB", "input SQNR dB", "added noise"):
        table.add_column(name, justify="left" if name in ("tensor", "node", "op") else "right")
    for a in lr.worst(rows):
        table.add_row(escape(a.tensor), escape(a.fp32_node or "-"), a.op_type, str(a.position), _num(a.sqnr_db, ".1f"),
                      _num(a.input_sqnr_db, ".1f"), _num(a.added_noise, ".2e"))
    return table


def dataset_table(report: Report):
    """Top-1 on the labelled folder: PyTorch, each provider, and the drop (None without --dataset)."""
    from rich.table import Table

    d = report.dataset
    if d is None:
        return None
    gate = f", gate: drop <= {d.max_drop:g} points" if d.max_drop is not None else ""
    table = Table(title=f"accuracy on {_text(Path(d.folder))} ({d.samples} images, {len(d.classes)} classes{gate})")
    for name in ("model", "top-1 %", "drop (points)", "agrees with the reference", "result"):
        table.add_column(name, justify="left" if name in ("model", "result") else "right")
    table.add_row(f"{_text(_ref_label(report))} (reference)", f"{d.torch_top1:.2f}", "-", "-", "")
    for p in d.providers:
        failed = d.max_drop is not None and p.drop > d.max_drop
        result = "" if d.max_drop is None else ("[bold red]FAIL[/]" if failed else "[green]PASS[/]")
        table.add_row(
            _text(f"{p.label} ({report.precision})"), f"{p.top1:.2f}", f"{p.drop:+.2f}", f"{p.agreement:.1f}%", result
        )
    return table


def note_lines(report: Report) -> list[str]:
    """The report's notes, then each row note once (with the rows it applies to)."""
    notes = list(report.notes)
    rows_of: dict[str, list[str]] = {}
    for c in report.comparisons:
        for n in c.notes:
            rows_of.setdefault(n, []).append(f"{c.label}, {c.input_set}, batch {c.batch}")
    notes += [f"{'; '.join(rows)}: {n}" for n, rows in rows_of.items()]
    if report.dataset:
        notes += report.dataset.notes
        if report.dataset.skipped:
            from edgekit.core.files import shown_path

            skipped = report.dataset.skipped  # each named (up to 5), with why: the user can find and fix them
            more = f" and {len(skipped) - 5} more" if len(skipped) > 5 else ""
            notes.append(f"skipped {len(skipped)} unreadable image(s) in {shown_path(report.dataset.folder)}: "
                         + ", ".join(f"{shown_path(Path(p).name)} ({r})" for p, r in skipped[:5]) + more)
    return notes


# --- files -----------------------------------------------------------------------------------


def to_json(report: Report) -> str:
    from edgekit.core.serialize import to_json as dumps

    return dumps(report)


def to_markdown(report: Report) -> str:
    """A human summary for a pull request or a release note."""
    verdict = "PASS" if report.passed else "FAIL"
    out = [
        f"# edgekit verify: {report.file.name} — {verdict}",
        "",
        f"- file: `{report.file}` (sha256 `{report.sha256}`), precision {report.precision}",
        f"- reference: {report.reference.describe()}",
        f"- gates ({report.tolerance_source}): {describe_gates(report.tolerance, _ref_word(report))}",
        "- inputs: " + "; ".join(f"{s.name}: {s.description}" for s in report.input_sets),
    ]
    for run in report.providers:
        out.append(f"- provider {run.requested}: {run.describe()}")
    versions = report.versions
    out.append(
        "- versions: "
        + ", ".join(f"{k} {versions[k]}" for k in ("edgekit", "torch", "onnx", "onnxruntime") if k in versions)
        + (f", GPU {versions['cuda_device']}" if "cuda_device" in versions else "")
    )
    out += [
        "",
        "| runtime | inputs | batch | n | output | max abs | max rel | mean abs | cosine | SQNR dB | top-1 | top-5 "
        "| NaN/Inf | result | failed gates |",
        "|---|---|--:|--:|---|--:|--:|--:|--:|--:|--:|--:|--:|---|---|",
    ]
    for c in report.comparisons:
        for m in c.outputs:
            out.append(
                f"| {c.label} | {c.input_set} | {c.batch} | {c.samples} | {m.name} | {_num(m.max_abs)} | "
                f"{_num(m.max_rel)} | {_num(m.mean_abs)} | {_num(m.cosine, '.6f')} | {_num(m.sqnr_db, '.1f')} | "
                f"{_pct(m.top1_agreement)} | {_pct(m.top5_agreement)} | {m.nan}/{m.inf} | {_result(c, m)} | "
                f"{'; '.join(m.failures).replace('|', '/')} |"
            )
    d = report.dataset
    if d is not None:
        out += [
            "",
            f"## Accuracy on `{d.folder}` ({d.samples} images, {len(d.classes)} classes)",
            "",
            "| model | top-1 % | drop (points) | agrees with the reference |",
            "|---|--:|--:|--:|",
            f"| {_ref_label(report)} (reference) | {d.torch_top1:.2f} | - | - |",
        ]
        for p in d.providers:
            out.append(f"| {p.label} ({report.precision}) | {p.top1:.2f} | {p.drop:+.2f} | {p.agreement:.1f}% |")
        if d.max_drop is not None:
            out.append(f"\nGate: drop <= {d.max_drop:g} points.")
    notes = note_lines(report)
    if notes:
        out += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    failures = report.failures()
    if failures:
        out += ["", "## Failed gates", ""] + [f"- {f}" for f in failures]
    return "\n".join(out) + "\n"


def report_paths(path: Path) -> tuple[Path, Path]:
    """(FILE.json, FILE.md) for --report FILE.json; an unusable path is BadInput before any work is done."""
    from edgekit.core.files import check_name_lengths

    path = check_name_lengths(Path(path), "--report")
    if path.suffix.lower() != ".json":
        raise BadInput(f"--report {path} does not end in .json", hint="name a .json file; the .md goes beside it")
    if path.is_dir():
        raise BadInput(f"--report {path} is a directory", hint="name a .json file")
    parent = path.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=f".{path.name[:64]}.", suffix=".tmp", dir=parent)
        os.close(fd)
        os.remove(probe)
    except OSError as exc:
        raise BadInput(
            f"cannot write the report to {parent}: {exc.strerror or exc}", hint="choose another --report"
        ) from None
    return path, path.with_suffix(".md")


def write_reports(report: Report, path: Path) -> tuple[Path, Path]:
    """Write FILE.json (every number) and FILE.md (the summary) beside it, each atomically."""
    from edgekit.onnxfile.outputs import write_text_atomic

    json_path, md_path = report_paths(path)
    write_text_atomic(json_path, to_json(report))
    write_text_atomic(md_path, to_markdown(report))
    return json_path, md_path
