"""`edgekit export`."""

from __future__ import annotations

from enum import Enum
from typing import Annotated

import typer
from rich.table import Table

from edgekit.cli import options
from edgekit.cli.options import option
from edgekit.cli.app import app, console, escape, handle_errors, human_bytes, print_json
from edgekit.cli.output import progress
from edgekit.export import EXPORTERS, ExportOptions

Exporter = Enum("Exporter", {name: name for name in EXPORTERS}, type=str)
E = ExportOptions  # the stage's options' defaults, help and ranges: export.py


@app.command("export")
@handle_errors
def export_command(
    model: Annotated[str, typer.Argument(
        help="model name or alias (see `edgekit models`), or your own: path/to/file.py:factory, package.module:factory "
        "(the factory returns an nn.Module; gets num_classes when it takes it; --input-size default 224), timm:NAME"
    )],
    opset: Annotated[int, option(E, "opset", "--opset")] = E.opset,
    input_size: Annotated[int | None, option(E, "input_size", "--input-size")] = E.input_size,
    batch: options.Batch = E.batch,
    dynamic_batch: Annotated[bool, option(E, "dynamic_batch", "--dynamic-batch")] = E.dynamic_batch,
    num_classes: Annotated[int | None, option(E, "num_classes", "--num-classes")] = E.num_classes,
    weights: options.Weights = E.weights,
    pretrained: options.Pretrained = E.pretrained,
    seed: Annotated[int, option(E, "seed", "--seed")] = E.seed,
    exporter: Annotated[Exporter, option(E, "exporter", "--exporter", case_sensitive=False)] = Exporter(E.exporter),
    no_simplify: Annotated[bool, option(E, "simplify_graph", "--no-simplify")] = not E.simplify_graph,
    images: options.Images = E.images,
    resize: Annotated[
        str | None, typer.Option("--resize", help="shorter side before the centre crop, or 'none' (resize straight to the crop)")
    ] = None,
    crop: Annotated[int | None, typer.Option("--crop", help="centre crop = the model's input size (default: --input-size)")] = None,
    mean: options.Mean = None,
    std: options.Std = None,
    interpolation: options.InterpolationOption = None,
    channels: options.ChannelsOption = None,
    input_channels: options.InputChannels = None,
    preprocessing_file: options.PreprocessingFile = None,
    output: options.Output = E.output,
    json_output: options.Json = False,
) -> None:
    """Build MODEL in PyTorch, export it to ONNX, simplify it, check it against PyTorch, write it."""
    from edgekit.export import export
    from edgekit.models.reference import resolve_model
    from edgekit.data.preprocessing import Preprocessing

    declared = any(v is not None for v in (resize, crop, mean, std, interpolation, channels, input_channels, preprocessing_file))
    preprocessing = None
    if declared:
        size = input_size or crop or resolve_model(model).default_input_size
        preprocessing = Preprocessing.from_options(
            size, resize=resize, crop=crop, mean=mean, std=std,
            interpolation=interpolation.value if interpolation else None, channels=channels.value if channels else None,
            input_channels=input_channels, file=preprocessing_file,
        )
        input_size = input_size or preprocessing.crop
    with progress(f"export {model}") as shown:
        knobs = ExportOptions(
            opset=opset, input_size=input_size, batch=batch, dynamic_batch=dynamic_batch, num_classes=num_classes,
            weights=weights, pretrained=pretrained, seed=seed, exporter=exporter.value, simplify_graph=not no_simplify,
            output=output, images=images, preprocessing=preprocessing,
        )
        result = export(model, knobs, on_stage=shown.stage)
    entry = result.metadata.get("entry")
    if input_size is None and entry is not None:
        why = "timm's own input size" if entry["kind"] == "timm" else "a factory does not say its input size"
        result.notes.append(f"no --input-size: exported at {result.metadata['input_size']} px ({why})")
    if json_output:
        print_json(result)
    else:
        render_export(result)


def render_export(result) -> None:
    from edgekit.data.preprocessing import Preprocessing

    meta = result.metadata
    console.print(
        f"[bold green]wrote[/] {escape(str(result.path))}  ({human_bytes(result.file_bytes)}, opset {meta['opset']}, "
        f"{meta['exporter']} exporter, {'simplified' if result.simplified else 'not simplified'})"
    )
    for note in result.notes:
        console.print(f"[yellow]note:[/] {escape(note)}")

    ops = Table(title="ONNX nodes", show_edge=False)
    ops.add_column("op")
    ops.add_column("exported", justify="right")
    ops.add_column("final", justify="right")
    for op in sorted(set(result.ops_exported) | set(result.ops_final), key=lambda o: -result.ops_exported.get(o, 0)):
        ops.add_row(op, str(result.ops_exported.get(op, 0)), str(result.ops_final.get(op, 0)))
    ops.add_row("[bold]total", str(sum(result.ops_exported.values())), str(sum(result.ops_final.values())))
    console.print(ops)

    facts = Table(show_header=False, show_edge=False)
    facts.add_column("what")
    facts.add_column("value")
    structure = result.torch_structure
    facts.add_row("params", f"{structure.params:,}")
    facts.add_row("grouped convs (PyTorch / ONNX)", f"{structure.grouped_convs} / {result.grouped_convs}")
    facts.add_row("concatenations (PyTorch / ONNX)", f"{structure.concats} / {result.concats}")
    facts.add_row("weights", escape(_weights_text(meta["weights"])))
    facts.add_row("preprocessing", escape(Preprocessing.from_dict(meta["preprocessing"]).describe()))
    vs = result.vs_torch
    facts.add_row(
        "vs PyTorch (ORT CPU)",
        f"max abs {vs.max_abs:.2e}, mean abs {vs.mean_abs:.2e}, top-1 agreement {vs.top1_agreement:.0%}, "
        f"SQNR {vs.sqnr_db:.1f} dB on {escape(result.check_inputs)}",
    )
    facts.add_row("time per stage", ", ".join(f"{k} {v:.2f}s" for k, v in result.stage_seconds.items()))
    console.print(facts)


def _weights_text(weights: dict) -> str:
    if weights["kind"] == "random":
        return f"random(seed={weights['seed']})"
    return f"{weights.get('name') or weights.get('path')} (sha256 {weights['sha256'][:12]})"
