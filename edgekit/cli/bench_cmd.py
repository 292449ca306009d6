"""`edgekit bench`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from edgekit.bench.options import BenchOptions
from edgekit.cli import options
from edgekit.cli.options import option
from edgekit.cli.app import app, console, escape, handle_errors, human_bytes, print_json, write_json_report
from edgekit.cli.output import progress

B = BenchOptions  # the stage's options' defaults, help and ranges: bench/options.py


@app.command("bench")
@handle_errors
def bench_command(
    files: Annotated[list[Path], typer.Argument(help="ONNX files; ratios are against the first (or PyTorch with --torch)")],
    providers: options.Providers = B.providers,
    runtimes: options.Runtimes = B.runtimes,
    threads: options.Threads = B.threads,
    batch: options.Batch = B.batch,
    warmup: Annotated[int, option(B, "warmup", "--warmup")] = B.warmup,
    runs: Annotated[int, option(B, "runs", "--runs")] = B.runs,
    seconds: Annotated[float | None, option(B, "seconds", "--seconds")] = B.seconds,
    torch: Annotated[bool, option(B, "with_torch", "--torch")] = B.with_torch,
    spin: Annotated[bool, option(B, "spin", "--spin")] = B.spin,
    interval: Annotated[float | None, option(B, "interval_ms", "--interval")] = B.interval_ms,
    profile: Annotated[bool, option(B, "profile", "--profile")] = B.profile,
    plot: Annotated[
        Path | None, typer.Option("--plot", dir_okay=False, help="with --profile: where the PNG goes (default: beside the first file)")
    ] = None,
    report: options.Report = None,
    device: options.Device = None,
    json_output: options.Json = False,
) -> None:
    """Latency (p50/p90/mean), throughput, size and memory side by side, against this machine's sgemm peak."""
    from edgekit.onnxfile.outputs import refuse_if_input, register_input
    from edgekit.bench import bench
    from edgekit.core.errors import BadInput

    from edgekit.bench.board import is_board

    if is_board(device):  # the user's own board over SSH: real timings, taken on the board
        _bench_board(files, device, report, json_output, BenchOptions(
            providers=[p for p in providers.split(",")] if providers else None, threads=threads, batch=batch,
            warmup=warmup, runs=runs, seconds=seconds, with_torch=torch, spin=spin, runtimes=runtimes,
            interval_ms=interval, profile=profile))
        return
    if device not in (None, "host"):
        raise BadInput(f"bench --device {device}: an emulated CPU's speed says nothing about the real one",
                       hint="bench times this machine; use --device with verify or quantize, for numerics")

    for path in files:  # the outputs are refused now, before any timing, if one would land on a model
        register_input(path, "input model")
    for out, what in ((report, "--report"), (plot, "--plot")):
        if out is not None:
            refuse_if_input(out, what)

    with progress("bench") as shown:
        knobs = BenchOptions(
            providers=[p for p in providers.split(",")] if providers else None, threads=threads, batch=batch,
            warmup=warmup, runs=runs, seconds=seconds, with_torch=torch, spin=spin, runtimes=runtimes,
            interval_ms=interval, profile=profile,
        )
        result = bench(files, knobs, on_progress=lambda done, total: shown.count("timing (interleaved)", done, total))
    png = None
    if result.profile_objects:
        from edgekit.plots import plot_profiles

        png = plot or files[0].with_name(files[0].name.replace(".onnx", "") + ".profile.png")
        plot_profiles(result.profile_objects, png)
    from edgekit.cli.bench_layers import render_periodic, render_side_by_side, render_verdict, side_plots

    side_pngs = side_plots(result, files[0], plot)
    if report is not None:
        write_json_report(report, result)
    if json_output:
        print_json(result)
        return
    render_bench(result)
    if result.profile_objects:
        render_profiles(result)
        console.print(f"profile plot: {escape(str(png))}")
    render_side_by_side(result)
    render_periodic(result)
    for side_png in side_pngs:
        console.print(f"ORT vs OpenVINO plot: {escape(str(side_png))}")
    if report is not None:
        console.print(f"report: {escape(str(report))}")
    render_verdict(result)  # the last line: the fastest runtime whose outputs pass


def _bench_board(files, device, report, json_output, knobs) -> None:
    """bench on a board (bench/board.py): one table titled with the board's CPU."""
    from edgekit.bench.board import bench_on_board
    from edgekit.onnxfile.outputs import refuse_if_input, register_input

    for path in files:
        register_input(path, "input model")
    if report is not None:
        refuse_if_input(report, "--report")
    with progress("bench on the board") as shown:
        result = bench_on_board(files, device, knobs, on_progress=lambda d, t: shown.count("timing (interleaved)", d, t))
    if report is not None:
        write_json_report(report, result)
    if json_output:
        print_json(result)
        return
    facts = result["board"]
    table = Table(title=f"board {escape(result['device'])}: {escape(result['cpu'])}, onnxruntime "
                        f"{escape(str(facts.get('onnxruntime')))}, batch {result['batch']}")
    paced = result["interval_ms"] is not None
    numbers = ["p50 ms", "p90 ms", "mean ms"] + ([f"p50 every {result['interval_ms']:g} ms", "p90 paced"] if paced else [])
    table.add_column("file")
    for column in (*numbers, "img/s", "size"):
        table.add_column(column, justify="right")
    for t in result["timings"]:
        cells = [f"{t['p50_ms']:.2f}", f"{t['p90_ms']:.2f}", f"{t['mean_ms']:.2f}"]
        if paced:
            cells += [f"{t['paced_p50_ms']:.2f}", f"{t['paced_p90_ms']:.2f}"]
        table.add_row(escape(Path(t["file"]).name), *cells, f"{t['img_per_s']:.1f}", human_bytes(t["size_bytes"]))
    console.print(table)
    for note in result["notes"]:
        console.print(f"note: {escape(note)}")
    if report is not None:
        console.print(f"report: {escape(str(report))}")


def render_bench(result) -> None:
    from edgekit.runtimes.openvino_model import precision_summary

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
    paced = result.interval_ms is not None
    numbers = ["p50 ms", "p90 ms", "mean ms"] + ([f"p50 every {result.interval_ms:g} ms", "p90 paced"] if paced else [])
    for column in (*numbers, "img/s", "size", "memory", "GFLOP/s", "of peak", "speedup", "smaller"):
        table.add_column(column, justify="right")
    for t in result.timings:
        # the runtime and provider columns say what the label's [ort cpu] / [openvino] says
        name = Path(t.file).name if several and t.file else t.label
        for kernels in ("x64quantprecision=1", "s8s8 as written"):
            if several and kernels in t.label:
                name += f" [{kernels}]"
        cells = [escape(name)] + ([t.runtime] if several else []) + [t.provider]
        if openvino:
            cells.append(precision_summary(t.executed_precisions) if t.executed_precisions else "-")
        table.add_row(
            *cells,
            f"{t.p50_ms:.2f}",
            f"{t.p90_ms:.2f}",
            f"{t.mean_ms:.2f}",
            *([f"{t.paced_p50_ms:.2f}", f"{t.paced_p90_ms:.2f}"] if paced else []),
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


def render_profiles(result) -> None:
    """Time per op type for each file (ORT CPU, median per node), and where each file gains or loses
    against the first."""
    names = list(result.profile_objects)
    ops: dict[str, dict[str, float]] = {}
    kinds: dict[str, str] = {}
    for name, prof in result.profile_objects.items():
        for op in prof.ops:
            ops.setdefault(op.op_type, {})[name] = op.ms
            kinds[op.op_type] = op.kind
    table = Table(title="per-node profile (ORT CPU, ms per run, by op type)")
    table.add_column("op type")
    table.add_column("kernel")
    for name in names:
        table.add_column(escape(name), justify="right")
    for op, row in sorted(ops.items(), key=lambda kv: -max(kv[1].values()))[:14]:
        table.add_row(op, kinds[op], *(f"{row[n]:.2f}" if n in row else "-" for n in names))
    table.add_row("[bold]total", "", *(f"{result.profile_objects[n].run_ms:.2f}" for n in names))
    console.print(table)
    for diff in result.profile_diffs:
        gains = ", ".join(f"{d['name']} {d['delta_ms']:+.2f} ms" for d in diff.get("gains", [])[:4])
        losses = ", ".join(f"{d['name']} {d['delta_ms']:+.2f} ms" for d in diff.get("losses", [])[:4])
        speed = f"{diff['speedup']:.2f}x in kernel time" if diff.get("speedup") else ""
        console.print(f"{escape(diff['file'])} vs {escape(diff['baseline'])} ({speed}): gains {gains or '-'}; loses {losses or '-'}")
