"""verify and package without PyTorch: a file made elsewhere, quantized by edgekit, is judged against its fp32
parent in ONNX Runtime (found by sha256, or --parent), packaged with golden outputs from that parent, and its
bundle's check.py passes with numpy + onnxruntime only. Gates fit the file: unknown weights get the trained gates,
a dense output is never judged by top-1. Plus --dataset as a labelled .npz and two verify BUNDLE/ bugs."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.test_package import run_on_device

SIZE = 64


def _export(module, path: Path, output: str) -> Path:
    import torch

    with torch.no_grad():
        torch.onnx.export(module.eval(), torch.randn(1, 3, SIZE, SIZE), str(path), dynamo=False, opset_version=17,
                          input_names=["input"], output_names=[output])
    return path


def _quantize(cli, fp32: Path, int8: Path) -> Path:
    res = cli("quantize", fp32, "-o", int8)
    assert res.exit_code == 0, res.stderr
    return int8


@pytest.fixture(scope="module")
def foreign(tmp_path_factory):
    """A torchvision resnet18 (10 classes, 64 px) exported by torch.onnx (TorchScript), and edgekit's int8 of it."""
    import torch
    import torchvision
    from typer.testing import CliRunner

    from edgekit.cli import app

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("foreign")
    fp32 = _export(torchvision.models.resnet18(num_classes=10), folder / "resnet18_own.onnx", "logits")
    res = CliRunner().invoke(app, ["quantize", str(fp32), "-o", str(folder / "resnet18_own.int8.onnx")],
                             catch_exceptions=False)
    assert res.exit_code == 0, res.stderr
    return fp32, folder / "resnet18_own.int8.onnx"


def _one_line(res) -> str:
    err = res.stderr.strip()
    assert "Traceback" not in res.output and "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    return err


def test_int8_of_a_foreign_file_is_verified_against_its_parent_and_packaged(cli, foreign, tmp_path):
    fp32, int8 = foreign
    res = cli("verify", int8, "--providers", "cpu", "--report", tmp_path / "v.json")
    assert res.exit_code == 0, res.stderr
    assert "ONNX Runtime on the fp32 parent" in res.stdout and fp32.name in res.stdout
    assert "matches the fp32 parent" in res.stdout
    report = json.loads((tmp_path / "v.json").read_text())
    assert report["reference"]["kind"] == "parent" and report["reference"]["weights"] is None
    # unknown weights are not seeded-random: the trained int8 gates, and the summary says why
    assert report["gates"]["min_top1_agreement"] == 0.95
    assert "trained weights" in report["gates_source"] and "weights unknown" in report["gates_source"]
    assert "fp32 parent" in (tmp_path / "v.md").read_text()

    bundle = tmp_path / "bundle"
    res = cli("package", int8, "-o", bundle, "--golden", "2")
    assert res.exit_code == 0, res.stderr
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert "fp32 parent" in manifest["golden"]["reference"]
    proc = run_on_device(bundle / "check.py", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_a_missing_parent_is_one_line_naming_parent_and_parent_is_checked_by_sha256(cli, foreign, tmp_path):
    fp32, int8 = foreign
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copyfile(int8, alone / int8.name)
    res = cli("verify", alone / int8.name, "--random-inputs", "0", "--providers", "cpu")
    assert res.exit_code == 0, res.stderr  # the parent is found where it was when the int8 file was made
    moved = fp32.with_name("moved-away.bin")
    fp32.rename(moved)  # gone from there too: one line naming --parent
    try:
        res = cli("verify", alone / int8.name)
        assert res.exit_code == 2
        line = _one_line(res)
        assert "--parent" in line and fp32.name in line and "sha256" in line
        res = cli("package", alone / int8.name, "-o", tmp_path / "b")
        assert res.exit_code == 2 and "--parent" in _one_line(res)
        assert not (tmp_path / "b").exists()
    finally:
        moved.rename(fp32)

    res = cli("verify", alone / int8.name, "--parent", int8)  # a file, but not the parent
    assert res.exit_code == 2
    line = _one_line(res)
    assert "sha256" in line and "--parent" in line

    res = cli("verify", alone / int8.name, "--parent", fp32, "--random-inputs", "0", "--providers", "cpu")
    assert res.exit_code == 0, res.stderr


def test_parent_found_by_sha256_under_another_name(cli, foreign, tmp_path):
    fp32, int8 = foreign
    shutil.copyfile(int8, tmp_path / "q.onnx")
    shutil.copyfile(fp32, tmp_path / "renamed.onnx")
    res = cli("verify", tmp_path / "q.onnx", "--random-inputs", "0", "--providers", "cpu")
    assert res.exit_code == 0, res.stderr
    assert "renamed.onnx" in res.stdout


def test_a_dense_int8_file_is_judged_without_top1(cli, tmp_path):
    import torch
    from torch import nn

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                        nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 1))
    fp32 = _export(net, tmp_path / "seg.onnx", "map")  # (1, 4, 16, 16): a spatial map
    int8 = _quantize(cli, fp32, tmp_path / "seg.int8.onnx")
    res = cli("verify", int8, "--providers", "cpu", "--report", tmp_path / "d.json")
    assert res.exit_code == 0, res.stderr
    report = json.loads((tmp_path / "d.json").read_text())
    tol = report["gates"]
    assert tol["same_top1"] is False and tol["min_top1_agreement"] is None and tol["min_sqnr_db"] is not None
    assert report["reference"]["task"] == "dense" and "dense output" in report["gates_source"]
    res = cli("verify", int8, "--min-top1-agreement", "0.9")
    assert res.exit_code == 2 and "dense" in _one_line(res)

    bundle = tmp_path / "bundle"
    res = cli("package", int8, "-o", bundle, "--golden", "2")
    assert res.exit_code == 0, res.stderr
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["task"] == "dense" and manifest["gates"]["min_top1_agreement"] is None
    assert manifest["gates"]["same_top1"] is False
    proc = run_on_device(bundle / "check.py", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_dataset_as_a_labelled_npz(cli, foreign, tmp_path):
    fp32, int8 = foreign
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 3, SIZE, SIZE)).astype(np.float32)
    np.savez(tmp_path / "d.npz", x=x, y=np.arange(6) % 10)
    res = cli("verify", int8, "--dataset", tmp_path / "d.npz", "--random-inputs", "0", "--providers", "cpu",
              "--report", tmp_path / "r.json")
    assert res.exit_code == 0, res.stderr
    dataset = json.loads((tmp_path / "r.json").read_text())["dataset"]
    assert dataset["samples"] == 6

    np.savez(tmp_path / "bad.npz", pictures=x, classes=np.arange(6))
    res = cli("verify", int8, "--dataset", tmp_path / "bad.npz")
    assert res.exit_code == 2
    line = _one_line(res)
    assert "pictures" in line and "x/y" in line

    np.savez(tmp_path / "labels.npz", x=x, y=np.full(6, 10))  # out of range for 10 classes
    res = cli("verify", int8, "--dataset", tmp_path / "labels.npz", "--random-inputs", "0")
    assert res.exit_code == 2 and "10 outputs" in _one_line(res)

    np.savez(tmp_path / "obj.npz", x=x, y=np.array([object()] * 6, dtype=object))
    res = cli("verify", int8, "--dataset", tmp_path / "obj.npz", "--random-inputs", "0")
    assert res.exit_code == 2 and "objects" in _one_line(res)


@pytest.fixture(scope="module")
def bundle(foreign, tmp_path_factory):
    from typer.testing import CliRunner

    from edgekit.cli import app

    _fp32, int8 = foreign
    folder = tmp_path_factory.mktemp("b") / "bundle"
    res = CliRunner().invoke(app, ["package", str(int8), "-o", str(folder), "--golden", "1"], catch_exceptions=False)
    assert res.exit_code == 0, res.stderr
    return folder


@pytest.mark.parametrize("inside", ["manifest.json", "new.json", "sub/r.json"])
def test_a_report_inside_the_bundle_is_refused_before_anything_runs(cli, bundle, inside):
    before = (bundle / "manifest.json").read_bytes()
    listing = sorted(p.name for p in bundle.iterdir())
    res = cli("verify", bundle, "--report", bundle / inside)
    assert res.exit_code == 2
    assert "inside the bundle" in _one_line(res)
    assert (bundle / "manifest.json").read_bytes() == before
    assert sorted(p.name for p in bundle.iterdir()) == listing


def test_a_gpu_provider_missing_for_a_bundle_is_exit_3(cli, bundle):
    from edgekit.core.provenance import cuda_device_available

    if cuda_device_available():
        pytest.skip("a CUDA device is visible here")
    res = cli("verify", bundle, "--providers", "cuda")
    assert res.exit_code == 3
    assert "CUDA" in _one_line(res)


def test_every_verify_option_a_bundle_ignores_is_refused(cli, bundle):
    from edgekit.cli.verify_cmd import bundle_refused_options
    from edgekit.verify.options import VerifyOptions

    # derived from VerifyOptions itself: a field added there is refused for a bundle until the bundle reads it
    for f in dataclasses.fields(VerifyOptions):
        if f.name in VerifyOptions.bundle_knobs:
            continue
        value = {bool: True, int: 3}.get(type(f.default), Path("x")) if f.default is not None else "x"
        assert bundle_refused_options(VerifyOptions(**{f.name: value})), f.name
    assert bundle_refused_options(VerifyOptions()) == []
    res = cli("verify", bundle, "--parent", bundle / "manifest.json")
    assert res.exit_code == 2 and "--parent does not apply to a bundle" in _one_line(res)


def test_an_imported_file_is_judged_against_its_original_across_runtimes_and_packages(cli, foreign, tmp_path):
    from edgekit.cli import app

    if "import" not in {c.name for c in app.registered_commands}:
        pytest.skip("edgekit import is not in this tree yet")
    fp32, _int8 = foreign
    imported = tmp_path / "imp" / "own.onnx"
    res = cli("import", fp32, "-o", imported)
    assert res.exit_code == 0, res.stderr
    # the original is where it was imported from (recorded, and read only because its sha256 matches)
    res = cli("verify", imported, "--providers", "cpu")
    assert res.exit_code == 0, res.stderr
    assert "ONNX Runtime on the original file" in res.stdout
    moved = tmp_path / "moved" / fp32.name  # moved away: one line naming --parent
    moved.parent.mkdir()
    shutil.copy(fp32, moved)
    fp32_bytes = fp32.read_bytes()
    fp32.unlink()
    try:
        res = cli("verify", imported)
        assert res.exit_code == 2 and "--parent" in _one_line(res)
    finally:
        fp32.write_bytes(fp32_bytes)
    res = cli("verify", imported, "--parent", moved, "--providers", "cpu", "--report", tmp_path / "i.json")
    assert res.exit_code == 0, res.stderr
    assert "ONNX Runtime on the original file" in res.stdout
    report = json.loads((tmp_path / "i.json").read_text())
    assert report["reference"]["kind"] == "original"
    plain = [c for c in report["comparisons"] if c["kernels"] == "no graph optimisations"]
    assert plain and all(c["gated"] and c["passed"] for c in plain)

    int8 = _quantize(cli, imported, tmp_path / "imp" / "own.int8.onnx")  # its parent (imported) is beside it
    bundle = tmp_path / "bundle"
    res = cli("package", int8, "-o", bundle, "--golden", "2")
    assert res.exit_code == 0, res.stderr
    proc = run_on_device(bundle / "check.py", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_gates_fit_the_file():
    from edgekit.core.errors import BadInput
    from edgekit.judge.compare import gates_for, weights_are_trained

    assert weights_are_trained(None)  # unknown (foreign, imported): not seeded-random
    assert weights_are_trained({"kind": "file"}) and weights_are_trained({"kind": "pretrained"})
    assert not weights_are_trained({"kind": "random", "seed": 0})
    tol, source = gates_for("int8", True, why="weights unknown")
    assert (tol.min_top1_agreement, tol.min_sqnr_db) == (0.95, 12.0) and "weights unknown" in source
    assert gates_for("int8", False)[0].min_top1_agreement == 0.5
    for precision in ("fp32", "fp16", "int8"):
        dense, source = gates_for(precision, True, task="dense")
        assert not dense.same_top1 and dense.min_top1_agreement is None and "dense output" in source
    assert gates_for("fp32", True, task="dense")[0].atol == 1e-4
    assert gates_for("int8", True, task="dense", min_sqnr=20)[0].min_sqnr_db == 20
    with pytest.raises(BadInput, match="dense"):
        gates_for("int8", True, task="dense", min_top1_agreement=0.9)
