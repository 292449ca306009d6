"""`edgekit import`."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from edgekit.cli import options
from edgekit.cli.app import app, console, escape, handle_errors, human_bytes, print_json
from edgekit.cli.options import option
from edgekit.cli.output import progress
from edgekit.importer import TASKS, ImportOptions

Task = Enum("Task", {name: name for name in TASKS}, type=str)
I = ImportOptions  # noqa: E741  (the stage's options' defaults, help and ranges: importer/__init__.py)


@app.command("import")
@handle_errors
def import_command(
    source: Annotated[Path, typer.Argument(help="an .onnx file made elsewhere (torch.onnx, dynamo, onnxsim, Paddle2ONNX)")],
    input_shape: Annotated[str | None, option(I, "input_shape", "--input-shape")] = None,
    task: Annotated[Task | None, option(I, "task", "--task", case_sensitive=False)] = None,
    images: options.Images = I.images,
    seed: Annotated[int, option(I, "seed", "--seed")] = I.seed,
    untrained: Annotated[bool, option(I, "untrained", "--untrained")] = I.untrained,
    resize: Annotated[
        str | None, typer.Option("--resize", help="shorter side before the centre crop; 'none' (straight to the crop); "
                                 "'letterbox' (fit HxW keeping the aspect, pad right/bottom)")
    ] = None,
    crop: Annotated[str | None, typer.Option("--crop", help="the model's input, N or HxW (default: --input-shape's)")] = None,
    mean: options.Mean = None,
    std: options.Std = None,
    interpolation: options.InterpolationOption = None,
    channels: options.ChannelsOption = None,
    input_channels: options.InputChannels = None,
    pad_value: Annotated[
        int | None, typer.Option("--pad-value", min=0, max=255, help="with --resize letterbox: the padding's pixel value (default 0)")
    ] = None,
    preprocessing_file: options.PreprocessingFile = None,
    output: Annotated[Path | None, typer.Option("-o", "--output", help="file or folder (default: exports/<name>.onnx)")] = None,
    json_output: options.Json = False,
) -> None:
    """Normalise an ONNX file made elsewhere into an edgekit fp32 file: pin its input, turn Constant weights into
    initializers, raise the opset to 13, fold shape-only subgraphs, check it against the original in ONNX Runtime."""
    from edgekit.data.preprocessing import Preprocessing
    from edgekit.importer import import_onnx
    from edgekit.importer.normalise import parse_input_shape

    pinned = parse_input_shape(input_shape) if input_shape is not None else None
    declared = any(v is not None for v in (resize, crop, mean, std, interpolation, channels, input_channels, pad_value,
                                           preprocessing_file))
    preprocessing = None
    if declared:
        size = _input_hw(source, pinned)
        preprocessing = Preprocessing.from_options(
            size, resize=resize, crop=crop, mean=mean, std=std,
            interpolation=interpolation.value if interpolation else None, channels=channels.value if channels else None,
            input_channels=input_channels, pad_value=pad_value, file=preprocessing_file,
            size_option="--input-shape" if pinned else "the file's input",
            size_fix=f"give --crop {size if isinstance(size, int) else '%dx%d' % size} or drop it",
        )
    with progress(f"import {source.name}") as shown:
        knobs = ImportOptions(input_shape=pinned, task=task.value if task else None, output=output, images=images,
                              seed=seed, preprocessing=preprocessing, untrained=untrained)
        result = import_onnx(source, knobs, on_stage=shown.stage)
    if json_output:
        print_json(result)
    else:
        render_import(result)


def _input_hw(source: Path, pinned) -> int | tuple[int, int]:
    """The input's (H, W): --input-shape's, else the file's static ones (the stage words a dynamic H/W)."""
    if pinned is not None:
        h, w = pinned[2], pinned[3]
    else:
        from edgekit.onnxfile.artifact import check_readable_file, load_onnx, load_work_file
        from edgekit.onnxfile.graph import input_spec

        check_readable_file(source, "ONNX file")
        try:
            proto = load_work_file(source, external_data=False)  # the graph only: its weights are not needed here
        except Exception:  # unparsable: the validating loader words it as every command does
            proto = load_onnx(source, check=False)
        _c, h, w = input_spec(proto, source).chw
        if h is None or w is None:
            from edgekit.core.errors import BadInput

            raise BadInput(f"{source}: the input's height/width are dynamic; pass --input-shape N,C,H,W "
                           "(e.g. --input-shape 1,3,48,192) with the preprocessing options")
    return h if h == w else (h, w)


def render_import(result) -> None:
    from edgekit.data.preprocessing import Preprocessing

    meta = result.metadata
    console.print(f"[bold green]wrote[/] {escape(str(result.path))}  ({human_bytes(result.file_bytes)}, opset "
                  f"{meta['opset']}, from {escape(str(result.source))}, opset {meta['imported']['opset']}, "
                  f"{escape(meta['imported'].get('producer') or 'producer not recorded')})")
    for note in result.notes:
        console.print(f"[yellow]note:[/] {escape(note)}")
    facts = Table(show_header=False, show_edge=False)
    facts.add_column("what")
    facts.add_column("value")
    facts.add_row("input", f"{escape(meta['input_name'])} ({', '.join(map(str, meta['input_shape']))})")
    how = "detected from the output's shape" if result.task_detected else "as given"
    facts.add_row("task", f"{result.task} ({how}; output {escape(meta['output_name'])} "
                          f"({', '.join(map(str, result.output_shape))}))")
    for i, change in enumerate(result.changes or ["none: the graph was already normalised"]):
        facts.add_row("changes" if i == 0 else "", escape(change))
    if meta["imported"].get("weights") == "untrained":
        facts.add_row("weights", "declared untrained (--untrained): quantize, verify and package apply the random-weight "
                                 "gates, and their int8 figures say nothing about accuracy")
    before, after = result.structure_before, result.structure_after
    facts.add_row("grouped convs / concats (before / after)",
                  f"{before['grouped_convs']} / {after['grouped_convs']}, {before['concats']} / {after['concats']}")
    facts.add_row("preprocessing", escape(Preprocessing.from_dict(meta["preprocessing"]).describe()))
    vs = result.vs_original
    check = meta["imported"]["check"]
    exact = "bit-exact" if check.get("bit_exact") else f"max abs {vs.max_abs:.2e}, mean abs {vs.mean_abs:.2e}"
    agree = f", top-1 agreement {vs.top1_agreement:.0%}" if result.task == "classify" else ""
    facts.add_row("vs the original (ORT CPU)",
                  f"{exact} (bound: atol {check['atol']:g} + rtol {check['rtol']:g}){agree} on {escape(result.check_inputs)}")
    facts.add_row("time per stage", ", ".join(f"{k} {v:.2f}s" for k, v in result.stage_seconds.items()))
    console.print(facts)
