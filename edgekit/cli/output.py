"""What a command shows while it runs: one progress display for every command.

`progress(title)` is a context manager giving a `Shown` handle: `stage(text)` rewrites the stage line
("quantize: calibrating") and `count(what, done, total)` draws one counted bar per `what` (decoded images,
calibration batches, timed rounds, sweep jobs). One style everywhere: spinner, text, then for counted bars a
bar, done/total and the elapsed time. It is drawn on stderr, and only when stderr is a terminal: stdout
belongs to the tables and to --json, and a pipe or a log gets no control codes. It is transient: gone when
the command prints its result.

Text given to it is plain (a path, a model name, an ORT message); it is escaped here, not by the callers.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from rich.console import Console
from rich.markup import escape
from rich.table import Column, Table
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)

from edgekit.cli.app import err_console


def _text() -> TextColumn:
    """The text takes the width the other columns leave and ends in an ellipsis rather than wrap: a line never
    folds, at any width."""
    return TextColumn("{task.description}", table_column=Column(ratio=1, no_wrap=True, overflow="ellipsis"))


class _Display(Progress):
    """rich's Progress drawing the stage line across the whole width, and the counted bars under it. The one
    style: the stage line is spinner, text, elapsed time; a counted bar adds the bar and done/total."""

    def __init__(self, console: Console) -> None:
        self.stage_columns = (SpinnerColumn(), _text(), TimeElapsedColumn())
        self.counted_columns = (SpinnerColumn(), _text(), BarColumn(bar_width=20), MofNCompleteColumn(), TimeElapsedColumn())
        super().__init__(console=console, transient=True, disable=not console.is_terminal)  # (Live draws at once: the columns first)

    def get_renderables(self):
        stage = [t for t in self.tasks if not t.fields.get("counted")]
        counted = [t for t in self.tasks if t.fields.get("counted")]
        yield _table(self.stage_columns, stage)
        if counted:
            yield _table(self.counted_columns, counted)


def _table(columns, tasks) -> Table:
    table = Table.grid(*(c.get_table_column().copy() for c in columns), padding=(0, 1), expand=True)
    for task in tasks:
        table.add_row(*(c(task) for c in columns))
    return table


class Shown:
    """The handle `progress` yields: the stage line and the counted bars under it."""

    def __init__(self, bar: Progress, title: str) -> None:
        self._bar = bar
        self._title = title
        self._stage = bar.add_task(escape(title), total=None, counted=False)
        self._counts: dict[str, int] = {}

    def stage(self, text: str) -> None:
        """The stage line becomes 'TITLE: TEXT'."""
        self._bar.update(self._stage, description=escape(f"{self._title}: {text}"))

    def count(self, what: str, done: int, total: int | None) -> None:
        """The bar named WHAT (made on its first call) shows DONE of TOTAL (None: not known yet)."""
        if what not in self._counts:
            self._counts[what] = self._bar.add_task(escape(what), total=total, counted=True)
        self._bar.update(self._counts[what], completed=done, total=total)


@contextlib.contextmanager
def progress(title: str, console: Console | None = None) -> Iterator[Shown]:
    """Show TITLE's stage line (and counted bars) on CONSOLE (default: stderr) while the block runs, if it is a
    terminal; elsewhere the handle's calls do nothing visible."""
    console = console or err_console
    with _Display(console) as bar:
        yield Shown(bar, title)
