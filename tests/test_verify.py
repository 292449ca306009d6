"""`edgekit verify`: the reference rebuilt from metadata, providers without silent fallback, the gates
per precision, the accuracy on labelled data, the reports, and bad input."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from edgekit.onnxfile.artifact import read_metadata, write_metadata
from edgekit.core.errors import SaturationFailed
from edgekit.runtimes.ort import cuda_device_available
from tests.conftest import SMALL, files_in

MODEL = "textbook_densenet"  # the cheapest reference to rebuild; has Conv, Concat, BatchNorm, Gemm
NO_CUDA = "no CUDA device visible to this process (torch.cuda.is_available() is False)"


@pytest.fixture
def fp32(exported) -> Path:
    return exported(MODEL).path


def _edit(src: Path, dst: Path, *, weights=None, metadata=None) -> Path:
    """Copy an ONNX file with its initializers changed by weights(name, array) and its metadata by metadata(dict)."""
    model = onnx.load(str(src))
    if weights is not None:
        for init in model.graph.initializer:
            array = numpy_helper.to_array(init)
            new = weights(init.name, array)
            if new is not None:
                init.CopyFrom(numpy_helper.from_array(new.astype(array.dtype), init.name))
    if metadata is not None:
        meta = read_metadata(model)
        if meta is None:
            del model.metadata_props[:]
        else:
            changed = metadata(dict(meta))
            if changed is None:
                del model.metadata_props[:]
            else:
                write_metadata(model, changed)
    onnx.save(model, str(dst))
    return dst


def _first_conv(model_path: Path) -> str:
    model = onnx.load(str(model_path))
    return next(n.input[1] for n in model.graph.node if n.op_type == "Conv")


def _fake_int8(name, array):
    """Per-output-channel symmetric 8-bit weights, dequantized: the rounding an int8 file carries."""
    if array.ndim not in (2, 4):
        return None
    flat = array.reshape(array.shape[0], -1)
    scale = np.abs(flat).max(axis=1, keepdims=True) / 127.0
    scale[scale == 0] = 1.0
    return (np.round(flat / scale) * scale).reshape(array.shape)


def _as_int8(meta):
    meta["precision"] = "int8"
    meta["parent"] = {"file": "parent.onnx", "sha256": "0" * 64, "metadata": True}
    meta["calibration"] = {"source": "calibration", "kind": "images", "samples": 8, "sha256": "0" * 64, "holdout_samples": 4}
    meta["recipe"] = {"target": "generic", "activation_type": "int8", "weight_type": "int8", "per_channel": True,
                      "reduce_range": False, "activation_symmetric": True, "method": "minmax",
                      "reason": "a test's fake int8 file", "format": "QDQ", "excluded_nodes": []}
    return meta


@pytest.fixture(scope="module")
def digits_folder(tmp_path_factory) -> Path:
    """A real labelled ImageFolder: scikit-learn's 8x8 digits, 4 per class, upsampled to 32x32 PNGs."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    root = tmp_path_factory.mktemp("digits")
    for label in range(10):
        folder = root / str(label)
        folder.mkdir()
        for i, index in enumerate(np.flatnonzero(digits.target == label)[:4]):
            pixels = (digits.images[index] * (255.0 / 16.0)).astype(np.uint8)
            Image.fromarray(pixels).resize((32, 32), Image.Resampling.BILINEAR).save(folder / f"{i}.png")
    return root


def _report(path: Path) -> dict:
    return json.loads(path.read_text())  # strict JSON: no NaN/Infinity tokens


# --- the happy path and the report files ------------------------------------------------------


def test_verify_passes_and_writes_json_and_markdown(cli, fp32, tmp_path):
    res = cli("verify", fp32, "--providers", "cpu", "--report", tmp_path / "r.json")  # cpu alone, on a GPU host too
    assert res.exit_code == 0, res.stderr
    assert "PASS" in res.stdout and "ORT cpu" in res.stdout
    assert "nodes run: CPU" in res.stdout
    assert sorted(files_in(tmp_path)) == ["r.json", "r.md"]  # nothing half-written left
    report = _report(tmp_path / "r.json")
    assert report["passed"] is True and report["failures"] == []
    assert report["precision"] == "fp32" and len(report["sha256"]) == 64
    assert report["metadata"]["model"] == MODEL
    assert {"torch", "onnxruntime", "onnx", "python"} <= set(report["versions"])
    assert report["gates"] == {
        "atol": 1e-4, "rtol": 1e-3, "same_top1": True, "min_top1_agreement": None, "min_sqnr_db": None
    }
    (provider,) = report["providers"]
    assert provider["requested"] == provider["ran_on"] == "cpu" and provider["fell_back"] is False
    assert provider["node_counts"]["cpu"] > 0 and provider["node_placement"]["cpu"]["Concat"] >= 1
    rows = {(c["input_set"], c["batch"]): c for c in report["comparisons"]}
    assert set(rows) == {("photos", 1), ("random", 1)}
    assert rows[("photos", 1)]["samples"] == 12 and rows[("random", 1)]["samples"] == 4
    for row in rows.values():
        (metrics,) = row["outputs"]
        assert metrics["name"] == "logits" and metrics["passed"]
        assert metrics["max_abs"] < 1e-4 and metrics["top1_agreement"] == 1.0 and metrics["nan"] == 0
        assert metrics["sqnr_db"] > 60 and metrics["cosine"] > 0.999999
    markdown = (tmp_path / "r.md").read_text()
    assert "— PASS" in markdown and "| ORT cpu | photos |" in markdown


def test_perturbed_weight_fails_naming_the_output_and_the_metric(cli, fp32, tmp_path):
    conv = _first_conv(fp32)
    bad = _edit(fp32, tmp_path / "bad.onnx", weights=lambda n, a: a + 0.05 * a.std() if n == conv else None)
    res = cli("verify", bad, "--report", tmp_path / "bad.json")
    assert res.exit_code == 1
    assert "verification failed" in res.stderr
    assert "output 'logits'" in res.stderr and "max abs diff" in res.stderr
    assert "FAIL" in res.stdout
    report = _report(tmp_path / "bad.json")  # written before the exit, for the post-mortem
    assert report["passed"] is False and report["failures"]
    assert all(not c["passed"] for c in report["comparisons"])


def test_nan_in_the_output_fails_even_with_loose_tolerances(cli, fp32, tmp_path):
    conv = _first_conv(fp32)
    bad = _edit(fp32, tmp_path / "nan.onnx", weights=lambda n, a: np.full_like(a, np.nan) if n == conv else None)
    res = cli("verify", bad, "--atol", "1e6", "--rtol", "1e6", "--random-inputs", "0")
    assert res.exit_code == 1
    assert "NaN" in res.stderr and "output 'logits'" in res.stderr


# --- providers: no silent fallback ----------------------------------------------------------


def test_cuda_that_cannot_start_is_exit_3(cli, fp32):
    if cuda_device_available():
        pytest.skip("a CUDA device is visible: CUDA starts here")
    res = cli("verify", fp32, "--providers", "cuda")
    assert res.exit_code == 3
    assert "CUDA did not start" in res.stderr and "--allow-fallback" in res.stderr
    assert "EP Error" not in res.stdout and res.stdout == ""


def test_allow_fallback_passes_and_says_it_ran_on_cpu(cli, fp32, tmp_path, monkeypatch):
    if cuda_device_available():
        pytest.skip("a CUDA device is visible: CUDA would not fall back")
    import edgekit.runtimes.ort

    asked = {}
    real = edgekit.runtimes.ort.create_session

    def recording(model, provider="cpu", **kwargs):
        asked[provider] = kwargs
        return real(model, provider, **kwargs)

    monkeypatch.setattr(edgekit.runtimes.ort, "create_session", recording)
    res = cli("verify", fp32, "--providers", "cpu,cuda", "--allow-fallback", "--report", tmp_path / "f.json")
    assert res.exit_code == 0, res.stderr
    # fp32 means fp32 on the GPU too: ORT's CUDA provider would use TF32 convolutions by default
    assert asked["cuda"]["provider_options"] == {"use_tf32": "0"} and asked["cpu"]["provider_options"] is None
    assert asked["cuda"]["allow_fallback"] is True and asked["cuda"]["enable_profiling"] is True
    assert "ran on CPU instead of CUDA" in res.stdout
    assert "ORT cuda -> cpu" in res.stdout
    providers = {p["requested"]: p for p in _report(tmp_path / "f.json")["providers"]}
    assert providers["cuda"]["fell_back"] is True and providers["cuda"]["ran_on"] == "cpu"
    assert providers["cuda"]["reason"] and providers["cuda"]["node_counts"] == providers["cpu"]["node_counts"]
    assert "ran on CPU instead of CUDA" in (tmp_path / "f.md").read_text()


@pytest.mark.cuda
def test_cuda_runs_on_cuda_and_matches_pytorch(cli, fp32, tmp_path):
    if not cuda_device_available():
        pytest.skip(NO_CUDA)
    res = cli("verify", fp32, "--providers", "cpu,cuda", "--report", tmp_path / "c.json")
    assert res.exit_code == 0, res.stderr
    report = _report(tmp_path / "c.json")
    cuda = next(p for p in report["providers"] if p["requested"] == "cuda")
    assert cuda["fell_back"] is False and cuda["node_counts"].get("cuda", 0) > 0
    assert any(c["runtime"] == "pytorch" and not c["gated"] for c in report["comparisons"])


# --- inputs --------------------------------------------------------------------------------


def test_dynamic_batch_runs_batch_1_and_a_larger_batch(cli, exported, tmp_path):
    path = exported(MODEL, dynamic_batch=True).path
    res = cli("verify", path, "--report", tmp_path / "d.json")
    assert res.exit_code == 0, res.stderr
    batches = {(c["input_set"], c["batch"]) for c in _report(tmp_path / "d.json")["comparisons"]}
    assert batches == {("photos", 1), ("photos", 8), ("random", 1), ("random", 8)}


def test_inputs_from_a_tensor_file(cli, fp32, tmp_path):
    tensors = np.random.default_rng(1).standard_normal((3, 3, SMALL, SMALL)).astype(np.float32)
    np.savez(tmp_path / "x.npz", input=tensors)
    res = cli("verify", fp32, "--inputs", tmp_path / "x.npz", "--random-inputs", "0", "--providers", "cpu",
              "--report", tmp_path / "t.json")
    assert res.exit_code == 0, res.stderr
    (row,) = _report(tmp_path / "t.json")["comparisons"]
    assert row["input_set"] == "tensors" and row["samples"] == 3


def test_tensor_file_of_the_wrong_shape_names_the_expected_shape(cli, fp32, tmp_path):
    import tempfile

    def traces():
        return {f for f in os.listdir(tempfile.gettempdir()) if f.startswith("edgekit-profile")}

    before = traces()
    np.save(tmp_path / "x.npy", np.zeros((2, 3, 32, 32), np.float32))
    res = cli("verify", fp32, "--inputs", tmp_path / "x.npy")
    assert res.exit_code == 2
    assert f"(N, 3, {SMALL}, {SMALL})" in res.stderr and "(2, 3, 32, 32)" in res.stderr
    assert traces() <= before  # the profiled session was ended although verify stopped early


# --- the reference --------------------------------------------------------------------------


def test_foreign_file_needs_model_and_then_verifies(cli, fp32, tmp_path):
    foreign = _edit(fp32, tmp_path / "foreign.onnx", metadata=lambda m: None)
    res = cli("verify", foreign)
    assert res.exit_code == 2
    assert "no edgekit metadata" in res.stderr and "--model" in res.stderr and "--weights" in res.stderr
    res = cli("verify", foreign, "--model", MODEL)  # seeded random weights, as exported
    assert res.exit_code == 0, res.stderr
    assert "from --model/--weights" in res.stdout


def test_model_that_contradicts_the_metadata_is_refused(cli, fp32):
    res = cli("verify", fp32, "--model", "resnet18")
    assert res.exit_code == 2
    assert f"exported from {MODEL}" in res.stderr


def test_random_weights_from_another_initialisation_cannot_be_rebuilt(cli, fp32, tmp_path):
    def older(meta):
        meta["weights"] = {"kind": "random", "seed": 0}  # what edgekit wrote before settling existed
        return meta

    stale = _edit(fp32, tmp_path / "stale.onnx", metadata=older)
    res = cli("verify", stale)
    assert res.exit_code == 2
    assert "cannot be rebuilt" in res.stderr and "re-export" in res.stderr


def test_weights_file_is_found_and_its_sha256_checked(cli, tmp_path):
    import torch

    from edgekit.export import export
    from edgekit.models.registry import create_model

    weights = tmp_path / "w.pt"
    torch.save(create_model(MODEL, seed=3, input_size=SMALL).state_dict(), weights)
    path = export(MODEL, input_size=SMALL, weights=weights, output=tmp_path / "m.onnx").path
    assert cli("verify", path, "--random-inputs", "0").exit_code == 0

    other = tmp_path / "other.pt"
    torch.save(create_model(MODEL, seed=4, input_size=SMALL).state_dict(), other)
    res = cli("verify", path, "--weights", other)
    assert res.exit_code == 2
    assert "sha256" in res.stderr and str(other) in res.stderr

    moved = tmp_path / "moved.pt"
    weights.rename(moved)
    res = cli("verify", path)
    assert res.exit_code == 2
    assert "is not there" in res.stderr and "--weights" in res.stderr
    res = cli("verify", path, "--weights", moved, "--random-inputs", "0")
    assert res.exit_code == 0, res.stderr


# --- int8: gates by precision, the fp32 ancestor as the reference ----------------------------


def test_int8_file_is_held_to_the_int8_gates_against_its_fp32_ancestor(cli, fp32, tmp_path):
    int8 = _edit(fp32, tmp_path / "m.int8.onnx", weights=_fake_int8, metadata=_as_int8)
    res = cli("verify", int8, "--report", tmp_path / "q.json")
    assert res.exit_code == 0, res.stderr
    report = _report(tmp_path / "q.json")
    assert report["precision"] == "int8" and report["gates_source"] == "int8 defaults"
    assert report["reference"]["model"] == MODEL  # the fp32 PyTorch model it descends from
    photos = next(c for c in report["comparisons"] if c["input_set"] == "photos")
    assert photos["gates"]["atol"] is None and photos["gates"]["min_sqnr_db"] is not None
    assert photos["outputs"][0]["max_abs"] > 1e-4  # really int8-like: fp32 gates would fail it
    # the same file against fp32's elementwise gates (overridable) fails, naming the gate
    res = cli("verify", int8, "--atol", "1e-4", "--rtol", "1e-3")
    assert res.exit_code == 1 and "max abs diff" in res.stderr


def test_int8_file_that_is_too_far_fails_on_sqnr_or_agreement(cli, fp32, tmp_path):
    rng = np.random.default_rng(0)

    def noisy(name, array):
        if array.ndim != 4:
            return None
        return array + rng.standard_normal(array.shape) * array.std() * 0.7

    bad = _edit(fp32, tmp_path / "bad.int8.onnx", weights=noisy, metadata=_as_int8)
    res = cli("verify", bad)
    assert res.exit_code == 1
    assert "output 'logits'" in res.stderr
    assert "SQNR" in res.stderr or "top-1 agreement" in res.stderr


def test_real_int8_file_from_quantize(cli, exported, tmp_path, digits_folder):
    from edgekit.quantize import quantize

    parent = exported(MODEL)
    int8 = quantize(parent.path, output=tmp_path / "q.int8.onnx").path
    res = cli("verify", int8, "--dataset", digits_folder, "--report", tmp_path / "q.json")
    assert res.exit_code == 0, res.stderr
    report = _report(tmp_path / "q.json")
    assert report["precision"] == "int8" and report["metadata"]["parent"]["sha256"]
    assert report["reference"]["weights"] == parent.metadata["weights"]
    assert report["dataset"]["samples"] == 40 and report["dataset"]["providers"][0]["drop_points"] is not None


def _to_fp16(src: Path, dst: Path) -> Path:
    """fp16 weights and activations, fp16 inputs and outputs too (ORT's converter), precision fp16."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(src))
    meta = read_metadata(model)
    half = convert_float_to_float16(model, keep_io_types=False)
    # the converter may append nodes out of order: sort them topologically for the checker
    nodes, ready, ordered = list(half.graph.node), {i.name for i in half.graph.input}, []
    ready |= {t.name for t in half.graph.initializer} | {""}
    while nodes:
        placed = [n for n in nodes if all(i in ready for i in n.input)]
        assert placed, "cycle"
        for n in placed:
            ready.update(n.output)
        ordered += placed
        nodes = [n for n in nodes if n not in placed]
    del half.graph.node[:]
    half.graph.node.extend(ordered)
    meta["precision"] = "fp16"
    write_metadata(half, meta)
    onnx.save(half, str(dst))
    return dst


def test_fp16_file_gets_cast_inputs_and_the_fp16_gates(cli, fp32, tmp_path):
    half = _to_fp16(fp32, tmp_path / "m.fp16.onnx")
    res = cli("verify", half, "--report", tmp_path / "h.json")
    assert res.exit_code == 0, res.stderr
    report = _report(tmp_path / "h.json")
    assert report["precision"] == "fp16" and report["gates"]["min_sqnr_db"] == 30.0
    assert any("cast to float16" in n for n in report["notes"])
    photos = next(c for c in report["comparisons"] if c["input_set"] == "photos")["outputs"][0]
    assert 30 < photos["sqnr_db"] < 100 and photos["max_abs"] > 0  # really half precision, and close


# --- accuracy on labelled data ---------------------------------------------------------------


def test_dataset_reports_top1_and_drop(cli, fp32, tmp_path, digits_folder):
    int8 = _edit(fp32, tmp_path / "m.int8.onnx", weights=_fake_int8, metadata=_as_int8)
    res = cli("verify", int8, "--dataset", digits_folder, "--images", digits_folder, "--providers", "cpu",
              "--report", tmp_path / "a.json")
    assert res.exit_code == 0, res.stderr
    assert "accuracy on" in res.stdout and "drop (points)" in res.stdout
    report = _report(tmp_path / "a.json")
    assert report["inputs"][0] == {"name": "photos", "description": f"40 images from {digits_folder}", "samples": 40}
    data = report["dataset"]
    assert data["samples"] == 40 and data["classes"] == [str(d) for d in range(10)]
    (ort,) = data["providers"]
    assert 0 <= data["pytorch_top1"] <= 100 and 0 <= ort["top1"] <= 100
    assert ort["drop_points"] == pytest.approx(data["pytorch_top1"] - ort["top1"])
    assert "| PyTorch fp32 (reference) |" in (tmp_path / "a.md").read_text()


def _labelled_by(model_path: Path, images: Path, dst: Path) -> Path:
    """The digits images relabelled with `model_path`'s own predictions: its PyTorch model scores
    100 % there by construction, so any change of prediction in a candidate is a measurable drop."""
    import shutil

    from edgekit.data.images import decode_image
    from edgekit.data.preprocessing import Preprocessing
    from edgekit.runtimes.ort import create_session

    preprocessing = Preprocessing.from_dict(read_metadata(onnx.load(str(model_path)))["preprocessing"])
    session = create_session(model_path)
    for label in range(10):
        (dst / str(label)).mkdir(parents=True)
    for i, image in enumerate(sorted(images.rglob("*.png"))):
        x = decode_image(image, preprocessing)[None]
        predicted = int(session.run({"input": x})[0].argmax())
        shutil.copy(image, dst / str(predicted) / f"{i}.png")
    return dst


def test_max_drop_is_a_gate(cli, fp32, tmp_path, digits_folder):
    labelled = _labelled_by(fp32, digits_folder, tmp_path / "labelled")
    res = cli(
        "verify", fp32, "--dataset", labelled, "--max-drop", "0", "--random-inputs", "0", "--report", tmp_path / "ok.json"
    )
    assert res.exit_code == 0, res.stderr
    data = _report(tmp_path / "ok.json")["dataset"]
    assert data["pytorch_top1"] == 100.0 and data["providers"][0]["drop_points"] == 0.0 and data["passed"]
    # a file whose first conv is negated changes predictions: the drop gate fails and says so
    # (the output gates are opened wide so that the accuracy gate is the one that fails)
    conv = _first_conv(fp32)
    bad = _edit(fp32, tmp_path / "bad.onnx", weights=lambda n, a: -a if n == conv else None, metadata=_as_int8)
    res = cli(
        "verify", bad, "--dataset", labelled, "--max-drop", "1", "--min-sqnr", "0",
        "--min-top1-agreement", "0", "--random-inputs", "0", "--report", tmp_path / "bad.json",
    )
    assert res.exit_code == 1
    assert any("--max-drop 1" in f and "a drop of" in f for f in _report(tmp_path / "bad.json")["failures"])
    data = _report(tmp_path / "bad.json")["dataset"]
    assert data["providers"][0]["drop_points"] > 1 and not data["passed"]
    assert "FAIL" in res.stdout


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda d: d / "missing", "is not a folder"),
        (lambda d: (d / "flat").mkdir() or d / "flat", "no class sub-folders"),
        (lambda d: [(d / "many" / str(i)).mkdir(parents=True) for i in range(11)] and d / "many", "11 classes"),
    ],
)
def test_bad_dataset_is_exit_2(cli, fp32, tmp_path, setup, message):
    res = cli("verify", fp32, "--dataset", setup(tmp_path))
    assert res.exit_code == 2
    assert message in res.stderr


# --- usage errors --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, message",
    [
        (["--max-drop", "1"], "--max-drop gates the accuracy on --dataset"),
        (["--min-top1-agreement", "95"], "--min-top1-agreement': 95.0 is not a finite number from 0 to 1"),
        (["--atol", "-1"], "--atol': -1.0 is not a finite number from 0 to"),
        (["--min-sqnr", "nan"], "--min-sqnr': nan is not a finite number from 0 to 200"),
        (["--seed", "-1"], "--seed"),
        (["--random-inputs", "100000"], "--random-inputs"),
        (["--providers", "cpu,rocm"], "unknown execution provider 'rocm'"),
        (["--report", "out.txt"], "does not end in .json"),
        (["--random-inputs", "0", "--inputs", "nothing.npz"], "does not exist"),
    ],
)
def test_usage_errors_are_one_line_exit_2(cli, fp32, args, message):
    res = cli("verify", fp32, *args)
    assert res.exit_code == 2
    assert message in res.stderr
    assert "Traceback" not in res.stderr and res.stderr.count("\n") <= 2


def test_not_an_onnx_file_is_exit_2(cli, tmp_path):
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00not a model")
    res = cli("verify", junk)
    assert res.exit_code == 2 and "junk.onnx" in res.stderr
    assert cli("verify", tmp_path / "absent.onnx").exit_code == 2


def test_report_json_is_strict_with_infinite_sqnr():
    from edgekit.judge.compare import DEFAULT_TOLERANCES, compare_outputs
    from edgekit.verify.report import to_json

    m = compare_outputs(np.ones((1, 3)), np.ones((1, 3)), "logits", DEFAULT_TOLERANCES["fp32"])
    assert m.sqnr_db == float("inf")

    class Stub:
        def to_dict(self):
            return {"sqnr": m.sqnr_db, "nan": float("nan"), "nested": [{"x": -float("inf")}], "path": Path("a")}

    assert json.loads(to_json(Stub())) == {"sqnr": "inf", "nan": "nan", "nested": [{"x": "-inf"}], "path": "a"}


def test_fp32_noise_floor_passes_only_what_pytorch_fp32_itself_misses():
    from edgekit.judge.compare import DEFAULT_TOLERANCES, compare_outputs
    from edgekit.judge.compare import apply_noise_floor

    exact = np.linspace(-3, 3, 20).reshape(2, 10)
    torch_fp32 = exact + 3e-4  # deep random nets: PyTorch fp32 itself is 3e-4 from float64
    ort_close = exact - 4e-4  # past atol 1e-4, but within twice PyTorch's own error
    ort_far = exact + 5e-3
    for candidate, passes in ((ort_close, True), (ort_far, False)):
        metrics = compare_outputs(torch_fp32, candidate, "logits", DEFAULT_TOLERANCES["fp32"])
        assert not metrics.passed
        floor = apply_noise_floor(metrics, exact, torch_fp32, candidate)
        assert metrics.passed is passes
        assert ("as accurate as PyTorch fp32 itself" in floor.describe()) is passes
        # a waived gate keeps its evidence
        assert bool(metrics.waived) is passes


# --- int8 judged as the deployment CPU computes it; per-layer error ---------------------------


@pytest.fixture(scope="module")
def vnni_int8(exported, tmp_path_factory) -> Path:
    """An 8-bit-weight (x86-vnni recipe) int8 file: what `auto` makes on a VNNI machine."""
    from edgekit.quantize import quantize

    return quantize(exported("textbook_resnext").path, target="x86-vnni",
                    output=tmp_path_factory.mktemp("vnni") / "v.int8.onnx").path


def test_on_a_cpu_without_vnni_an_8_bit_file_runs_both_kernels(cli, vnni_int8, tmp_path, monkeypatch):
    # Decision only (faked AVX2-only flags; the arithmetic is this CPU's, whichever it is): verify gates what
    # the CPU computes by default and measures exact accumulation beside it; the saturation block says which.
    monkeypatch.setenv("EDGEKIT_FAKE_CPU_FLAGS", "avx2 fma")
    cli("verify", vnni_int8, "--random-inputs", "0", "--providers", "cpu", "--report", tmp_path / "s.json")
    report = _report(tmp_path / "s.json")
    sat = report["int8_saturation"]
    assert sat["gated_on_default"] and sat["judged_for"] == "this CPU" and sat["cpu"]["kind"] == "x86 AVX2 without VNNI"
    kernels = {(c["kernels"], c["gated"]) for c in report["comparisons"]}
    assert kernels == {("default", True), ("x64quantprecision=1", False)}


def _raise_from_cli(*args):
    """The CLI with EDGEKIT_DEBUG=1: the typed failure itself instead of its one line."""
    import os

    from typer.testing import CliRunner

    from edgekit.cli import app

    os.environ["EDGEKIT_DEBUG"] = "1"
    try:
        result = CliRunner().invoke(app, [str(a) for a in ("verify", *args)])
    finally:
        del os.environ["EDGEKIT_DEBUG"]
    if result.exception is not None:
        raise result.exception


def test_an_8_bit_file_on_an_avx2_cpu_fails_naming_saturation(cli, vnni_int8, avx2, calibration_npz, tmp_path):
    # The AVX2 lane (ORT's own AVX2 kernels: natively on an AVX2-only host, emulated on a VNNI one): the
    # 8-bit-weight file saturates for real, and verify says so with the cause and the fix.
    # (4 of the photos as tensors, not all 12: each verify runs them through every kernel path under emulation)
    inputs = calibration_npz(64, 4)
    res = cli("verify", vnni_int8, "--device", "x86-avx2", "--inputs", inputs, "--random-inputs", "0",
              "--report", tmp_path / "s.json")
    report = _report(tmp_path / "s.json")
    sat = report["int8_saturation"]
    assert sat["gated_on_default"] and sat["cpu"]["kind"] == "x86 AVX2 without VNNI" and not sat["cpu"]["faked"]
    assert sat["gap_db"] > 3, sat
    assert res.exit_code == 1 and "saturation on this CPU" in res.stderr and "--target x86-avx2" in res.stderr
    with pytest.raises(SaturationFailed):  # the kind, for scripts that call the app
        _raise_from_cli(vnni_int8, "--device", "x86-avx2", "--inputs", inputs, "--random-inputs", "0")
    assert {c["device"] for c in report["comparisons"]} == {"x86-avx2" if avx2.mode == "emulated" else "host"}
    # the same file meant for a VNNI CPU is judged there on exact accumulation, and passes
    res = cli("verify", vnni_int8, "--device", "x86-avx2", "--target", "x86-vnni", "--inputs", inputs,
              "--random-inputs", "0", "--report", tmp_path / "t.json")
    assert res.exit_code == 0, res.stderr
    assert {c["kernels"] for c in _report(tmp_path / "t.json")["comparisons"] if c["gated"]} == {"x64quantprecision=1"}


def test_target_says_the_file_is_for_another_cpu(cli, vnni_int8, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEKIT_FAKE_CPU_FLAGS", "avx2 fma")
    res = cli("verify", vnni_int8, "--random-inputs", "0", "--target", "x86-vnni", "--report", tmp_path / "t.json")
    assert res.exit_code == 0, res.stderr
    report = _report(tmp_path / "t.json")
    gated = {c["kernels"] for c in report["comparisons"] if c["gated"]}
    assert gated == {"x64quantprecision=1"} and not report["int8_saturation"]["gated_on_default"]
    assert report["int8_saturation"]["failure"] is None


def test_a_vnni_cpu_runs_one_kernel_path(cli, vnni_int8, tmp_path, monkeypatch):
    # Decision only (faked VNNI flags): one kernel path, no saturation measurement. The gates are opened
    # because the arithmetic stays this CPU's: on a real AVX2 CPU these kernels saturate.
    monkeypatch.setenv("EDGEKIT_FAKE_CPU_FLAGS", "avx2 fma avx512_vnni")
    res = cli("verify", vnni_int8, "--random-inputs", "0", "--providers", "cpu", "--min-sqnr", "0",
              "--min-top1-agreement", "0", "--report", tmp_path / "v.json")
    assert res.exit_code == 0, res.stderr
    report = _report(tmp_path / "v.json")
    assert report["int8_saturation"] is None and {c["kernels"] for c in report["comparisons"]} == {"default"}


def test_saturation_failure_names_the_cause_and_the_fix():
    from edgekit.verify import Saturation

    sat = Saturation(cpu={"kind": "x86 AVX2 without VNNI"}, recipe_target="x86-vnni", judged_for="this CPU",
                     default_sqnr_db=17.2, exact_sqnr_db=29.4, default_top1_agreement=0.93, exact_top1_agreement=0.995,
                     gated_on_default=True, max_gap_db=3.0)
    assert "saturation on this CPU" in sat.failure and "12.2 dB lost" in sat.failure
    assert "--target x86-avx2" in sat.failure and "session.x64quantprecision=1" in sat.failure
    assert Saturation(**{**sat.__dict__, "exact_sqnr_db": 18.0}).failure is None  # 0.8 dB: noise, not saturation


def test_real_saturation_on_a_cpu_without_vnni(vnni_int8, avx2):
    # ORT's AVX2 u8s8 kernels (native or emulated) on an 8-bit-weight file: the default path saturates, and
    # session.x64quantprecision=1 computes exactly what a CPU with exact accumulation computes.
    from edgekit.judge.compare import DEFAULT_TOLERANCES, compare_outputs
    from edgekit.core.provenance import this_cpu
    from edgekit.runtimes.runners import run_onnx
    from edgekit.judge.targets import EXACT_INT8_SESSION

    x = np.random.default_rng(0).standard_normal((4, 3, SMALL, SMALL)).astype(np.float32) * 0.5
    default = run_onnx(vnni_int8, x, 1, device="x86-avx2")
    exact = run_onnx(vnni_int8, x, 1, EXACT_INT8_SESSION, device="x86-avx2")
    # the exact path is the reference; the default kernels lose more than noise on an 8-bit-weight file
    assert compare_outputs(exact, default, "logits", DEFAULT_TOLERANCES["int8"]).sqnr_db < 30
    here = this_cpu()
    if here.has_vnni or here.is_arm64:  # this CPU accumulates exactly by default: the same numbers, bit for bit
        assert np.array_equal(exact, run_onnx(vnni_int8, x, 1))


def test_layers_report_table_json_and_plot(cli, exported, tmp_path):
    from edgekit.quantize import quantize

    parent = exported(MODEL)
    int8 = quantize(parent.path, output=parent.path.with_name("layers.int8.onnx")).path
    res = cli("verify", int8, "--layers", "--random-inputs", "0", "--report", tmp_path / "l.json")
    assert res.exit_code == 0, res.stderr
    assert "per-layer int8 error" in res.stdout
    layers = _report(tmp_path / "l.json")["layers"]
    sqnrs = [a["sqnr_db"] for a in layers["activations"]]
    assert len(sqnrs) > 10 and sqnrs == sorted(sqnrs, key=lambda v: float(v))  # worst first
    assert layers["weights"] and all("sqnr_db" in w for w in layers["weights"])
    png = tmp_path / "l.layers.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    res = cli("verify", parent.path, "--layers")
    assert res.exit_code == 2 and "--layers compares an int8 file" in res.stderr


# --- the model's own preprocessing, declared at export -----------------------------------------


REFERENCE = Path(__file__).resolve().parent.parent / "benchmarks" / "reference" / "textbook_densenet-digits.safetensors"


def _torchvision_top1(weights: Path, folder: Path, transform) -> float:
    """Top-1 of the PyTorch model on an ImageFolder, through torchvision's own transforms: an evaluation
    that shares no preprocessing code with edgekit."""
    import torch
    from torchvision import datasets

    from edgekit.models.reference import build_model
    from edgekit.models.registry import get_spec

    model, _ = build_model(get_spec("textbook_densenet"), None, weights, False, 0, 32)
    data = datasets.ImageFolder(str(folder), transform=transform)
    x = torch.stack([data[i][0] for i in range(len(data))])
    y = torch.tensor([data[i][1] for i in range(len(data))])
    with torch.no_grad():
        return 100.0 * float((model(x).argmax(1) == y).float().mean())


def test_declared_preprocessing_measures_what_pytorch_measures(cli, tmp_path, digits_folder):
    # A model trained on 32x32 digits without a crop: verify --dataset must score the PyTorch model as a
    # direct torchvision evaluation of the same images does, through the preprocessing declared at export.
    from torchvision import transforms

    onnx_file = tmp_path / "d.onnx"
    res = cli("export", "textbook_densenet", "--weights", REFERENCE, "--input-size", "32", "--resize", "32",
              "--crop", "32", "-o", onnx_file)
    assert res.exit_code == 0, res.stderr
    assert "resize 32 (shorter side, bilinear), centre crop 32" in res.stdout
    res = cli("verify", onnx_file, "--dataset", digits_folder, "--random-inputs", "0", "--report", tmp_path / "d.json")
    assert res.exit_code == 0, res.stderr
    measured = _report(tmp_path / "d.json")["dataset"]["pytorch_top1"]
    imagenet = transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    direct = _torchvision_top1(REFERENCE, digits_folder, transforms.Compose([
        transforms.Resize(32), transforms.CenterCrop(32), transforms.ToTensor(), imagenet]))
    assert measured == pytest.approx(direct) and measured > 90
    meta = read_metadata(onnx.load(str(onnx_file)))
    assert meta["preprocessing"]["resize"] == 32 and meta["preprocessing"]["crop"] == 32


def test_the_table_is_readable_at_80_columns_and_verbose_has_every_metric(cli, fp32, tmp_path):
    from rich.console import Console

    from edgekit.verify import verify
    from edgekit.verify.report import BRIEF_COLUMNS, VERBOSE_COLUMNS, comparison_table

    report = verify(fp32, providers="cpu")
    console = Console(width=80, record=True, color_system=None)
    console.print(comparison_table(report))
    text = console.export_text()
    assert max(len(line) for line in text.splitlines()) <= 80
    header = next(line for line in text.splitlines() if "runtime" in line)
    assert all(name in header for name in BRIEF_COLUMNS)  # no header folded into fragments
    wide = Console(width=200, record=True, color_system=None)
    wide.print(comparison_table(report, verbose=True))
    wide_text = wide.export_text()  # (export_text clears what it recorded)
    assert all(name in wide_text for name in VERBOSE_COLUMNS), wide_text
    assert cli("verify", fp32, "--providers", "cpu", "-v").exit_code == 0  # (wide terminals: CliRunner's is 80)
