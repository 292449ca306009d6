"""ORT and OpenVINO side by side in bench: per layer on the same file (--profile --runtimes ort,openvino), and
bench's closing line, the fastest runtime whose outputs pass. The alignment is tested on its own with made-up
layers; the CLI tests are skipped (with the reason) where the openvino extra is not installed."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from edgekit.bench.layers import align


def _node(name, op_type="QLinearConv", ms=1.0, kind="int8"):
    return SimpleNamespace(name=name, op_type=op_type, ms=ms, kind=kind)


def _layer(name, originals, ms=0.5, exec_type="brgconv_avx512_I8", layer_type="Convolution"):
    from edgekit.runtimes.openvino_model import OpenVinoLayer

    return OpenVinoLayer(name=name, layer_type=layer_type, exec_type=exec_type, precision="u8", ms=ms,
                         original_names=originals)


def test_align_matches_by_original_names_and_groups_fused_nodes():
    ort = [_node("/b1/conv2/Conv_token_8", ms=3.0), _node("/b1/Add", "QLinearAdd", ms=1.0),
           _node("/fc/Gemm", "QGemm", ms=0.25), _node("Transpose", "Transpose", ms=0.5, kind="layout")]
    ov = [_layer("/b1/conv2/Conv/WithoutBiases", ["/b1/conv2/Conv/WithoutBiases", "/b1/conv2/Conv", "/b1/Add"], ms=1.5),
          _layer("/fc/Gemm/WithoutBiases", ["/fc/Gemm/WithoutBiases", "logits_QuantizeLinear"], ms=0.5,
                 exec_type="brgemm_avx512_I8", layer_type="FullyConnected"),
          _layer("input_reorder", ["input_reorder"], ms=0.125, exec_type="jit_uni_I8", layer_type="Reorder")]
    sides = align(ort, ov, file="m.onnx", runs=3, threads=2)
    assert [r.layer for r in sides.rows] == ["/b1/conv2/Conv/WithoutBiases", "/fc/Gemm/WithoutBiases"]
    conv = sides.rows[0]  # the conv and the residual Add ORT runs apart land on OpenVINO's one fused layer
    assert conv.ort_nodes == ["/b1/conv2/Conv_token_8", "/b1/Add"] and conv.ort_ms == 4.0
    assert conv.ort_loses_ms == 2.5 and conv.ort_ops == ["QLinearAdd", "QLinearConv"] and conv.ort_kind == "int8"
    gemm = sides.rows[1]  # OpenVINO's /WithoutBiases suffix does not stop the match; here ORT is faster
    assert gemm.ort_loses_ms == -0.25 and sides.top_losses() == [conv]
    # what matched nowhere is listed with its time, never dropped
    assert sides.ort_unmatched == [{"name": "Transpose", "op_type": "Transpose", "ms": 0.5}]
    assert [u["name"] for u in sides.openvino_unmatched] == ["input_reorder"]
    data = sides.to_dict()
    assert data["ort_kernel_ms"] == 4.75 and data["openvino_layer_ms"] == 2.125
    assert data["ort_unmatched_ms"] == 0.5 and data["openvino_unmatched_ms"] == 0.125 and data["matched_rows"] == 2


def test_align_falls_back_to_the_longest_prefix():
    ort = [_node("/b1/conv1/Conv_quant_split", ms=2.0)]
    ov = [_layer("/b1/conv", ["/b1/conv"], ms=0.5), _layer("/b1/conv1/Conv", ["/b1/conv1/Conv"], ms=1.0)]
    sides = align(ort, ov)
    assert [r.layer for r in sides.rows] == ["/b1/conv1/Conv/"[:-1]] and sides.rows[0].ort_ms == 2.0
    assert [u["name"] for u in sides.openvino_unmatched] == ["/b1/conv"]


@pytest.fixture(scope="module")
def int8_file(exported, tmp_path_factory):
    pytest.importorskip("openvino", reason="OpenVINO is not installed (pip install 'edgekit[openvino]')")
    from edgekit.quantize import quantize

    parent = exported("textbook_resnet18", 32)
    return quantize(parent.path, output=tmp_path_factory.mktemp("ovbench") / "r.int8.onnx").path


def test_bench_profile_side_by_side_json_and_plot(cli, int8_file, tmp_path):
    report = tmp_path / "bench.json"
    result = cli("bench", str(int8_file), "--runtimes", "ort,openvino", "--profile", "--runs", "3", "--warmup", "1",
                 "--threads", "1", "--report", str(report))
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    # bench ends with one line: the fastest runtime whose outputs pass, for this file on this CPU
    assert lines[-1].startswith(f"fastest passing runtime for {int8_file.name} on this CPU: ")
    assert "ORT vs OpenVINO per layer" in result.output
    data = json.loads(report.read_text())
    sides = data["side_by_side"][int8_file.name]
    assert sides["matched_rows"] >= 10 and sides["ort_nodes"] > 0 and sides["openvino_layers"] > 0
    convs = [r for r in sides["rows"] if r["layer_type"] == "Convolution"]
    assert convs and all(r["openvino_precision"] in ("u8", "i8") for r in convs)
    int8_in_ort = [r for r in convs if any(op.startswith("QLinear") for op in r["ort_ops"])]
    assert len(int8_in_ort) > len(convs) // 2, [r["ort_ops"] for r in convs]
    # a conv the recipe kept in float (the stem, a fallback) says so: that is where ORT's kernel differs
    assert all(r["ort_kind"] == "float" for r in convs if r not in int8_in_ort)
    assert all(r["ort_ms"] >= 0 and r["openvino_ms"] >= 0 for r in sides["rows"])
    verdict = data["verdict"][int8_file.name]
    labels = {c["runtime"]: c for c in verdict["checked"]}
    assert set(labels) == {"ort", "openvino"} and labels["ort"]["passed"] and labels["ort"]["reference"]
    assert verdict["fastest"] in {c["label"] for c in verdict["checked"] if c["passed"]}
    assert verdict["p50_ms"] == min(c["p50_ms"] for c in verdict["checked"] if c["passed"])
    pngs = list(tmp_path.parent.glob("*.ort-vs-openvino.png")) + list(int8_file.parent.glob("*.ort-vs-openvino.png"))
    assert pngs and pngs[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_verdict_with_ort_alone(cli, int8_file):
    result = cli("bench", str(int8_file), "--runs", "2", "--warmup", "1", "--threads", "1", "--json")
    assert result.exit_code == 0, result.output
    verdict = json.loads(result.output)["verdict"][int8_file.name]
    assert verdict["runtime"] == "ort" and verdict["provider"] == "cpu" and len(verdict["checked"]) >= 1


def test_bench_interval_reports_spinning_off_and_on_and_openvino(cli, int8_file):
    result = cli("bench", str(int8_file), "--runtimes", "ort,openvino", "--interval", "5", "--runs", "4",
                 "--warmup", "1", "--threads", "1", "--json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)["periodic"]
    assert [(r["runtime"], r["spin"]) for r in rows] == [("ort", False), ("ort", True), ("openvino", None)]
    assert [r["label"] for r in rows] == ["ort, spinning off", "ort, spinning on", "openvino"]
    for r in rows:
        assert r["frames"] == 4 and r["interval_ms"] == 5 and 0 < r["p50_ms"] <= r["p90_ms"]
        assert r["cpu_ms_in_call"] >= 0 and r["cpu_ms_between_frames"] >= 0
        assert r["cpu_ms_per_frame"] >= r["cpu_ms_between_frames"]


def test_bench_interval_text_ends_with_the_verdict(cli, int8_file):
    result = cli("bench", str(int8_file), "--interval", "5", "--runs", "3", "--warmup", "1", "--threads", "1")
    assert result.exit_code == 0, result.output
    assert "ort, spinning off" in result.output and "ort, spinning on" in result.output
    assert [line for line in result.output.splitlines() if line.strip()][-1].startswith("fastest passing runtime")


def test_package_manifest_records_each_runtimes_latency(cli, int8_file, tmp_path):
    out = tmp_path / "r.bundle"
    result = cli("package", str(int8_file), "-o", str(out), "--golden", "4", "--json")
    assert result.exit_code == 0, result.output
    runtimes = json.loads((out / "manifest.json").read_text())["runtimes"]
    for key in ("onnxruntime", "openvino"):
        if runtimes[key].get("passed"):
            assert runtimes[key]["latency_ms_p50"] > 0 and "packaging machine" in runtimes[key]["latency_measured"]
    assert "latency_ms_p50" in runtimes["onnxruntime"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["thread_spinning"]["checked_with"].startswith("on")
    assert "session.intra_op.allow_spinning=0" in (out / "README.txt").read_text()


def test_verdict_line_names_the_fastest_passing_runtime_and_what_failed():
    from edgekit.bench.verdict import verdict_line

    checked = [{"label": "m.onnx [ort]", "runtime": "ort", "provider": "cpu", "p50_ms": 2.0, "passed": True, "failures": []},
               {"label": "m.onnx [openvino]", "runtime": "openvino", "provider": "cpu", "p50_ms": 1.0, "passed": False,
                "failures": ["SQNR 3.0 dB < 12.0"]}]
    verdict = {"fastest": "m.onnx [ort]", "runtime": "ort", "provider": "cpu", "p50_ms": 2.0, "gates": "int8 defaults",
               "samples": 8, "checked": checked}
    line = verdict_line("m.onnx", verdict)
    assert line.startswith("fastest passing runtime for m.onnx on this CPU: ort cpu, p50 2.00 ms")
    assert "failed the gates: m.onnx [openvino] (SQNR 3.0 dB < 12.0)" in line and "\n" not in line
    none = verdict_line("m.onnx", {**verdict, "fastest": None, "runtime": None, "checked": checked[1:]})
    assert none.startswith("fastest passing runtime for m.onnx on this CPU: none")
