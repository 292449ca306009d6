"""`edgekit convert`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from edgekit.cli import options
from edgekit.cli.options import option
from edgekit.cli.app import app, console, escape, handle_errors, human_bytes, print_json, wrote
from edgekit.cli.output import progress
from edgekit.convert import ConvertOptions
from edgekit.core.errors import BadInput

CPU_NOTE = (
    "ONNX Runtime's CPU provider has few fp16 kernels: it casts the fp16 weights up and runs the ops in fp32, so "
    "the comparison measures the fp16 weights, the activation range is checked separately, and an fp16 file is no "
    "faster on a CPU. fp16 is for GPU and NPU targets, which also round activations and accumulate in fp16: verify "
    "it there (edgekit verify FILE --providers cuda)."
)
C = ConvertOptions  # the stage's options' defaults, help and ranges: convert.py


@app.command("convert")
@handle_errors
def convert_command(
    model_file: Annotated[Path, typer.Argument(metavar="MODEL", help="fp32 .onnx file (from edgekit export or import, or foreign)")],
    fp16: Annotated[bool, option(C, "precision", "--fp16")] = False,  # the only precision: C.precision
    keep_io_types: Annotated[bool, option(C, "keep_io_types", "--keep-io-types/--fp16-io")] = C.keep_io_types,
    images: options.Images = C.images,
    min_top1_agreement: options.MinTop1 = C.min_top1_agreement,
    min_sqnr: options.MinSqnr = C.min_sqnr,
    model: Annotated[str | None, option(C, "model", "--model")] = C.model,
    output: options.Output = C.output,
    json_output: options.Json = False,
) -> None:
    """Convert an fp32 file to fp16, checked with the fp16 gates against its reference (PyTorch, or the original of an imported file)."""
    from edgekit.convert import convert

    if not fp16:
        raise BadInput("say what to convert to: --fp16 (the only conversion; int8 is `edgekit quantize`)")
    with progress("convert") as shown:
        knobs = ConvertOptions(precision="fp16", output=output, keep_io_types=keep_io_types, images=images,
                               min_top1_agreement=min_top1_agreement, min_sqnr=min_sqnr, model=model)
        result = convert(model_file, knobs, on_stage=shown.stage)
    if json_output:
        print_json(result)
    else:
        render_convert(result)


def render_convert(result) -> None:
    io = "float32 inputs/outputs" if result.keep_io_types else "float16 inputs/outputs"
    table = wrote(result.path, f"fp16, {io}, {result.tool} {result.tool_version}", result.notes)
    table.add_row(
        "size", f"{human_bytes(result.parent_bytes)} -> {human_bytes(result.bytes)} ({result.size_ratio:.2f}x smaller)"
    )
    table.add_row("grouped convs / concats kept", f"{result.grouped_convs} / {result.concats}")
    t = result.tolerance
    gates = []
    if t.min_top1_agreement is not None:
        gates.append(f"top-1 agreement >= {t.min_top1_agreement:.0%}")
    if t.min_sqnr_db is not None:
        gates.append(f"SQNR >= {t.min_sqnr_db:g} dB")
    table.add_row("gates", f"{', '.join(gates)}, no NaN/Inf ({escape(result.tolerance_source)})")
    c = result.comparison
    table.add_row(
        f"vs {escape(result.reference)}",
        f"[green]PASS[/] SQNR {c.sqnr_db:.1f} dB, top-1 agreement {c.top1_agreement:.0%}, top-5 {c.top5_agreement:.0%}, "
        f"max abs {c.max_abs:.3g}, cosine {c.cosine:.6f} on {escape(result.inputs)}",
    )
    p = result.vs_parent
    table.add_row("vs the fp32 file (ORT)", f"SQNR {p.sqnr_db:.1f} dB, top-1 agreement {p.top1_agreement:.0%}, max abs {p.max_abs:.3g}")
    a = result.activations
    if a is not None:
        table.add_row(
            "largest activation (fp32 model)",
            f"{a.max_abs:.4g} in {escape(a.tensor)} (fp16 max 65504: {a.headroom:.0f}x headroom; {a.tensors} tensors)",
        )
    table.add_row("batch sizes run", ", ".join(map(str, result.batches)))
    console.print(table)
    console.print(f"[dim]{escape(CPU_NOTE)}[/]")
