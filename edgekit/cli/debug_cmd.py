"""`edgekit debug`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from edgekit.cli import options
from edgekit.cli.app import app, console, escape, handle_errors, print_json
from edgekit.cli.output import progress


@app.command("debug")
@handle_errors
def debug_command(
    model_file: Annotated[Path, typer.Argument(help="the int8 .onnx file that fails its gates")],
    parent: Annotated[Path | None, typer.Option(
        "--parent", dir_okay=False, help="its fp32 parent (default: found beside it by the sha256 its metadata records)")] = None,
    images: options.Images = None,
    inputs: Annotated[Path | None, typer.Option(
        "--inputs", dir_okay=False, help="preprocessed tensors (.npz/.npy) to judge on instead of photos")] = None,
    device: options.Device = None,
    reduce: Annotated[bool, typer.Option(
        "--reduce", help="also write the smallest failing subgraph (.onnx) and its inputs (.npz) under -o")] = False,
    output: Annotated[Path | None, typer.Option(
        "-o", "--output", file_okay=False, help="folder for --reduce (default: FILE.debug beside the file)")] = None,
    json_output: options.Json = False,
) -> None:
    """Which layers must stay fp32 for an int8 file to pass its gates: bisects its QDQ groups (reverted in the
    quantized graph, weights from the fp32 parent) and prints the --exclude list for edgekit quantize."""
    from edgekit.debug.search import debug

    with progress("debug") as shown:
        result = debug(model_file, parent=parent, images=images, inputs=inputs, device=device, reduce=reduce,
                       output=output, stage=shown.stage)
    if json_output:
        print_json(result)
        return
    render_debug(result)


def render_debug(result) -> None:
    before = result.before
    if result.passed_as_is:
        console.print(f"[bold green]PASS[/] {escape(str(result.path))} passes its gates as it is "
                      f"(SQNR {before['sqnr_db']:.1f} dB, top-1 agreement {before['top1_agreement']:.0%}): "
                      "nothing to exclude", soft_wrap=True)
        return
    after = result.metric
    console.print(f"{escape(str(result.path))}: SQNR {before['sqnr_db']:.1f} dB, top-1 agreement "
                  f"{before['top1_agreement']:.0%} against its fp32 parent; with {len(result.culprits)} of "
                  f"{result.groups} QDQ groups in fp32: SQNR {after['sqnr_db']:.1f} dB, top-1 agreement "
                  f"{after['top1_agreement']:.0%} ([green]PASS[/])")
    console.print(f"[dim]gates: {escape(result.gates)}[/]")
    for group in result.culprits:
        console.print(f"  {escape(group.describe())}")
    console.print("ORT runs: " + ", ".join(f"{escape(s.name)} {s.runs}" for s in result.steps)
                  + f" ({result.runs} in all)", soft_wrap=True)
    console.print("nodes_to_exclude: " + escape(repr(result.exclude)), soft_wrap=True)
    console.print("to quantize again with them in fp32:")
    console.print(escape(result.quantize_command()), soft_wrap=True, highlight=False)
    if result.reduced:
        r = result.reduced
        which = f"group {r['groups'][0]}" if len(r["groups"]) == 1 else f"groups {', '.join(map(str, r['groups']))}"
        console.print(f"wrote {escape(r['folder'])}/subgraph.onnx ({r['nodes']} nodes, {which}: SQNR "
                      f"{r['sqnr_db']:.1f} dB against its fp32 twin, gate {r['gate_db']:g} dB), subgraph.fp32.onnx, "
                      "inputs.npz")
    for note in result.notes:
        console.print(f"[yellow]note:[/] {escape(note)}")


LOCALIZE_TAKES = {"images", "inputs", "parent", "device"}  # the verify knobs `verify --localize` passes on


def localize_for_verify(model_file: Path, knobs, others: dict, json_output: bool) -> None:
    """`edgekit verify FILE --localize`: `edgekit debug FILE` with verify's --images/--inputs/--parent/--device;
    any other verify option would be dropped silently, so it is refused."""
    import dataclasses

    from edgekit.core.errors import BadInput

    defaults = type(knobs)()
    given = [f.name for f in dataclasses.fields(knobs)
             if f.name not in LOCALIZE_TAKES and getattr(knobs, f.name) != getattr(defaults, f.name)]
    given += [name for name, value in others.items() if value is not None]
    if given:
        shown = ", ".join(n if n.startswith("--") else "--" + n.replace("_", "-") for n in given)
        raise BadInput(f"--localize does not take {shown}",
                       hint="it runs edgekit debug: --images or --inputs, --parent, --device, --json")
    debug_command(model_file, parent=knobs.parent, images=knobs.images, inputs=knobs.inputs, device=knobs.device,
                  reduce=False, output=None, json_output=json_output)
