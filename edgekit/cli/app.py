"""The Typer app and what every command shares: consoles, error mapping, formatting helpers.

Only the cli package prints. EdgekitError becomes one line on stderr and its exit code
(docs/design.md); EDGEKIT_DEBUG=1 shows the traceback too. Any other exception is a bug in
edgekit and keeps its traceback. Ctrl-C is exit 130 and SIGTERM exit 143 (128 + the signal
number, as shells report it): both unwind the command like an exception, so every staged
output is discarded and nothing half-written is left.

Anything printed inside rich markup that came from a user or a file (a path, a model name, an
ORT message) goes through `escape` (rich.markup.escape): `model[v2].onnx` prints as such.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import sys
import threading

import typer
from rich.console import Console
from typer import Abort
from typer._click.exceptions import ClickException  # typer 0.29 vendors click (pinned in pyproject)
from typer.core import TyperGroup
from rich.markup import escape

from edgekit.core.errors import EdgekitError, one_line

EXIT_INTERRUPTED = 130  # Ctrl-C (SIGINT)
EXIT_TERMINATED = 143  # SIGTERM: 128 + 15


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread wherever the command is, so it unwinds exactly as Ctrl-C
    does: every `except BaseException: staged.discard()` runs and nothing is left half-written."""


@contextlib.contextmanager
def sigterm_as_interrupt():
    """While the command runs, SIGTERM raises Terminated (then exit 143); the previous handler is
    restored afterwards. A second SIGTERM during the unwinding is ignored so the cleanup finishes
    (SIGKILL still stops it; its staging folder is swept by a later write: artifact.sweep_stale_staging)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    fired = False

    def handler(signum, frame):
        nonlocal fired
        if fired:
            return
        fired = True
        raise Terminated()

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except (ValueError, OSError):  # not the main interpreter, or signals unavailable
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def printable(text: str) -> str:
    """Text with file names that are not valid UTF-8 (lone surrogates) shown as \\xNN escapes, so
    printing it can never raise UnicodeEncodeError."""
    from edgekit.core.files import shown_path

    return shown_path(str(text))


def _interrupted(exc: BaseException | None) -> int:
    """Print the one line for Ctrl-C or SIGTERM; returns the exit code."""
    said = escape(getattr(exc, "kept", None) or "nothing was written")  # a command that keeps its finished work says so
    if isinstance(exc, Terminated):
        err_console.print(f"[bold red]terminated:[/] {said}", soft_wrap=True)  # one line, however long
        return EXIT_TERMINATED
    err_console.print(f"[bold red]interrupted:[/] {said}", soft_wrap=True)
    return EXIT_INTERRUPTED


def _tolerant_streams() -> None:
    """stdout/stderr that write undecodable file names as escapes instead of raising."""
    for stream in (sys.stdout, sys.stderr):
        if getattr(stream, "errors", None) == "strict" and hasattr(stream, "reconfigure"):
            with contextlib.suppress(Exception):
                stream.reconfigure(errors="backslashreplace")


class _OneLineErrors(TyperGroup):
    """Usage errors (a bad option value, a missing argument) as one line on stderr, exit 2, like every
    other edgekit error; Typer's default is a usage block and a boxed panel. The entry point of every
    command: SIGTERM is handled here (sigterm_as_interrupt)."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            with sigterm_as_interrupt():
                return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        _tolerant_streams()
        try:
            with sigterm_as_interrupt():
                code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except ClickException as exc:
            if type(exc).__name__ == "NoArgsIsHelpError":
                exc.show()  # the help text itself
                sys.exit(exc.exit_code)
            ctx = getattr(exc, "ctx", None)
            where = f" (see `{escape(printable(ctx.command_path))} --help`)" if ctx is not None else ""
            message = printable(" ".join(exc.format_message().split()))
            err_console.print(f"[bold red]error:[/] {escape(message)}{where}", soft_wrap=True)
            sys.exit(exc.exit_code)
        except Abort as exc:
            # Ctrl-C or SIGTERM outside a command's body (click turns KeyboardInterrupt into Abort)
            cause = exc.__cause__ or exc.__context__
            sys.exit(_interrupted(cause))
        except KeyboardInterrupt as exc:
            sys.exit(_interrupted(exc))
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


def handle_errors(func):
    """Map EdgekitError to one line on stderr and its exit code; Ctrl-C to exit 130, SIGTERM to 143."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        from edgekit.onnxfile.artifact import command_inputs

        try:
            with command_inputs():  # this command's outputs never land on its inputs
                return func(*args, **kwargs)
        except EdgekitError as exc:
            if os.environ.get("EDGEKIT_DEBUG") == "1":
                raise
            err_console.print(f"[bold red]error:[/] {escape(printable(one_line(exc)))}", soft_wrap=True)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt as exc:
            raise typer.Exit(_interrupted(exc)) from None

    return wrapper


def print_json(result) -> None:
    """One JSON object on stdout (--json): the result's to_dict, strict JSON."""
    from edgekit.core.serialize import to_json

    sys.stdout.write(to_json(result))
    sys.stdout.flush()


def write_json_report(path, result) -> None:
    """--report FILE.json: every number, written atomically."""
    from edgekit.onnxfile.artifact import write_text_atomic
    from edgekit.core.serialize import to_json

    write_text_atomic(path, to_json(result))


def wrote(path, details: str, notes: list[str]):
    """'wrote PATH (details)', the result's notes, and an empty what/value table for its facts."""
    from rich.table import Table

    console.print(f"[bold green]wrote[/] {escape(str(path))}  ({details})")
    for note in notes:
        console.print(f"[yellow]note:[/] {escape(note)}")
    table = Table(show_header=False, show_edge=False)
    table.add_column("what")
    table.add_column("value")
    return table


def human_bytes(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def main() -> None:
    """Console-script entry point."""
    sys.exit(app())
