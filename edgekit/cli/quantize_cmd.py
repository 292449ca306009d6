"""`edgekit quantize`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from edgekit.cli import options
from edgekit.cli.app import app, console, escape, handle_errors, human_bytes, print_json, wrote
from edgekit.cli.output import progress
from edgekit.limits import MAX_SAMPLES
from edgekit.quantize import DEFAULT_SAMPLES


@app.command("quantize")
@handle_errors
def quantize_command(
    model: Annotated[Path, typer.Argument(help="fp32 .onnx file (from edgekit export, or foreign)")],
    calibration: Annotated[
        Path | None, typer.Option("--calibration", help="image folder or .npz/.npy of preprocessed tensors (default: calibration/)")
    ] = None,
    samples: Annotated[
        int, typer.Option("--samples", min=1, max=MAX_SAMPLES, help="calibration samples, picked deterministically")
    ] = DEFAULT_SAMPLES,
    method: Annotated[options.Method | None, typer.Option("--method", case_sensitive=False, help="default: the target's")] = None,
    target: options.TargetOption = options.Target.auto,
    per_channel: Annotated[
        bool | None, typer.Option("--per-channel/--per-tensor", help="weight scales (default: the target's)")
    ] = None,
    exclude: Annotated[
        list[str] | None, typer.Option("--exclude", help="node name or op type to keep in float (repeatable)")
    ] = None,
    augment: Annotated[bool, typer.Option("--augment", help="fill up to --samples with seeded crops and flips")] = False,
    seed: Annotated[int, typer.Option("--seed", min=0, max=options.MAX_SEED, help="seed of the calibration pick")] = 0,
    min_top1_agreement: Annotated[
        float | None,
        typer.Option("--min-agreement", "--min-top1-agreement", callback=options.between(0.0, 1.0),
                     help="budget: held-out top-1 agreement with fp32, 0..1 (default 0.5; 0.95 for trained weights)"),
    ] = None,
    min_sqnr: Annotated[
        float | None,
        typer.Option("--min-sqnr", callback=options.between(0.0, 200.0),
                     help="budget: held-out SQNR of the logits, dB (default 10; 20 for trained weights)"),
    ] = None,
    dataset: Annotated[
        Path | None, typer.Option("--dataset", file_okay=False, help="labelled images (one sub-folder per class) for --max-drop")
    ] = None,
    max_drop: Annotated[
        float | None,
        typer.Option("--max-drop", callback=options.between(0.0, 100.0), help="budget: top-1 drop on --dataset, points"),
    ] = None,
    rewrites: Annotated[
        bool, typer.Option("--rewrites/--no-rewrites", help="the recipe's graph rewrites for speed (default on; see README)")
    ] = True,
    fallback: Annotated[
        bool, typer.Option("--fallback/--no-fallback", help="keep the most sensitive layers in fp32 when the budget is missed")
    ] = True,
    ranges_cache: Annotated[
        Path | None,
        typer.Option("--ranges-cache", file_okay=False,
                     help="folder of activation ranges kept by content: calibrate once, reuse on every later run"),
    ] = None,
    device: options.Device = None,
    output: options.Output = None,
    json_output: options.Json = False,
) -> None:
    """Static INT8 quantization (QDQ) with calibration data and a recipe for the target CPU."""
    from edgekit.quantize import quantize

    with progress("quantize") as shown:

        def on_progress(kind: str, done: int, total: int) -> None:
            shown.count({"decode": "decoding images", "calibrate": "calibrating"}[kind], done, total)

        result = quantize(
            model,
            calibration=calibration,
            samples=samples,
            method=method.value if method else None,
            target=target.value,
            per_channel=per_channel,
            exclude=exclude or [],
            augment=augment,
            seed=seed,
            output=output,
            min_top1_agreement=min_top1_agreement,
            min_sqnr=min_sqnr,
            dataset=dataset,
            max_drop=max_drop,
            fallback=fallback,
            rewrites=rewrites,
            device=device,
            ranges_cache=ranges_cache,
            on_stage=shown.stage,
            on_progress=on_progress,
        )
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
    table.add_row(
        "vs fp32 on held-out data",
        f"top-1 agreement {h.top1_agreement:.1%}, top-5 {h.top5_agreement:.1%}, SQNR {h.sqnr_db:.1f} dB, "
        f"cosine {h.cosine:.4f} ({escape(result.calibration.holdout_description)})"
        + (escape(f" [{result.judgement.kernels}, as its target computes]") if result.judgement.gate_session else ""),
    )
    if result.holdout_default is not None:
        d = result.holdout_default
        table.add_row(
            "this CPU's default int8 kernels",
            f"top-1 agreement {d.top1_agreement:.1%}, SQNR {d.sqnr_db:.1f} dB ({escape(result.cpu.kind())}; not the file's target)",
        )
    table.add_row("budget", escape(result.budget))
    if result.dataset_top1:
        fp32, int8 = result.dataset_top1
        table.add_row("top-1 on --dataset", f"fp32 {fp32:.2f} %, int8 {int8:.2f} % (drop {fp32 - int8:+.2f} points)")
    if result.metadata.get("weights", {}).get("kind") == "random":
        table.add_row("note", "random weights: these figures show the file computes what fp32 does; they do not predict accuracy")
    console.print(table)
    if result.fallback is not None:
        render_fallback(result.fallback)


def render_fallback(fallback) -> None:
    """The nodes kept in fp32, the trials, and what the fallback costs in latency."""
    kept = set(fallback.chosen.fp32_nodes) if fallback.chosen else set()
    nodes = Table(title="kept in fp32 (most added error first, from the per-layer analysis)")
    for column in ("node", "op", "int8 SQNR dB"):
        nodes.add_column(column, justify="right" if column.endswith("dB") else "left")
    for row in fallback.ranking:
        if row["node"] in kept:
            nodes.add_row(escape(row["node"]), row["op_type"], f"{row['sqnr_db']:.1f}")
    console.print(nodes)
    trials = Table(title=f"fallback trials ({fallback.seconds:.1f} s)")
    for column in ("fp32 nodes", "held-out SQNR dB", "agreement", "top-1 drop", "passed"):
        trials.add_column(column, justify="right")
    for t in fallback.trials:
        trials.add_row(str(len(t.fp32_nodes)), f"{t.holdout.sqnr_db:.1f}", f"{t.holdout.top1_agreement:.1%}",
                       "-" if t.drop is None else f"{t.drop:+.2f}", "yes" if t is fallback.chosen else "")
    console.print(trials)
    if fallback.latency_ms:
        ms = fallback.latency_ms
        console.print(
            "latency (CPU, batch 1, interleaved p50): "
            + ", ".join(f"{k} {v:.2f} ms" for k, v in ms.items())
            + f"; the fallback costs {ms['mixed'] / ms['int8']:.2f}x the full-int8 time"
        )
