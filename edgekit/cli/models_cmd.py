"""`edgekit models` and `edgekit summary`."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from edgekit.cli.app import app, console, handle_errors


@app.command("models")
@handle_errors
def models_command() -> None:
    """Registered models: family, params, GMACs at the default input size, grouped convs, concats."""
    from edgekit.models.registry import aliases
    from edgekit.zoo import describe_models

    rows = describe_models()
    alias_of: dict[str, list[str]] = {}
    for alias, target in aliases().items():
        alias_of.setdefault(target, []).append(alias)
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
    input_size: Annotated[int | None, typer.Option("--input-size", help="height = width of the input")] = None,
    num_classes: Annotated[int | None, typer.Option("--num-classes")] = None,
    depth: Annotated[int, typer.Option("--depth", help="how deep to expand nested modules")] = 3,
) -> None:
    """The torchinfo layer table of a model (as the seed chapter shows for resnet18)."""
    from edgekit.zoo import layer_summary

    console.print(layer_summary(model, input_size=input_size, num_classes=num_classes, depth=depth), soft_wrap=True)
