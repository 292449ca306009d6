"""quantize/conv_paths.py: a conv's weight zero point moved off 0 so ORT runs it as a GEMM, with the same outputs."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from edgekit.quantize.conv_paths import gemm_convs


def _qdq_conv_model(cin: int, cout: int, kernel: int, group: int, codes: np.ndarray) -> onnx.ModelProto:
    """x -> Q -> DQ -> Conv(W = DQ(codes, per-channel scale, zero point 0)) -> Q -> DQ -> y: what ORT fuses into
    one QLinearConv."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(np.array(0.02, np.float32), "x_scale"),
        numpy_helper.from_array(np.array(128, np.uint8), "x_zero"),
        numpy_helper.from_array(codes, "w_codes"),
        numpy_helper.from_array((rng.random(cout) * 0.01 + 0.001).astype(np.float32), "w_scale"),
        numpy_helper.from_array(np.zeros(cout, np.int8), "w_zero"),
        numpy_helper.from_array(np.array(0.05, np.float32), "y_scale"),
        numpy_helper.from_array(np.array(128, np.uint8), "y_zero"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "x_scale", "x_zero"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "x_scale", "x_zero"], ["xd"]),
        helper.make_node("DequantizeLinear", ["w_codes", "w_scale", "w_zero"], ["w"], axis=0),
        helper.make_node("Conv", ["xd", "w"], ["c"], name="the_conv", group=group, pads=[kernel // 2] * 4),
        helper.make_node("QuantizeLinear", ["c", "y_scale", "y_zero"], ["cq"]),
        helper.make_node("DequantizeLinear", ["cq", "y_scale", "y_zero"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, cin, 12, 12])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, cout, 12, 12])], inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def _zero(model) -> np.ndarray:
    return numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == "w_zero"))


def test_a_long_conv_is_shifted_and_computes_the_same():
    rng = np.random.default_rng(1)
    codes = rng.integers(-64, 64, size=(32, 64, 3, 3)).astype(np.int8)  # 7-bit weights, K = 576
    model = _qdq_conv_model(64, 32, 3, 1, codes)
    x = rng.standard_normal((1, 64, 12, 12)).astype(np.float32)
    before = _run(model, x)
    done = gemm_convs(model, 512)
    assert done == [{"conv": "the_conv", "k": 576, "shift": 1}]
    assert np.all(_zero(model) == 1)
    assert np.array_equal(_run(model, x), before)


def test_codes_at_127_shift_down_and_full_range_codes_are_kept():
    rng = np.random.default_rng(2)
    up = rng.integers(-100, 128, size=(8, 64, 3, 3)).astype(np.int8)
    up.flat[0] = 127
    model = _qdq_conv_model(64, 8, 3, 1, up)
    x = rng.standard_normal((1, 64, 12, 12)).astype(np.float32)
    before = _run(model, x)
    assert gemm_convs(model, 512)[0]["shift"] == -1
    assert np.all(_zero(model) == -1) and np.array_equal(_run(model, x), before)

    full = up.copy()
    full.flat[1] = -128
    model = _qdq_conv_model(64, 8, 3, 1, full)
    assert "kept" in gemm_convs(model, 512)[0]
    assert np.all(_zero(model) == 0)


def test_short_and_depthwise_convs_stay_on_convsym_grouped_ones_count_k_per_group_and_the_stem_moves():
    rng = np.random.default_rng(3)
    short = _qdq_conv_model(64, 16, 1, 1, rng.integers(-64, 64, size=(16, 64, 1, 1)).astype(np.int8))  # K = 64
    assert gemm_convs(short, 512) == [] and np.all(_zero(short) == 0)
    grouped = _qdq_conv_model(64, 64, 3, 4, rng.integers(-64, 64, size=(64, 16, 3, 3)).astype(np.int8))  # K = 144
    assert gemm_convs(grouped, 512) == [] and np.all(_zero(grouped) == 0)
    x = rng.standard_normal((1, 64, 12, 12)).astype(np.float32)
    before = _run(grouped, x)
    assert gemm_convs(grouped, 144)[0]["k"] == 144 and np.all(_zero(grouped) == 1)
    assert np.array_equal(_run(grouped, x), before)
    depthwise = _qdq_conv_model(64, 64, 3, 64, rng.integers(-64, 64, size=(64, 1, 3, 3)).astype(np.int8))
    assert gemm_convs(depthwise, 1) == [] and np.all(_zero(depthwise) == 0)
    stem = _qdq_conv_model(3, 16, 3, 1, rng.integers(-64, 64, size=(16, 3, 3, 3)).astype(np.int8))  # RGB, K = 27
    assert [d["conv"] for d in gemm_convs(stem, 512)] == ["the_conv"]
    assert gemm_convs(_qdq_conv_model(3, 16, 3, 1, np.zeros((16, 3, 3, 3), np.int8)), 0) == []  # off


def test_x86_amx_writes_the_long_convs_for_the_gemm_with_the_same_outputs_as_x86_avx2(exported, tmp_path):
    """x86-amx is x86-avx2's file with its long convs moved to ORT's GEMM: quantized from the same calibration, the
    two files compute bit-identical outputs in ONNX Runtime."""
    from edgekit.onnxfile.artifact import read_metadata
    from edgekit.quantize import quantize

    fp32 = exported("textbook_resnet18").path
    amx = quantize(fp32, output=tmp_path / "amx.onnx", samples=16, target="x86-amx")
    avx2 = quantize(fp32, output=tmp_path / "avx2.onnx", samples=16, target="x86-avx2")
    assert amx.recipe.target == "x86-amx" and avx2.recipe.target == "x86-avx2"
    moved = read_metadata(onnx.load(str(amx.path)))["recipe"]["rewrites"]["conv_gemm"]
    assert moved and all(m["k"] >= 512 or m["k"] <= 4 * 49 for m in moved) and all("shift" in m for m in moved)
    zeros = [numpy_helper.to_array(i) for i in onnx.load(str(amx.path)).graph.initializer if i.name.endswith("_zero_point")]
    assert any(z.dtype == np.int8 and z.size and np.all(z == 1) for z in zeros)
    x = np.random.default_rng(4).standard_normal((1, 3, 64, 64)).astype(np.float32)
    outs = []
    for path in (amx.path, avx2.path):
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        outs.append(session.run(None, {session.get_inputs()[0].name: x})[0])
    assert np.array_equal(outs[0], outs[1])


def test_no_rewrites_moves_no_conv():
    from edgekit.judge.targets import resolve_recipe

    assert resolve_recipe("x86-amx").gemm_min_k == 512 and resolve_recipe("x86-amx", rewrites=False).gemm_min_k == 0
