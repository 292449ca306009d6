"""Files made elsewhere and a user's own module, judged on an emulated ARM64 board (the ARM64 lane): imported or
exported, quantized for arm64, then `verify --device arm64-a76` compares the board's own ONNX Runtime kernels with
the file's reference (the fp32 parent in ONNX Runtime, or PyTorch for the user's module named again)."""

from __future__ import annotations

import json

import pytest

import foreign_models as fm

PADDLE = ("--untrained", "--input-shape", "1,3,32,96", "--resize", "letterbox", "--channels", "bgr",
          "--mean", "0.5,0.5,0.5", "--std", "0.5,0.5,0.5")


@pytest.mark.parametrize("kind", ["paddle", "dense", "user"])
def test_a_file_made_elsewhere_is_judged_on_the_board(cli, arm64, tmp_path, monkeypatch, kind):
    monkeypatch.chdir(tmp_path)
    if kind == "user":
        fm.user_module_source(tmp_path)
        fp32, model = tmp_path / "mynet.onnx", ["--model", "mynet.py:build"]
        res = cli("export", "mynet.py:build", "--input-size", "32", "-o", fp32)
    else:
        source = fm.paddle_style_opset11(tmp_path) if kind == "paddle" else fm.dense_output(tmp_path)
        fp32, model = tmp_path / "out" / "m.onnx", []
        res = cli("import", source, *(PADDLE if kind == "paddle" else ("--untrained",)), "-o", fp32)
    assert res.exit_code == 0, res.stderr
    int8 = tmp_path / "m.int8.onnx"
    res = cli("quantize", fp32, "--target", "arm64", "-o", int8)
    assert res.exit_code == 0, res.stderr
    res = cli("verify", int8, *model, "--device", "arm64-a76", "--random-inputs", "0", "--report", tmp_path / "r.json")
    assert res.exit_code == 0, res.stderr
    assert "Traceback" not in res.output
    report = json.loads((tmp_path / "r.json").read_text())
    assert {c["device"] for c in report["comparisons"]} == {"arm64-a76"}
    assert report["reference"]["kind"] == ("pytorch" if kind == "user" else "parent")
    if kind == "dense":  # a map: SQNR, never top-1
        assert report["gates"]["min_top1_agreement"] is None and "top-1 never gated" in report["gates_source"]
