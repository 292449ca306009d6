"""`edgekit models` and `edgekit summary`."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from edgekit.cli import options
from edgekit.cli.app import app, console, handle_errors, print_json


@app.command("models")
@handle_errors
def models_command(json_output: options.Json = False) -> None:
    """Registered models: family, params, GMACs at the default input size, grouped convs, concats."""
    from edgekit.models.registry import aliases
    from edgekit.models.zoo import describe_models

    rows = describe_models()
    alias_of: dict[str, list[str]] = {}
    for alias, target in aliases().items():
        alias_of.setdefault(target, []).append(alias)
    if json_output:
        print_json({"models": [{**row.__dict__, "aliases": alias_of.get(row.name, [])} for row in rows]})
        return
    table = Table(title="edgekit models (measured on the meta device at each model's default input size)")
    for column in ("model", "family", "source", "params", "GMACs", "input", "grouped convs", "concats", "aliases"):
        table.add_column(column, justify="right" if column in ("params", "GMACs", "grouped convs", "concats") else "left")
    for row in rows:
        table.add_row(
            row.name,
            row.family,
            row.source,
            f"{row.params / 1e6:.2f} M",
            f"{row.macs / 1e9:.2f}",
            f"{row.input_size}x{row.input_size}",
            str(row.grouped_convs),
            str(row.concats),
            ", ".join(alias_of.get(row.name, [])),
        )
    console.print(table)


@app.command("summary")
@handle_errors
def summary_command(
    model: Annotated[str, typer.Argument(help="model name or alias (see `edgekit models`)")],
    input_size: Annotated[int | None, typer.Option("--input-size", min=32, max=4096, help="height = width of the input")] = None,
    num_classes: Annotated[int | None, typer.Option("--num-classes", min=1, max=100_000)] = None,
    depth: Annotated[int, typer.Option("--depth", min=0, max=20, help="how deep to expand nested modules")] = 3,
    json_output: options.Json = False,
) -> None:
    """The torchinfo layer table of a model (as the seed chapter shows for resnet18)."""
    from edgekit.models.registry import get_spec
    from edgekit.models.zoo import layer_summary

    table = layer_summary(model, input_size=input_size, num_classes=num_classes, depth=depth)
    if json_output:
        spec = get_spec(model)
        print_json({"model": spec.name, "input_size": input_size or spec.default_input_size, "summary": table})
        return
    console.print(table, soft_wrap=True, markup=False)
