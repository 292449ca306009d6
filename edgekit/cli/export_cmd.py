"""`edgekit export`."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from edgekit.cli.app import app, console, err_console, handle_errors, human_bytes


class Exporter(str, Enum):
    torchscript = "torchscript"
    dynamo = "dynamo"


@app.command("export")
@handle_errors
def export_command(
    model: Annotated[str, typer.Argument(help="model name or alias (see `edgekit models`)")],
    opset: Annotated[int, typer.Option("--opset", help="ONNX opset of the file; checked, never silently changed")] = 17,
    input_size: Annotated[int | None, typer.Option("--input-size", help="height = width (default: the model's, 224)")] = None,
    batch: Annotated[int, typer.Option("--batch", help="static batch size")] = 1,
    dynamic_batch: Annotated[bool, typer.Option("--dynamic-batch", help="make the batch axis dynamic")] = False,
    num_classes: Annotated[int | None, typer.Option("--num-classes", help="default: the model's, or the weights file's")] = None,
    weights: Annotated[
        Path | None, typer.Option("--weights", help="state_dict / checkpoint (.pt, .pth, .safetensors)", dir_okay=False)
    ] = None,
    pretrained: Annotated[bool, typer.Option("--pretrained", help="torchvision weights from the local torch hub cache")] = False,
    seed: Annotated[int, typer.Option("--seed", help="seed of the random weights")] = 0,
    exporter: Annotated[Exporter, typer.Option("--exporter", case_sensitive=False)] = Exporter.torchscript,
    no_simplify: Annotated[bool, typer.Option("--no-simplify", help="skip onnxsim")] = False,
    images: Annotated[
        Path | None, typer.Option("--images", help="photos for the check against PyTorch (default: calibration/)")
    ] = None,
    output: Annotated[Path | None, typer.Option("-o", "--output", help="file or folder (default exports/<model>.onnx)")] = None,
) -> None:
    """Build MODEL in PyTorch, export it to ONNX, simplify it, check it against PyTorch, write it."""
    from edgekit.export import export

    with err_console.status("exporting") as status:
        result = export(
            model,
            opset=opset,
            input_size=input_size,
            batch=batch,
            dynamic_batch=dynamic_batch,
            num_classes=num_classes,
            weights=weights,
            pretrained=pretrained,
            seed=seed,
            exporter=exporter.value,
            simplify_graph=not no_simplify,
            output=output,
            images=images,
            on_stage=lambda stage: status.update(f"{model}: {stage}"),
        )
    render_export(result)


def render_export(result) -> None:
    meta = result.metadata
    console.print(
        f"[bold green]wrote[/] {result.path}  ({human_bytes(result.file_bytes)}, opset {meta['opset']}, "
        f"{meta['exporter']} exporter, {'simplified' if result.simplified else 'not simplified'})"
    )
    for note in result.notes:
        console.print(f"[yellow]note:[/] {note}")

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
    facts.add_row("weights", _weights_text(meta["weights"]))
    vs = result.vs_torch
    facts.add_row(
        "vs PyTorch (ORT CPU)",
        f"max abs {vs.max_abs:.2e}, mean abs {vs.mean_abs:.2e}, top-1 agreement {vs.top1_agreement:.0%}, "
        f"SQNR {vs.sqnr_db:.1f} dB on {result.check_inputs}",
    )
    facts.add_row("time per stage", ", ".join(f"{k} {v:.2f}s" for k, v in result.stage_seconds.items()))
    console.print(facts)


def _weights_text(weights: dict) -> str:
    if weights["kind"] == "random":
        return f"random(seed={weights['seed']})"
    return f"{weights.get('name') or weights.get('path')} (sha256 {weights['sha256'][:12]})"
