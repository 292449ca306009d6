"""`edgekit quantize`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from edgekit.cli import options
from edgekit.cli.options import option
from edgekit.cli.app import app, console, escape, handle_errors, human_bytes, print_json, wrote
from edgekit.cli.output import progress
from edgekit.quantize.options import QuantizeOptions


Q = QuantizeOptions  # every option's default, help and range: quantize/options.py


@app.command("quantize")
@handle_errors
def quantize_command(
    model: Annotated[Path, typer.Argument(help="fp32 .onnx file (from edgekit export, or foreign)")],
    calibration: Annotated[Path | None, option(Q, "calibration", "--calibration")] = Q.calibration,
    samples: Annotated[int, option(Q, "samples", "--samples")] = Q.samples,
    method: Annotated[options.Method | None, option(Q, "method", "--method", case_sensitive=False)] = Q.method,
    target: options.TargetOption = options.Target(Q.target),
    per_channel: Annotated[bool | None, option(Q, "per_channel", "--per-channel/--per-tensor")] = Q.per_channel,
    exclude: Annotated[list[str] | None, option(Q, "exclude", "--exclude")] = None,
    augment: Annotated[bool, option(Q, "augment", "--augment")] = Q.augment,
    seed: Annotated[int, option(Q, "seed", "--seed")] = Q.seed,
    min_top1_agreement: Annotated[
        float | None, option(Q, "min_top1_agreement", "--min-agreement", "--min-top1-agreement")
    ] = Q.min_top1_agreement,
    min_sqnr: Annotated[float | None, option(Q, "min_sqnr", "--min-sqnr")] = Q.min_sqnr,
    dataset: Annotated[Path | None, option(Q, "dataset", "--dataset", file_okay=False)] = Q.dataset,
    max_drop: Annotated[float | None, option(Q, "max_drop", "--max-drop")] = Q.max_drop,
    rewrites: Annotated[bool, option(Q, "rewrites", "--rewrites/--no-rewrites")] = Q.rewrites,
    fallback: Annotated[bool, option(Q, "fallback", "--fallback/--no-fallback")] = Q.fallback,
    ranges_cache: Annotated[Path | None, option(Q, "ranges_cache", "--ranges-cache", file_okay=False)] = Q.ranges_cache,
    device: options.Device = Q.device,
    device_timeout: options.DeviceTimeout = None,
    output: options.Output = Q.output,
    json_output: options.Json = False,
) -> None:
    """Static INT8 quantization (QDQ) with calibration data and a recipe for the target CPU."""
    from edgekit.quantize import quantize

    knobs = QuantizeOptions(
        calibration=calibration, samples=samples, method=method.value if method else None, target=target.value,
        per_channel=per_channel, exclude=exclude or [], augment=augment, seed=seed, output=output,
        min_top1_agreement=min_top1_agreement, min_sqnr=min_sqnr, dataset=dataset, max_drop=max_drop,
        fallback=fallback, rewrites=rewrites, device=device, ranges_cache=ranges_cache,
    )
    with progress("quantize") as shown:

        def on_progress(kind: str, done: int, total: int) -> None:
            shown.count({"decode": "decoding images", "calibrate": "calibrating"}[kind], done, total)

        result = quantize(model, knobs, on_stage=shown.stage, on_progress=on_progress)
    if json_output:
        print_json(result)
    else:
        render_quantize(result)


def render_quantize(result) -> None:
    r = result.recipe
    table = wrote(result.path, f"int8, QDQ, target {r.target}", result.notes)
    table.add_row(
        "recipe",
        f"activations {r.activation_type}{' symmetric' if r.activation_symmetric else ''}, weights {r.weight_type} "
        f"{'per-channel' if r.per_channel else 'per-tensor'}{', 7-bit (reduce_range)' if r.reduce_range else ''}, "
        f"{r.method} calibration",
    )
    table.add_row("why", r.reason)
    for change in result.prepared:
        table.add_row("prepared", escape(change))
    if result.excluded:
        table.add_row("kept in float", f"{len(result.excluded)} nodes")
    table.add_row(
        "size",
        f"{human_bytes(result.fp32_bytes)} -> {human_bytes(result.int8_bytes)} ({result.size_ratio:.2f}x smaller)",
    )
    table.add_row("runs in int8 (after ORT optimisation)", result.coverage.describe())
    table.add_row("grouped convs / concats kept", f"{result.grouped_convs} / {result.concats}")
    if result.batchnorm_rewritten:
        table.add_row(
            "BatchNormalization",
            f"{result.batchnorm_rewritten} not foldable into a conv: rewritten as depthwise 1x1 Conv to run in int8",
        )
    table.add_row("calibration", escape(f"{result.calibration.description}; {result.calibration_seconds:.1f}s"))
    h = result.holdout
    decision = "" if result.task == "dense" else f"top-1 agreement {h.top1_agreement:.1%}, top-5 {h.top5_agreement:.1%}, "
    table.add_row(
        "vs fp32 on held-out data" + (" (dense output)" if result.task == "dense" else ""),
        f"{decision}SQNR {h.sqnr_db:.1f} dB, cosine {h.cosine:.4f}"
        + (f", max abs {h.max_abs:.3g}" if result.task == "dense" else "")
        + f" ({escape(result.calibration.holdout_description)})"
        + (escape(f" [{result.judgement.kernels}, as its target computes]") if result.judgement.gate_session else ""),
    )
    if result.holdout_default is not None:
        d = result.holdout_default
        table.add_row(
            "this CPU's default int8 kernels",
            f"top-1 agreement {d.top1_agreement:.1%}, SQNR {d.sqnr_db:.1f} dB ({escape(result.cpu.kind())}; not the file's target)",
        )
    table.add_row("budget", escape(result.budget))
    if result.gates:
        table.add_row("gates", escape(result.gates))
    if result.dataset_top1:
        fp32, int8 = result.dataset_top1
        table.add_row("top-1 on --dataset", f"fp32 {fp32:.2f} %, int8 {int8:.2f} % (drop {fp32 - int8:+.2f} points)")
    from edgekit.judge.compare import untrained

    if untrained(result.metadata):
        table.add_row("note", "random weights: these figures show the file computes what fp32 does; they do not predict accuracy")
    console.print(table)
    if result.fallback is not None:
        render_fallback(result.fallback)


def render_fallback(fallback) -> None:
    """The fallback's steps (each QDQ group reverted to fp32, the held-out metric after it, kept or undone), what it
    cost in runs, and what the kept fp32 groups cost in latency."""
    cached = ", ranking from the cache" if fallback.cached else ""
    runs = ", ".join(f"{k} {v}" for k, v in (fallback.runs or {}).items())
    steps = Table(title=f"fp32 fallback: {fallback.reverted} of {fallback.groups} QDQ groups back in fp32 "
                        f"({fallback.seconds:.1f} s; runs: {runs or 'none'}{cached})")
    for column in ("step", "group", "fp32 nodes", "held-out SQNR dB", "top-1 drop", "verdict"):
        steps.add_column(column, justify="left" if column in ("fp32 nodes", "verdict") else "right")
    for i, step in enumerate(fallback.steps, 1):
        nodes = ", ".join(step.nodes[:3]) + (f" (+{len(step.nodes) - 3})" if len(step.nodes) > 3 else "")
        drop = step.trial.drop
        steps.add_row(str(i), str(step.group), escape(nodes), f"{step.sqnr_db:.1f}",
                      "-" if drop is None else f"{drop:+.2f}", step.verdict)
    console.print(steps)
    if fallback.latency_ms:
        ms = fallback.latency_ms
        console.print(
            "latency (CPU, batch 1, interleaved p50): "
            + ", ".join(f"{k} {v:.2f} ms" for k, v in ms.items())
            + f"; the fallback costs {ms['mixed'] / ms['int8']:.2f}x the full-int8 time"
        )
