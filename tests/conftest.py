"""Shared fixtures: the real CLI app, small exported models, an isolated cache."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

ROOT = Path(__file__).resolve().parent.parent
CALIBRATION = ROOT / "calibration"
SMALL = 64  # input size for fast exports of the full-size architectures


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    os.environ["EDGEKIT_CACHE_DIR"] = str(tmp_path_factory.mktemp("edgekit-cache"))
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    yield


@pytest.fixture
def cli():
    """Run `edgekit ARGS...` in-process; returns click's Result (exit_code, stdout, stderr)."""
    from edgekit.cli import app

    runner = CliRunner()

    def invoke(*args: str):
        return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)

    return invoke


@pytest.fixture(scope="session")
def exported(tmp_path_factory):
    """Export each requested (model, size) once per session; returns the ExportResult."""
    from edgekit.export import export

    folder = tmp_path_factory.mktemp("exports")
    cache = {}

    def get(name: str, size: int = SMALL, **kwargs):
        key = (name, size, tuple(sorted(kwargs.items())))
        if key not in cache:
            out = folder / f"{name}-{size}-{len(cache)}.onnx"
            cache[key] = export(name, input_size=size, output=out, **kwargs)
        return cache[key]

    return get


def files_in(folder: Path) -> list[str]:
    """Everything in a folder, hidden temp folders included (to prove nothing half-written is left)."""
    return sorted(p.name for p in Path(folder).iterdir()) if Path(folder).exists() else []
