"""The `edgekit` command line: one module per command group, all registered on one Typer app."""

from edgekit.cli.app import app, main
from edgekit.cli import export_cmd, models_cmd, quantize_cmd  # noqa: F401  (register commands)

__all__ = ["app", "main"]
