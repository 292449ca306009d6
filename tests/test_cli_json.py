"""Every command answers in JSON (--json: one object on stdout), and the installed console script runs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest


def _one_object(text: str) -> dict:
    data = json.loads(text)
    assert isinstance(data, dict)
    return data


def test_models_and_summary(cli):
    assert len(_one_object(cli("models", "--json").stdout)["models"]) >= 15
    assert "Conv2d" in _one_object(cli("summary", "textbook_resnext", "--json").stdout)["summary"]


def test_export_quantize_verify_bench_package_convert(cli, tmp_path):
    fp32 = tmp_path / "r.onnx"
    res = cli("export", "textbook_resnext", "--input-size", "64", "-o", fp32, "--json")
    assert res.exit_code == 0, res.stderr
    assert _one_object(res.stdout)["grouped_convs"] == 8
    res = cli("quantize", fp32, "-o", tmp_path / "r.int8.onnx", "--json")
    assert res.exit_code == 0, res.stderr
    q = _one_object(res.stdout)
    assert q["recipe"]["target"] and q["holdout"]["sqnr_db"] and q["metadata"]["precision"] == "int8"
    res = cli("verify", tmp_path / "r.int8.onnx", "--random-inputs", "0", "--json")
    assert res.exit_code == 0, res.stderr
    assert _one_object(res.stdout)["passed"] is True
    res = cli("bench", fp32, tmp_path / "r.int8.onnx", "--runs", "2", "--warmup", "0", "--json")
    assert res.exit_code == 0, res.stderr
    assert len(_one_object(res.stdout)["timings"]) == 2


@pytest.mark.parametrize("argv", [["--help"], ["models", "--json"]])
def test_the_installed_console_script(argv):
    script = Path(sys.executable).with_name("edgekit")
    if not script.exists():
        pytest.skip(f"no console script beside {sys.executable} (edgekit is not installed in this environment)")
    proc = subprocess.run([str(script), *argv], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert ("Usage" in proc.stdout) if argv == ["--help"] else json.loads(proc.stdout)["models"]


def test_a_bad_option_is_one_line_through_the_console_script():
    script = Path(sys.executable).with_name("edgekit")
    if not script.exists():
        pytest.skip(f"no console script beside {sys.executable}")
    proc = subprocess.run([str(script), "verify", "x.onnx", "--min-sqnr", "nan"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "--min-sqnr" in proc.stderr
