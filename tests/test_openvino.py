"""OpenVINO as a second runtime: the files edgekit writes load, match ONNX Runtime, and say what precision
they really ran in; bench times both. Skipped (with the reason) where the openvino extra is not installed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("openvino", reason="OpenVINO is not installed (pip install 'edgekit[openvino]'); its tests are skipped")

from edgekit.data.images import load_image_folder
from edgekit.judge.compare import DEFAULT_TOLERANCES, compare_outputs  # noqa: E402
from edgekit.core.errors import BadInput  # noqa: E402
from edgekit.runtimes.openvino_model import OpenVinoModel, dominant_precision, openvino_available, precision_summary  # noqa: E402
from edgekit.data.preprocessing import Preprocessing  # noqa: E402
from edgekit.runtimes.runners import run_batched, run_onnx  # noqa: E402
from tests.conftest import CALIBRATION  # noqa: E402

INT8_LAYERS = {"u8", "i8"}


@pytest.fixture(scope="module")
def files(exported, tmp_path_factory):
    """(fp32, int8, photos): a textbook ResNet-18 at 64 px exported and quantized by edgekit, and the bundled
    photos through its preprocessing."""
    from edgekit.quantize import quantize

    parent = exported("textbook_resnet18")
    int8 = quantize(parent.path, output=tmp_path_factory.mktemp("ov") / "r.int8.onnx").path
    photos = load_image_folder(CALIBRATION, Preprocessing.from_dict(parent.metadata["preprocessing"])).tensors
    return parent.path, int8, photos


def _both(path: Path, photos: np.ndarray):
    model = OpenVinoModel.load(path, threads=1)
    return run_batched(model.run, photos, model.batch)[0], run_onnx(path, photos, model.batch), model


def test_available_and_versioned(files):
    model = OpenVinoModel.load(files[0], threads=1)
    assert openvino_available() and model.version.startswith("20")
    assert model.config["NUM_STREAMS"] == 1 and model.config["INFERENCE_NUM_THREADS"] == 1
    assert model.config["INFERENCE_PRECISION_HINT"] == "f32" and model.config["PERFORMANCE_HINT"] == "LATENCY"
    assert model.input_shape == [1, 3, 64, 64] and model.output_names == ["logits"]


def test_fp32_matches_onnx_runtime_and_runs_in_fp32(files):
    fp32, _int8, photos = files
    ov_out, ort_out, model = _both(fp32, photos)
    assert ov_out.shape == ort_out.shape == (len(photos), 10)
    assert np.abs(ov_out - ort_out).max() < 1e-4
    executed = model.executed_precisions()
    # asked for f32: no layer runs in bf16, even on a CPU where that is OpenVINO's default
    assert set(executed) == {"f32"} and dominant_precision(executed) == "fp32"
    assert set(model.executed_layers()["Convolution"]) == {"f32"}


def test_int8_matches_onnx_runtime_and_runs_in_int8(files):
    fp32, int8, photos = files
    ov_out, ort_out, model = _both(int8, photos)
    reference = run_onnx(fp32, photos, 1)
    gates = DEFAULT_TOLERANCES["int8"]
    vs_ort = compare_outputs(ort_out, ov_out, "logits", gates)
    ov_vs_fp32 = compare_outputs(reference, ov_out, "logits", gates)
    ort_vs_fp32 = compare_outputs(reference, ort_out, "logits", gates)
    # Two correct int8 engines round at different places (OpenVINO keeps some requantizations in float),
    # so they differ from each other by about as much as each differs from fp32 (measured here: 22-23 dB
    # apart on this random-weight net, 23-24 dB each from fp32). What must hold: the same file computes
    # the same function in both, and OpenVINO is no further from fp32 than ONNX Runtime.
    assert vs_ort.passed, vs_ort.failures
    assert vs_ort.sqnr_db > 15 and vs_ort.top1_agreement >= 0.75
    assert ov_vs_fp32.passed and ov_vs_fp32.sqnr_db >= ort_vs_fp32.sqnr_db - 3.0
    layers = model.executed_layers()
    assert set(layers["Convolution"]) <= INT8_LAYERS, layers  # every convolution ran an int8 kernel
    executed = model.executed_precisions()
    assert dominant_precision(executed) == "int8"
    assert sum(n for p, n in executed.items() if p in INT8_LAYERS) > sum(n for p, n in executed.items() if p not in INT8_LAYERS)
    assert precision_summary({"u8": 3, "f32": 1}) == "u8 3, f32 1"


def test_bf16_hint_shows_in_the_executed_precisions(files):
    import openvino as ov

    if "BF16" not in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        pytest.skip("this CPU has no bf16 support: OpenVINO cannot run bf16 here")
    model = OpenVinoModel.load(files[0], threads=1, precision_hint="bf16")
    assert "bf16" in model.executed_precisions()


def test_bad_input_shape_is_bad_input(files):
    model = OpenVinoModel.load(files[0], threads=1)
    with pytest.raises(BadInput, match=r"has shape \(2, 3, 64, 64\); the model expects \(1, 3, 64, 64\)"):
        model.run(np.zeros((2, 3, 64, 64), np.float32))


def test_missing_file_is_bad_input(tmp_path):
    with pytest.raises(BadInput, match="does not exist"):
        OpenVinoModel.load(tmp_path / "nope.onnx")


def test_dynamic_batch_is_fixed_for_timing(exported):
    path = exported("textbook_resnext", dynamic_batch=True).path
    dynamic = OpenVinoModel.load(path, threads=1)
    assert dynamic.batch is None
    x = np.random.default_rng(0).standard_normal((3, 3, 64, 64)).astype(np.float32)
    assert dynamic.run(x)[0].shape == (3, 10)
    fixed = OpenVinoModel.load(path, threads=1, batch=2)
    assert fixed.batch == 2 and fixed.run(x[:2])[0].shape == (2, 10)


def test_bench_times_both_runtimes_interleaved(cli, files, tmp_path):
    fp32, int8, _photos = files
    report_file = tmp_path / "b.json"
    res = cli("bench", fp32, int8, "--runtimes", "ort,openvino", "--threads", "1", "--warmup", "1", "--runs", "2",
              "--report", report_file)
    assert res.exit_code == 0, res.stderr
    assert "runtime" in res.stdout and "openvino" in res.stdout and "executed" in res.stdout
    data = json.loads(report_file.read_text())
    assert data["runtimes"] == ["ort", "openvino"] and set(data["runtime_versions"]) == {"onnxruntime", "openvino"}
    rows = data["timings"]
    assert [(Path(t["file"]).name, t["runtime"]) for t in rows] == [
        (fp32.name, "ort"), (fp32.name, "openvino"), (int8.name, "ort"), (int8.name, "openvino")
    ]
    assert [t["label"] for t in rows] == [f"{fp32.name} [ort]", f"{fp32.name} [openvino]", f"{int8.name} [ort]",
                                          f"{int8.name} [openvino]"]
    assert data["order"] == [t["label"] for t in rows] * 2  # one round-robin: A B C D A B C D
    assert all(t["runs"] == 2 and t["provider"] == "cpu" for t in rows)
    assert rows[0]["executed_precisions"] is None and rows[2]["executed_precisions"] is None
    assert set(rows[1]["executed_precisions"]) == {"f32"}
    assert dominant_precision(rows[3]["executed_precisions"]) == "int8"
    assert rows[1]["runtime_config"]["INFERENCE_NUM_THREADS"] == 1
    assert rows[1]["precision"] == "fp32" and rows[3]["precision"] == "int8"
    assert rows[3]["size_ratio"] > 3


def test_bench_openvino_alone(files):
    from edgekit.bench import bench

    report = bench([files[0]], runtimes="openvino", threads=1, warmup=0, runs=1)
    assert report.runtimes == ["openvino"] and [t.runtime for t in report.timings] == ["openvino"]
    assert report.timings[0].label == files[0].name


def test_verify_runs_openvino_beside_ort_with_the_same_gates(cli, exported, tmp_path):
    pytest.importorskip("openvino", reason="OpenVINO is an optional extra (pip install 'edgekit[openvino]')")
    path = exported("textbook_resnet18").path
    res = cli("verify", path, "--runtimes", "ort,openvino", "--random-inputs", "0", "--report", tmp_path / "v.json")
    assert res.exit_code == 0, res.stderr
    import json

    rows = json.loads((tmp_path / "v.json").read_text())["comparisons"]
    assert {r["runtime"] for r in rows} == {"onnxruntime", "openvino"}
    ov = [r for r in rows if r["runtime"] == "openvino"]
    assert len(ov) == 1 and ov[0]["passed"] and "executed: f32" in ov[0]["notes"][0]
