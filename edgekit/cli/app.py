"""The Typer app and what every command shares: consoles, error mapping, formatting helpers.

Only the cli package prints. EdgekitError becomes one line on stderr and its exit code
(design.md); EDGEKIT_DEBUG=1 shows the traceback too. Any other exception is a bug in
edgekit and keeps its traceback.
"""

from __future__ import annotations

import functools
import os
import sys

import typer
from rich.console import Console

from edgekit.errors import EdgekitError

app = typer.Typer(
    name="edgekit",
    help="PyTorch CNN classifiers (ResNet, ResNeXt, DenseNet) to verified, quantized ONNX for edge targets.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)
# Piped or captured output gets a fixed width wide enough for the tables; a terminal its own.
_WIDTH = None if sys.stdout.isatty() else 160
console = Console(highlight=False, width=_WIDTH)
err_console = Console(stderr=True, highlight=False, width=_WIDTH)

EXIT_INTERRUPTED = 130


def handle_errors(func):
    """Map EdgekitError to one line on stderr and its exit code; Ctrl-C to exit 130."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except EdgekitError as exc:
            if os.environ.get("EDGEKIT_DEBUG") == "1":
                raise
            err_console.print(f"[bold red]error:[/] {exc}", soft_wrap=True)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            err_console.print("[bold red]interrupted:[/] nothing was written")
            raise typer.Exit(EXIT_INTERRUPTED) from None

    return wrapper


def human_bytes(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def main() -> None:
    """Console-script entry point."""
    sys.exit(app())
