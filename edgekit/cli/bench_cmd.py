"""`edgekit bench`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from edgekit.cli import options
from edgekit.cli.app import app, console, err_console, escape, handle_errors, human_bytes, print_json, write_json_report

Runtimes = Annotated[
    str | None,
    typer.Option("--runtimes", help="comma-separated: ort,openvino (default: ort; openvino needs pip install 'edgekit[openvino]')"),
]


@app.command("bench")
@handle_errors
def bench_command(
    files: Annotated[list[Path], typer.Argument(help="ONNX files; ratios are against the first (or PyTorch with --torch)")],
    providers: options.Providers = None,
    runtimes: Runtimes = None,
    threads: options.Threads = None,
    batch: options.Batch = 1,
    warmup: Annotated[int, typer.Option("--warmup", min=0, max=10_000)] = 5,
    runs: Annotated[int, typer.Option("--runs", min=1, max=1_000_000, help="timed runs per candidate")] = 30,
    seconds: Annotated[
        float | None,
        typer.Option("--seconds", callback=options.between(0.0, 86_400.0), help="keep timing whole rounds until this budget is spent"),
    ] = None,
    torch: Annotated[bool, typer.Option("--torch", help="also time the PyTorch eager model rebuilt from the metadata")] = False,
    spin: Annotated[
        bool, typer.Option("--spin", help="let ORT threads spin between runs (faster back-to-back, unfair when interleaved)")
    ] = False,
    report: options.Report = None,
    json_output: options.Json = False,
) -> None:
    """Latency (p50/p90/mean), throughput, size and memory side by side, against this machine's sgemm peak."""
    from edgekit.bench import bench

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=err_console, transient=True, disable=not err_console.is_terminal) as bar:
        task = bar.add_task("timing (interleaved)", total=None)
        result = bench(
            files,
            providers=[p for p in providers.split(",")] if providers else None,
            threads=threads,
            batch=batch,
            warmup=warmup,
            runs=runs,
            seconds=seconds,
            with_torch=torch,
            spin=spin,
            runtimes=runtimes,
            on_progress=lambda done, total: bar.update(task, completed=done, total=total),
        )
    if report is not None:
        write_json_report(report, result)
    if json_output:
        print_json(result)
        return
    render_bench(result)
    if report is not None:
        console.print(f"report: {escape(str(report))}")


def render_bench(result) -> None:
    from edgekit.openvino_runtime import precision_summary

    m = result.machine
    table = Table(
        title=f"{m['cpu']} ({', '.join(m['flags'])}), {result.threads} threads, batch {result.batch}, "
        f"sgemm peak {result.sgemm_gflops:.0f} GFLOP/s",
    )
    several = len(result.runtimes) > 1 or result.runtimes != ["ort"]
    openvino = any(t.executed_precisions for t in result.timings)
    columns = ["candidate"] + (["runtime"] if several else []) + ["provider"] + (["executed"] if openvino else [])
    for column in columns:
        table.add_column(column, justify="left")
    for column in ("p50 ms", "p90 ms", "mean ms", "img/s", "size", "memory", "GFLOP/s", "of peak", "speedup", "smaller"):
        table.add_column(column, justify="right")
    for t in result.timings:
        # the runtime and provider columns say what the label's [ort cpu] / [openvino] says
        name = Path(t.file).name if several and t.file else t.label
        cells = [escape(name)] + ([t.runtime] if several else []) + [t.provider]
        if openvino:
            cells.append(precision_summary(t.executed_precisions) if t.executed_precisions else "-")
        table.add_row(
            *cells,
            f"{t.p50_ms:.2f}",
            f"{t.p90_ms:.2f}",
            f"{t.mean_ms:.2f}",
            f"{t.throughput:.1f}",
            human_bytes(t.file_bytes) if t.file_bytes else "-",
            human_bytes(t.memory_bytes) if t.memory_bytes and t.memory_bytes > 0 else "-",
            f"{t.gflops:.0f}" if t.gflops else "-",
            f"{t.peak_fraction:.0%}" if t.peak_fraction else "-",
            f"{t.speedup:.2f}x",
            f"{t.size_ratio:.2f}x" if t.size_ratio else "-",
        )
    console.print(table)
    console.print(
        f"ratios are against {escape(result.baseline)}; int8 GFLOP/s are effective (2 x fp32 MACs / latency); "
        + ("ORT threads spin between runs" if result.spin else "ORT threads do not spin (fair interleaving; --spin to allow)")
    )
    if openvino:
        console.print("executed: the precisions OpenVINO's compiled graph ran its compute layers in (u8/i8: int8 kernels)")
    for note in result.notes:
        console.print(f"note: {escape(note)}")
    for line in result.skipped:
        console.print(f"[yellow]skipped:[/] {escape(line)}")
