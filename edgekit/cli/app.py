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
from typer import Abort
from typer._click.exceptions import ClickException  # typer 0.29 vendors click (pinned in pyproject)
from typer.core import TyperGroup
from rich.markup import escape

from edgekit.errors import EdgekitError, one_line

class _OneLineErrors(TyperGroup):
    """Usage errors (a bad option value, a missing argument) as one line on stderr, exit 2, like every
    other edgekit error; Typer's default is a usage block and a boxed panel."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except ClickException as exc:
            if type(exc).__name__ == "NoArgsIsHelpError":
                exc.show()  # the help text itself
                sys.exit(exc.exit_code)
            ctx = getattr(exc, "ctx", None)
            where = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
            err_console.print(f"[bold red]error:[/] {escape(' '.join(exc.format_message().split()))}{where}", soft_wrap=True)
            sys.exit(exc.exit_code)
        except Abort:
            err_console.print(f"[bold red]interrupted:[/] nothing was written")
            sys.exit(EXIT_INTERRUPTED)
        sys.exit(code if isinstance(code, int) else 0)


app = typer.Typer(
    name="edgekit",
    cls=_OneLineErrors,
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
            err_console.print(f"[bold red]error:[/] {escape(one_line(exc))}", soft_wrap=True)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            err_console.print("[bold red]interrupted:[/] nothing was written")
            raise typer.Exit(EXIT_INTERRUPTED) from None

    return wrapper


def print_json(result) -> None:
    """One JSON object on stdout (--json): the result's to_dict, strict JSON."""
    from edgekit.serialize import to_json

    sys.stdout.write(to_json(result))
    sys.stdout.flush()


def write_json_report(path, result) -> None:
    """--report FILE.json: every number, written atomically."""
    from edgekit.artifact import write_text_atomic
    from edgekit.serialize import to_json

    write_text_atomic(path, to_json(result))


def human_bytes(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def main() -> None:
    """Console-script entry point."""
    sys.exit(app())
