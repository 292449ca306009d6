"""`edgekit bench`: statistics, interleaving, report schema, bad input. No timing is asserted."""

from __future__ import annotations

import json

import pytest

from edgekit.bench import bench, interleaved_order, percentiles
from edgekit.core.errors import BadInput


def test_percentiles_on_known_samples():
    p50, p90, mean = percentiles([1, 2, 3, 4, 5, 6, 7, 8, 9, 10])
    assert p50 == 5.5 and p90 == pytest.approx(9.1) and mean == 5.5
    assert percentiles([7.0]) == (7.0, 7.0, 7.0)
    with pytest.raises(ValueError):
        percentiles([])


def test_interleaved_order():
    assert interleaved_order(["A", "B", "C"], 3) == ["A", "B", "C"] * 3


def test_runs_are_interleaved_and_counted(exported):
    a = exported("textbook_resnet18").path
    b = exported("textbook_resnext").path
    report = bench([a, b], providers=["cpu"], threads=1, warmup=1, runs=4)
    assert report.order == [a.name, b.name] * 4
    assert [t.runs for t in report.timings] == [4, 4]
    first, second = report.timings
    assert first.speedup == 1.0 and second.speedup == pytest.approx(first.p50_ms / second.p50_ms)
    assert first.size_ratio == 1.0
    assert first.gflops is not None and first.gflops > 0
    assert report.sgemm_gflops > 0 and first.peak_fraction is not None


def test_macs_come_from_the_architecture(exported):
    from edgekit.bench.candidates import macs_for

    meta = exported("textbook_resnet18").metadata
    macs = macs_for(meta)
    # the chapter's ResNet-18 at 64x64: 1.81 GMACs at 224 scaled by (64/224)^2, within 10 %
    assert macs == pytest.approx(1.8136e9 * (64 / 224) ** 2, rel=0.1)


def test_torch_baseline_and_json_report(cli, exported, tmp_path):
    path = exported("textbook_densenet").path
    report_file = tmp_path / "bench.json"
    res = cli("bench", path, "--torch", "--threads", "1", "--warmup", "1", "--runs", "3", "--report", report_file)
    assert res.exit_code == 0, res.stderr
    assert "PyTorch eager (textbook_densenet)" in res.stdout and "sgemm peak" in res.stdout
    data = json.loads(report_file.read_text())
    assert set(data) >= {"threads", "batch", "machine", "sgemm_gflops", "baseline", "timings", "skipped"}
    assert data["baseline"].startswith("PyTorch eager")
    t = data["timings"][1]
    assert set(t) >= {"label", "p50_ms", "p90_ms", "mean_ms", "throughput", "file_bytes", "memory_bytes", "gflops", "peak_fraction", "speedup"}
    assert data["timings"][0]["speedup"] == 1.0


def test_missing_file_is_exit_2(cli, tmp_path):
    res = cli("bench", tmp_path / "nope.onnx")
    assert res.exit_code == 2 and "does not exist" in res.stderr


def test_unavailable_provider_is_exit_3(cli, exported):
    from edgekit.runtimes.ort import cuda_device_available

    if cuda_device_available():
        pytest.skip("a CUDA device is present: CUDA is available, nothing to refuse")
    res = cli("bench", exported("textbook_resnet18").path, "--providers", "cuda", "--runs", "1")
    assert res.exit_code == 3 and "CUDA did not start" in res.stderr


def test_unknown_provider_is_exit_2(cli, exported):
    res = cli("bench", exported("textbook_resnet18").path, "--providers", "tpu")
    assert res.exit_code == 2 and "unknown execution provider 'tpu'" in res.stderr


def test_static_batch_mismatch(cli, exported):
    res = cli("bench", exported("textbook_resnet18").path, "--batch", "4")
    assert res.exit_code == 2 and "static batch of 1" in res.stderr


@pytest.mark.cuda
def test_cuda_is_timed_with_io_binding(exported):
    from edgekit.runtimes.ort import cuda_device_available

    if not cuda_device_available():
        pytest.skip("no CUDA device on this machine (torch.cuda.is_available() is False)")
    report = bench([exported("textbook_resnet18").path], providers=["cpu", "cuda"], warmup=1, runs=3)
    assert [t.provider for t in report.timings] == ["cpu", "cuda"]


def test_runtimes_parse():
    from edgekit.runtimes.openvino_model import parse_runtimes

    assert parse_runtimes(None) == ["ort"] and parse_runtimes("") == ["ort"]
    assert parse_runtimes("onnxruntime, ORT") == ["ort"]
    with pytest.raises(BadInput, match="unknown runtime 'tflite'"):
        parse_runtimes("ort,tflite")


def test_unknown_runtime_is_exit_2(cli, exported):
    res = cli("bench", exported("textbook_resnet18").path, "--runtimes", "ort,tvm")
    assert res.exit_code == 2 and "unknown runtime 'tvm'" in res.stderr


def test_openvino_not_installed_is_exit_3_with_one_line(cli, exported, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "openvino", None)  # `import openvino` now fails as if it were not installed
    res = cli("bench", exported("textbook_resnet18").path, "--runtimes", "ort,openvino", "--runs", "1")
    assert res.exit_code == 3
    assert res.stderr.strip() == "error: OpenVINO is not installed: pip install 'edgekit[openvino]'"
    assert res.stdout == ""


def test_default_runtime_is_ort_and_labels_stay_plain(exported):
    path = exported("textbook_resnet18").path
    report = bench([path], providers=["cpu"], threads=1, warmup=0, runs=1)
    assert report.runtimes == ["ort"] and report.timings[0].runtime == "ort" and report.timings[0].label == path.name
    assert report.timings[0].executed_precisions is None and report.notes == []


# --- pacing, the per-node profile, the session options a file needs ---------------------------


def test_interval_times_paced_runs_besides_back_to_back(exported):
    path = exported("textbook_resnet18").path
    report = bench([path], runs=3, warmup=0, interval_ms=5.0)
    t = report.timings[0]
    assert report.interval_ms == 5.0 and t.paced_p50_ms > 0 and t.paced_p90_ms >= t.paced_p50_ms
    assert bench([path], runs=2, warmup=0).timings[0].paced_p50_ms is None


def test_interval_is_validated(cli, exported):
    res = cli("bench", exported("textbook_resnet18").path, "--interval", "0")
    assert res.exit_code == 2 and "--interval" in res.stderr


def test_profile_compares_fp32_and_int8_by_op_type(cli, exported, tmp_path):
    from edgekit.quantize import quantize

    fp32 = exported("textbook_resnet18").path
    int8 = quantize(fp32, output=tmp_path / "p.int8.onnx").path
    png = tmp_path / "p.png"
    res = cli("bench", fp32, int8, "--runs", "3", "--warmup", "0", "--profile", "--plot", png, "--report", tmp_path / "b.json")
    assert res.exit_code == 0, res.stderr
    assert "per-node profile" in res.stdout and "QLinearConv" in res.stdout and "gains" in res.stdout
    data = json.loads((tmp_path / "b.json").read_text())
    ops = {o["op_type"]: o for o in data["profiles"]["p.int8.onnx"]["ops"]}
    assert ops["QLinearConv"]["kind"] == "int8" and ops["QLinearConv"]["ms"] > 0
    assert data["profile_diffs"][0]["baseline"] == fp32.name and data["profile_diffs"][0]["file"] == "p.int8.onnx"
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_a_file_needing_exact_kernels_is_timed_both_ways_on_a_cpu_without_vnni(exported, tmp_path, monkeypatch):
    from edgekit.quantize import quantize

    int8 = quantize(exported("textbook_resnext").path, target="x86-vnni", output=tmp_path / "v.int8.onnx").path
    monkeypatch.setenv("EDGEKIT_FAKE_CPU_FLAGS", "avx2 fma")
    labels = [t.label for t in bench([int8], runs=2, warmup=0).timings]
    assert labels == ["v.int8.onnx", "v.int8.onnx [x64quantprecision=1]"]
    monkeypatch.setenv("EDGEKIT_FAKE_CPU_FLAGS", "avx2 fma avx512_vnni")
    assert [t.label for t in bench([int8], runs=2, warmup=0).timings] == ["v.int8.onnx"]
