"""`edgekit package`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from edgekit.cli import options
from edgekit.cli.options import option
from edgekit.cli.app import app, console, escape, handle_errors, human_bytes, print_json
from edgekit.cli.output import progress
from edgekit.package.options import PackageOptions

P = PackageOptions  # the stage's options' defaults, help and ranges: package/options.py


@app.command("package")
@handle_errors
def package_command(
    model_file: Annotated[Path, typer.Argument(metavar="MODEL", help="the .onnx file (from edgekit export, import, quantize or convert)")],
    output: Annotated[Path | None, option(P, "output", "-o", "--output", file_okay=False)] = P.output,
    labels: Annotated[Path | None, option(P, "labels", "--labels", dir_okay=False)] = P.labels,
    images: options.Images = P.images,
    golden: Annotated[int | None, option(P, "golden", "--golden")] = P.golden,
    model: Annotated[str | None, option(P, "model", "--model")] = P.model,
    weights: options.Weights = P.weights,
    parent: Annotated[Path | None, option(P, "parent", "--parent", dir_okay=False)] = P.parent,
    runtimes: Annotated[str | None, option(P, "runtimes", "--runtimes")] = P.runtimes,
    json_output: options.Json = False,
) -> None:
    """A folder for the device: .onnx + .ort, manifest, golden data, and check.py (numpy + onnxruntime only)."""
    from edgekit.package import package
    from edgekit.onnxfile.outputs import register_input

    register_input(model_file, "input model")
    if parent is not None:
        register_input(parent, "fp32 parent")
    with progress("package") as shown:
        knobs = PackageOptions(output=output, labels=labels, images=images, golden=golden, model=model,
                               weights=weights, parent=parent, runtimes=runtimes)
        result = package(model_file, knobs, on_stage=shown.stage)
    if json_output:
        print_json(result)
    else:
        render_package(result)


def render_package(result) -> None:
    console.print(f"[bold green]wrote[/] {escape(str(result.folder))}/  ({result.precision}, from {escape(str(result.source))})")
    console.print(f"manifest sha256 {result.manifest_sha256}  (pin it: python check.py --expect-manifest SHA, or "
                  "edgekit verify BUNDLE/ --expect-manifest SHA; a check inside the bundle cannot vouch for itself)")
    for note in result.notes:
        console.print(f"[yellow]note:[/] {escape(note)}")
    table = Table(title="bundle contents", title_justify="left")
    table.add_column("file")
    table.add_column("size", justify="right")
    table.add_column("what")
    for f in result.files:
        table.add_row(escape(f.name), human_bytes(f.bytes), escape(f.role))
    table.add_section()
    table.add_row("model files", human_bytes(result.model_bytes), ".onnx (+ data) and .ort")
    table.add_row(
        "everything else", human_bytes(result.overhead_bytes),
        f"{result.overhead_fraction:.1%} of the model files (budget 10 %); {result.golden_samples} golden photos",
    )
    console.print(table)

    check = result.check
    rows = Table(title="check.py on this machine", title_justify="left")
    for column in ("format", "provider", "batch", "max abs", "SQNR", "cosine", "top-1", "top-5", "result"):
        rows.add_column(column)
    for r in check.rows:
        m = r["metrics"] or {}
        ok = r["status"] == "PASS"
        rows.add_row(
            r["format"], r["provider"].replace("ExecutionProvider", ""), str(r["batch"] or "-"),
            f"{m['max_abs']:.2e}" if m else "-", f"{m['sqnr_db']:.1f} dB" if m else "-",
            f"{m['cosine']:.6f}" if m else "-", f"{m['top1_agreement']:.0%}" if m else "-",
            f"{m['top5_agreement']:.0%}" if m else "-",
            "[green]PASS[/]" if ok else f"[red]{escape(r['status'])}[/] {escape('; '.join(r['failures']))}",
        )
    console.print(rows)
    gates = ", ".join(f"{k} {v}" for k, v in result.gates.items() if k != "source" and v not in (None, False))
    console.print(f"gates: {escape(gates)} ({escape(str(result.gates.get('source')))})")
    if result.session_options:
        needs = "; ".join(f"{k}: {', '.join(f'{o}={v}' for o, v in opts.items())}" for k, opts in result.session_options.items())
        console.print(f"session options the file needs: {escape(needs)} (check.py applies them where /proc/cpuinfo says so)")
    for note in check.notes:
        console.print(f"[yellow]note:[/] {escape(note)}")
    mobile = result.mobile
    if mobile.get("available"):
        parts = [f"{ep} {e['partitions']} partition(s), {e['supported_nodes']}/{e['nodes']} nodes ({e['suitability']})"
                 for ep, e in mobile["eps"].items()]
        console.print(f"ORT Mobile: {escape('; '.join(parts))}. {escape(mobile['verdict'])}")
    else:
        console.print(f"ORT Mobile usability: not checked ({escape(mobile.get('reason', ''))})")
    console.print(f"on the device: [bold]python {escape(str(result.folder / 'check.py'))}[/]")
