"""The two tiers stay what docs/layout.md says: `make test-fast` is the unit tier (tests/unit/, no torch at import)
plus the end-to-end tests named in tests/conftest.py SMOKE, which still exist and cover every command."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT, SMOKE

COMMANDS = {"export", "import", "quantize", "verify", "debug", "bench", "package", "convert", "devices", "sweep"}
LISTINGS = {"models", "summary"}  # they list the zoo: covered by the tests of the zoo, not an end-to-end path


def test_every_smoke_test_still_exists():
    for node, commands in SMOKE.items():
        path, _, name = node.partition("::")
        source = (ROOT / path).read_text(encoding="utf-8")
        assert re.search(rf"^def {re.escape(name)}\(", source, re.M), f"{node} is gone: update tests/conftest.py SMOKE"
        assert commands and set(commands) <= COMMANDS, node


def test_the_smoke_tests_cover_every_command_the_cli_has():
    from edgekit.cli import app

    cli_commands = {c.name for c in app.registered_commands} | {g.name for g in app.registered_groups}
    covered = {c for commands in SMOKE.values() for c in commands}
    assert COMMANDS <= covered
    assert cli_commands - LISTINGS <= covered, f"no smoke test for {sorted(cli_commands - LISTINGS - covered)}"


def test_the_makefile_runs_the_two_tiers():
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    pytest_line = makefile.split("\nPYTEST := ", 1)[1].split("\n", 1)[0]
    assert "-m pytest -q" in pytest_line and "--dist loadfile" in pytest_line  # a file's fixtures built once
    fast = makefile.split("\ntest-fast:", 1)[1].split("\n\n", 1)[0].replace("$(PYTEST)", pytest_line)
    assert '-m "unit or smoke"' in fast
    full = makefile.split("\ntest:", 1)[1].split("\n\n", 1)[0].replace("$(PYTEST)", pytest_line)
    assert "pytest -q" in full and ' -m "' not in full


def test_the_unit_tier_imports_neither_torch_nor_onnxruntime():
    modules = sorted(f"tests.unit.{p.stem}" for p in Path(__file__).parent.glob("test_*.py"))
    code = ("import sys, importlib\n"
            f"for m in {modules!r}: importlib.import_module(m)\n"
            "print(sorted(n for n in ('torch', 'torchvision', 'onnxruntime', 'ray') if n in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "[]"
