"""The `edgekit` command line: one module per command group, all registered on one Typer app."""

from edgekit.cli.app import app, main
from edgekit.cli import bench_cmd, export_cmd, models_cmd, quantize_cmd  # noqa: F401  (register commands)
from edgekit.cli import verify_cmd  # noqa: F401
from edgekit.cli import package_cmd  # noqa: F401
from edgekit.cli import convert_cmd  # noqa: F401
from edgekit.cli import devices_cmd  # noqa: F401
from edgekit.cli import sweep_cmd  # noqa: F401
from edgekit.cli import import_cmd  # noqa: F401
from edgekit.cli import debug_cmd  # noqa: F401

__all__ = ["app", "main"]
