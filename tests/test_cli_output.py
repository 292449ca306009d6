"""The CLI's one output helper (edgekit/cli/output.py) and a default table, on a fixed 80-column terminal."""

from __future__ import annotations

import io
import re
from pathlib import Path

from rich.console import Console

ROOT = Path(__file__).resolve().parent.parent


def _terminal() -> Console:
    return Console(file=io.StringIO(), record=True, force_terminal=True, width=80)


def _rows(text: str) -> list[str]:
    """The drawn rows: each ends with its elapsed time (frames follow each other without a newline)."""
    return [row.strip("\n") for row in re.findall(r"[^\n]*?\d+:\d\d:\d\d", text)]


def test_the_helper_draws_a_stage_line_and_counted_bars_within_80_columns():
    from edgekit.cli.output import progress

    console = _terminal()
    with progress("quantize", console=console) as shown:
        shown.stage("calibrating model[v2].onnx")  # plain text: the brackets are not markup
        shown.count("decoding images", 3, 10)
        shown.count("decoding images", 7, 10)  # the same bar, not a second one
        shown.stage("a stage with a name long enough to need more than the eighty columns a terminal gives it")
        shown._bar.refresh()
    text = console.export_text()
    rows = _rows(text)
    assert rows and all(len(row) <= 80 for row in rows), rows
    assert "quantize: calibrating model[v2].onnx" in text
    assert any("decoding images" in row and " 7/10 " in row for row in rows), rows
    assert sum("decoding images" in row for row in rows[-2:]) == 1  # the last frame: one stage line, one bar
    assert not any("?" in row for row in rows)  # the stage line draws no count
    assert any(row.startswith("quantize: a stage with") and "…" in row for row in (r[2:] for r in rows))  # cut, not folded


def test_the_helper_draws_nothing_where_stderr_is_not_a_terminal(capsys):
    from edgekit.cli.output import progress

    quiet = Console(file=io.StringIO(), record=True, width=80)
    with progress("package", console=quiet) as shown:
        shown.stage("golden data")
        shown.count("photos", 1, 8)
    assert quiet.export_text() == ""
    with progress("package") as shown:  # the default: stderr (not a terminal under pytest), never stdout
        shown.stage("golden data")
    assert capsys.readouterr().out == ""


def test_every_command_shows_progress_through_the_helper():
    # one style: no command builds its own rich Progress or status spinner
    for path in (ROOT / "edgekit" / "cli").glob("*_cmd.py"):
        text = path.read_text()
        assert "rich.progress" not in text and ".status(" not in text, path.name


def test_the_devices_table_is_readable_at_80_columns():
    from edgekit.cli.devices_cmd import devices_table
    from edgekit.runtimes.devices import DEVICES, device_status

    console = _terminal()
    console.print(devices_table([device_status(name) for name in DEVICES]))
    lines = console.export_text().splitlines()
    assert max(len(line) for line in lines) <= 80
    header = next(line for line in lines if "device" in line and "runs" in line)
    assert all(name in header for name in ("device", "runs", "what it is", "missing"))  # no header folded
    assert all(any(line.split("│")[1].strip() == name for line in lines if line.count("│") > 1) for name in DEVICES)
