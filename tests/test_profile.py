"""edgekit.bench.profile: ORT's per-node profile of a tiny fp32 model and its int8 QDQ version, summarised.

No timing assertions: only what the trace must contain and how it is classified."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest

SHAPE = (1, 3, 16, 16)


def _tiny_fp32(path: Path) -> Path:
    """Conv -> Relu -> GlobalAveragePool -> Flatten -> Gemm, seeded random weights."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.normal(0, 0.2, (8, 3, 3, 3)).astype(np.float32), "W"),
        numpy_helper.from_array(rng.normal(0, 0.1, 8).astype(np.float32), "B"),
        numpy_helper.from_array(rng.normal(0, 0.2, (4, 8)).astype(np.float32), "G"),
        numpy_helper.from_array(np.zeros(4, np.float32), "GB"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "W", "B"], ["c"], name="conv", pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("GlobalAveragePool", ["r"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "G", "GB"], ["y"], name="fc", transB=1),
    ]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(SHAPE))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def _tiny_int8(fp32: Path, out: Path) -> Path:
    """u8 activations x s8 per-channel weights, QDQ, calibrated on seeded random inputs."""
    import logging

    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            rng = np.random.default_rng(1)
            self.items = iter([{"x": rng.normal(size=SHAPE).astype(np.float32)} for _ in range(8)])

        def get_next(self):
            return next(self.items, None)

    logging.disable(logging.WARNING)  # ORT advises pre-processing through the root logger
    try:
        quantize_static(str(fp32), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    finally:
        logging.disable(logging.NOTSET)
    return out


@pytest.fixture(scope="module")
def tiny_pair(tmp_path_factory):
    folder = tmp_path_factory.mktemp("profile-models")
    fp32 = _tiny_fp32(folder / "tiny.onnx")
    return fp32, _tiny_int8(fp32, folder / "tiny.int8.onnx")


@pytest.fixture
def isolated_tmp(tmp_path, monkeypatch):
    """The temp folder and the working directory both empty folders, to prove no trace is left in either."""
    tmp = tmp_path / "tmp"
    cwd = tmp_path / "cwd"
    tmp.mkdir()
    cwd.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    monkeypatch.chdir(cwd)
    return tmp, cwd


@pytest.fixture(scope="module")
def profiles(tiny_pair, tmp_path_factory):
    from edgekit.bench.profile import profile_file

    x = np.random.default_rng(2).normal(size=SHAPE).astype(np.float32)
    fp32, int8 = tiny_pair
    return profile_file(fp32, x, threads=1, runs=3), profile_file(int8, x, threads=1, runs=3)


def test_fp32_profile_has_its_op_types_and_positive_totals(profiles):
    fp32, _ = profiles
    ops = {o.op_type for o in fp32.ops}
    assert ops & {"Conv", "FusedConv", "NchwcConv"}, ops
    assert ops & {"Gemm", "FusedGemm"}, ops
    assert fp32.runs == 3 and len(fp32.run_ms_each) == 3
    assert fp32.run_ms > 0 and fp32.kernel_ms > 0
    assert all(n.ms >= 0 for n in fp32.nodes)
    assert fp32.by_kind()["int8"]["nodes"] == 0
    assert abs(sum(o.percent for o in fp32.ops) - 100) < 1e-6


def test_int8_profile_flags_int8_kernels_and_conversions(profiles):
    _, int8 = profiles
    ops = {o.op_type: o for o in int8.ops}
    assert "QLinearConv" in ops and ops["QLinearConv"].kind == "int8"
    assert "QGemm" in ops and ops["QGemm"].kind == "int8"
    assert ops["QuantizeLinear"].kind == "convert" and ops["DequantizeLinear"].kind == "convert"
    conv = next(n for n in int8.nodes if n.op_type == "QLinearConv")
    assert conv.kind == "int8" and conv.input.startswith("uint8[")
    kinds = int8.by_kind()
    assert kinds["int8"]["nodes"] >= 2 and kinds["convert"]["nodes"] >= 2
    # ORT runs its int8 conv in NHWC: the transposes it inserts are reported as layout
    layout = int8.layout()
    assert layout["nodes"] == kinds["layout"]["nodes"]
    assert set(layout["ops"]) <= {"Transpose", "ReorderInput", "ReorderOutput"}
    assert int8.run_ms > 0 and int8.kernel_ms > 0


def test_to_dict_is_strict_json(profiles):
    from edgekit.core.serialize import to_json

    for p in profiles:
        d = json.loads(to_json(p.to_dict(top=3)))
        assert len(d["top_nodes"]) <= 3
        assert set(d["by_kind"]) == {"int8", "float", "convert", "layout"}
        assert d["ops"] and d["kernel_ms"] > 0


def test_compare_has_the_op_types_of_both(profiles):
    from edgekit.bench.profile import compare_profiles
    from edgekit.core.serialize import to_json

    fp32, int8 = profiles
    diff = compare_profiles(fp32, int8)
    names = {d.name for d in diff.ops}
    assert {o.op_type for o in fp32.ops} <= names and {o.op_type for o in int8.ops} <= names
    roles = {d.name: d for d in diff.roles}
    assert "conv" in roles and roles["conv"].a_ms > 0 and roles["conv"].b_ms > 0
    # conversions exist only in the int8 file: a pure loss
    assert roles["convert"].a_ms == 0 and roles["convert"].delta_ms > 0
    assert any(d.name == "convert" for d in diff.losses())
    d = json.loads(to_json(diff.to_dict()))
    assert d["a_ms"] > 0 and d["b_ms"] > 0 and d["speedup"] > 0


def test_plot_writes_png(profiles, tmp_path):
    from edgekit.plots import plot_profiles

    for by in ("op", "role"):
        png = plot_profiles({"fp32": profiles[0], "int8": profiles[1]}, tmp_path / f"{by}.png", by=by)
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_no_trace_left_in_temp_or_cwd(tiny_pair, isolated_tmp):
    from edgekit.bench.profile import profile_file

    tmp, cwd = isolated_tmp
    x = np.zeros(SHAPE, np.float32)
    profile_file(tiny_pair[1], x, threads=1, runs=1)
    assert os.listdir(tmp) == [] and os.listdir(cwd) == []


def test_failed_run_leaves_no_trace(tiny_pair, isolated_tmp):
    from edgekit.core.errors import BadInput
    from edgekit.bench.profile import profile_file

    tmp, cwd = isolated_tmp
    with pytest.raises(BadInput):
        profile_file(tiny_pair[0], np.zeros((1, 3, 8, 8), np.float32), threads=1, runs=1)
    assert os.listdir(tmp) == [] and os.listdir(cwd) == []


def test_summarise_skips_warmup_and_needs_a_measured_run():
    from edgekit.core.errors import CheckFailed
    from edgekit.bench.profile import summarise_trace

    def node(name, op, ts, dur, dtype="float"):
        return {"cat": "Node", "name": f"{name}_kernel_time", "ts": ts, "dur": dur,
                "args": {"op_name": op, "provider": "CPUExecutionProvider",
                         "input_type_shape": [{dtype: [1, 8, 4, 4]}]}}

    events = [
        {"cat": "Session", "name": "model_run", "ts": 0, "dur": 1000},
        node("c", "QLinearConv", 10, 900, "uint8"),  # warm-up: left out
        {"cat": "Session", "name": "model_run", "ts": 2000, "dur": 300},
        node("c", "QLinearConv", 2010, 100, "uint8"), node("p", "MaxPool", 2120, 50, "uint8"),
        node("t", "Transpose", 2180, 20), node("b", "BatchNormalization", 2210, 40),
        {"cat": "Session", "name": "model_run", "ts": 3000, "dur": 300},
        node("c", "QLinearConv", 3010, 300, "uint8"), node("p", "MaxPool", 3120, 50, "uint8"),
        node("t", "Transpose", 3180, 20), node("b", "BatchNormalization", 3210, 40),
    ]
    p = summarise_trace(events, path="x.onnx")
    assert p.runs == 2 and p.run_ms == pytest.approx(0.3)
    conv = next(n for n in p.nodes if n.name == "c")
    assert conv.ms == pytest.approx(0.2) and conv.kind == "int8" and conv.calls_per_run == 1
    assert {n.name: n.kind for n in p.nodes} == {"c": "int8", "p": "int8", "t": "layout", "b": "float"}
    assert p.nodes[0].name == "c"
    assert p.layout()["nodes"] == 1 and p.layout()["ms"] == pytest.approx(0.02)
    with pytest.raises(CheckFailed):
        summarise_trace(events[:2], path="x.onnx")


def test_profile_files_interleaves_and_cleans_up(tiny_pair, isolated_tmp):
    from edgekit.core.errors import BadInput
    from edgekit.bench.profile import profile_files

    tmp, cwd = isolated_tmp
    x = np.zeros(SHAPE, np.float32)
    profiles = profile_files(tiny_pair, x, threads=1, runs=2)
    assert list(profiles) == [str(p) for p in tiny_pair]
    assert all(p.runs == 2 and p.kernel_ms > 0 for p in profiles.values())
    assert "QLinearConv" in {o.op_type for o in profiles[str(tiny_pair[1])].ops}
    with pytest.raises(BadInput):  # the second session fails on a wrong input: every trace still goes
        profile_files(tiny_pair, np.zeros((1, 3, 8, 8), np.float32), threads=1, runs=1)
    assert os.listdir(tmp) == [] and os.listdir(cwd) == []
