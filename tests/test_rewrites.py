"""edgekit.quantize.rewrites: each rewrite computes the same function in float (ONNX Runtime, random inputs,
atol 1e-4) and keeps the grouped-conv and Concat counts."""

from __future__ import annotations

import numpy as np
import pytest

SHAPE = (2, 3, 12, 12)


def _conv(nodes, inits, rng, name, x, cin, cout, k=3, group=1, relu=True):
    from onnx import helper, numpy_helper

    w = rng.normal(0, (2.0 / (cin // group * k * k)) ** 0.5, (cout, cin // group, k, k)).astype(np.float32)
    inits += [numpy_helper.from_array(w, f"{name}.w"),
              numpy_helper.from_array(rng.normal(0, 0.1, cout).astype(np.float32), f"{name}.b")]
    nodes.append(helper.make_node("Conv", [x, f"{name}.w", f"{name}.b"], [f"{name}.y"], name=name,
                                  kernel_shape=[k, k], pads=[k // 2] * 4, group=group))
    if not relu:
        return f"{name}.y"
    nodes.append(helper.make_node("Relu", [f"{name}.y"], [f"{name}.r"], name=f"{name}.relu"))
    return f"{name}.r"


def _bn(nodes, inits, rng, name, x, c):
    from onnx import helper, numpy_helper

    params = [rng.uniform(0.5, 1.5, c), rng.normal(0, 0.2, c), rng.normal(0, 0.3, c), rng.uniform(0.2, 2.0, c)]
    names = [f"{name}.{p}" for p in ("scale", "bias", "mean", "var")]
    inits += [numpy_helper.from_array(p.astype(np.float32), n) for p, n in zip(params, names)]
    nodes.append(helper.make_node("BatchNormalization", [x, *names], [f"{name}.y"], name=name, epsilon=1e-5))
    return f"{name}.y"


def _model(nodes, inits, out, channels):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(9)
    inits += [numpy_helper.from_array(rng.normal(0, 0.2, (5, channels)).astype(np.float32), "fc.w"),
              numpy_helper.from_array(np.zeros(5, np.float32), "fc.b")]
    nodes += [helper.make_node("GlobalAveragePool", [out], ["gap"], name="gap"),
              helper.make_node("Flatten", ["gap"], ["flat"], name="flatten"),
              helper.make_node("Gemm", ["flat", "fc.w", "fc.b"], ["logits"], name="fc", transB=1)]
    graph = helper.make_graph(nodes, "t", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(SHAPE))],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [SHAPE[0], 5])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def resnext_like():
    """stem -> ResNeXt bottleneck (4-channel groups, a residual Add) -> 8-channel groups (stride 2)
    -> depthwise -> 16-channel groups -> head: every kind of grouped conv merge_conv_groups meets."""
    from onnx import helper

    rng = np.random.default_rng(0)
    nodes, inits = [], []
    stem = _conv(nodes, inits, rng, "stem", "x", 3, 32)
    a = _conv(nodes, inits, rng, "b1.conv1", stem, 32, 32, k=1)
    a = _conv(nodes, inits, rng, "b1.conv2", a, 32, 32, group=8)  # 4 channels per group
    a = _conv(nodes, inits, rng, "b1.conv3", a, 32, 32, k=1, relu=False)
    nodes += [helper.make_node("Add", [a, stem], ["b1.sum"], name="b1.add"),
              helper.make_node("Relu", ["b1.sum"], ["b1.out"], name="b1.relu")]
    b = _conv(nodes, inits, rng, "b2.conv2", "b1.out", 32, 64, group=4)  # 8 in / 16 out per group
    c = _conv(nodes, inits, rng, "dw", b, 64, 64, group=64)  # depthwise: left alone
    d = _conv(nodes, inits, rng, "wide", c, 64, 64, group=4)  # 16 per group: left alone
    return _model(nodes, inits, d, 64)


def densenet_like():
    """Two dense layers (Concat -> BN -> Relu -> Conv) and a grouped conv after them."""
    from onnx import helper

    rng = np.random.default_rng(1)
    nodes, inits = [], []
    feats = [_conv(nodes, inits, rng, "stem", "x", 3, 16)]
    for i in range(2):
        cat = f"cat{i}.y"
        nodes.append(helper.make_node("Concat", feats, [cat], name=f"cat{i}", axis=1) if len(feats) > 1
                     else helper.make_node("Identity", feats, [cat], name=f"cat{i}"))
        channels = 16 + 8 * i
        y = _bn(nodes, inits, rng, f"dl{i}.bn", cat, channels)
        nodes.append(helper.make_node("Relu", [y], [f"dl{i}.r"], name=f"dl{i}.relu"))
        feats.append(_conv(nodes, inits, rng, f"dl{i}.conv", f"dl{i}.r", channels, 8, relu=False))
    nodes.append(helper.make_node("Concat", feats, ["final.y"], name="final", axis=1))
    # transition: BN -> Relu -> Conv1x1 -> AvgPool 2x2/2
    y = _bn(nodes, inits, rng, "tr.bn", "final.y", 32)
    nodes.append(helper.make_node("Relu", [y], ["tr.r"], name="tr.relu"))
    t = _conv(nodes, inits, rng, "tr.conv", "tr.r", 32, 16, k=1, relu=False)
    nodes.append(helper.make_node("AveragePool", [t], ["tr.pool.y"], name="tr.pool", kernel_shape=[2, 2], strides=[2, 2]))
    g = _conv(nodes, inits, rng, "grouped", "tr.pool.y", 16, 32, group=8)
    # a 1x1 conv whose output is also used elsewhere: neither avgpool rewrite may touch it
    s = _conv(nodes, inits, rng, "shared", g, 32, 32, k=1, relu=False)
    nodes += [helper.make_node("AveragePool", [s], ["sp.y"], name="shared.pool", kernel_shape=[2, 2], strides=[2, 2]),
              helper.make_node("GlobalAveragePool", [s], ["s.gap"], name="s.gap"),
              helper.make_node("GlobalAveragePool", ["sp.y"], ["sp.gap"], name="sp.gap"),
              helper.make_node("Add", ["s.gap", "sp.gap"], ["mix"], name="mix")]
    return _model(nodes, inits, "mix", 32)


def _run(model, x):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def _inputs(n=3):
    rng = np.random.default_rng(5)
    return [rng.normal(size=SHAPE).astype(np.float32) for _ in range(n)]


def _attr(model, node_name, attr):
    node = next(n for n in model.graph.node if n.name == node_name)
    return next(a.i for a in node.attribute if a.name == attr)


def _weight_shape(model, node_name):
    node = next(n for n in model.graph.node if n.name == node_name)
    return tuple(next(t for t in model.graph.initializer if t.name == node.input[1]).dims)


@pytest.mark.parametrize("build", [resnext_like, densenet_like])
def test_merge_conv_groups_is_exact_in_float_and_keeps_the_counts(build):
    import copy

    import onnx

    from edgekit.quantize.rewrites import merge_conv_groups
    from edgekit.onnxfile.structure import onnx_concat_count, onnx_grouped_conv_count

    model = build()
    rewritten = copy.deepcopy(model)
    records = merge_conv_groups(rewritten)
    assert records and all(r["now"] > 1 and r["now_channels"] >= min(16, r["channels"] * r["group"] // 2)
                           for r in records)
    onnx.checker.check_model(rewritten, full_check=True)
    assert onnx_grouped_conv_count(rewritten) == onnx_grouped_conv_count(model)
    assert onnx_concat_count(rewritten) == onnx_concat_count(model)
    for x in _inputs():
        np.testing.assert_allclose(_run(rewritten, x), _run(model, x), atol=1e-4, rtol=0)
    # no weight left behind
    used = {i for n in rewritten.graph.node for i in n.input}
    assert all(t.name in used for t in rewritten.graph.initializer)


def test_merge_conv_groups_picks_the_narrow_groups_only():
    from edgekit.quantize.rewrites import merge_conv_groups

    model = resnext_like()
    records = {r["node"]: r for r in merge_conv_groups(model)}
    assert records["b1.conv2"] == {"node": "b1.conv2", "group": 8, "now": 2, "channels": 4, "now_channels": 16}
    assert records["b2.conv2"] == {"node": "b2.conv2", "group": 4, "now": 2, "channels": 8, "now_channels": 16}
    assert set(records) == {"b1.conv2", "b2.conv2"}  # depthwise and 16-channel groups untouched
    assert _attr(model, "dw", "group") == 64 and _attr(model, "wide", "group") == 4
    assert _weight_shape(model, "b1.conv2") == (32, 16, 3, 3)
    assert _weight_shape(model, "b2.conv2") == (64, 16, 3, 3)
    # the weights are block-diagonal: output channel o sees only its own old group's inputs
    from onnx import numpy_helper

    node = next(n for n in model.graph.node if n.name == "b1.conv2")
    w = numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == node.input[1]))
    for o in range(32):
        slot = (o // 4) % 4
        assert not np.any(np.delete(w[o], np.s_[slot * 4:(slot + 1) * 4], axis=0))
    # idempotent once every group is wide enough
    assert merge_conv_groups(model) == []


def test_merge_conv_groups_never_makes_a_grouped_conv_dense():
    from edgekit.quantize.rewrites import merge_conv_groups

    model = resnext_like()
    records = {r["node"]: r for r in merge_conv_groups(model, min_group_channels=1024)}
    # as wide as possible while two groups remain
    assert records["b1.conv2"]["now"] == 2 and records["b2.conv2"]["now"] == 2
    assert records["wide"]["now"] == 2 and "dw" not in records


def test_merge_conv_groups_gives_the_same_int8_model(tmp_path):
    """Zero weights quantize to zero and do not move any per-channel scale: quantized the same way,
    the merged file computes what the original int8 file computes."""
    import logging

    import onnx
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    from edgekit.quantize.rewrites import merge_conv_groups

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter([{"x": x} for x in _inputs(4)])

        def get_next(self):
            return next(self.items, None)

    model = resnext_like()
    outputs = []
    for i, rewrite in enumerate((False, True)):
        if rewrite:
            merge_conv_groups(model)
        src, dst = tmp_path / f"m{i}.onnx", tmp_path / f"m{i}.int8.onnx"
        onnx.save(model, str(src))
        logging.disable(logging.WARNING)
        try:
            quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                            reduce_range=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
        finally:
            logging.disable(logging.NOTSET)
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        session = ort.InferenceSession(str(dst), options, providers=["CPUExecutionProvider"])
        outputs.append(session.run(None, {"x": np.random.default_rng(7).normal(size=SHAPE).astype(np.float32)})[0])
    # calibration ranges may differ in the last float bit; at most a step of the output quantizer
    step = (outputs[0].max() - outputs[0].min()) / 255
    np.testing.assert_allclose(outputs[1], outputs[0], atol=step, rtol=0)


def test_batchnorm_as_depthwise_is_exact_in_float_and_keeps_the_counts():
    import copy

    import onnx

    from edgekit.quantize.rewrites import batchnorm_as_depthwise
    from edgekit.onnxfile.structure import onnx_concat_count, onnx_grouped_conv_count, op_counts

    model = densenet_like()
    rewritten = copy.deepcopy(model)
    assert batchnorm_as_depthwise(rewritten) == 3
    onnx.checker.check_model(rewritten, full_check=True)
    assert "BatchNormalization" not in op_counts(rewritten)
    assert onnx_concat_count(rewritten) == onnx_concat_count(model)
    # the grouped-conv count grows by exactly the depthwise convs it adds (what quantize checks)
    assert onnx_grouped_conv_count(rewritten) == onnx_grouped_conv_count(model) + 3
    for x in _inputs():
        np.testing.assert_allclose(_run(rewritten, x), _run(model, x), atol=1e-4, rtol=0)


def test_avgpool_before_conv_is_exact_in_float_and_keeps_the_counts():
    import copy

    import onnx

    from edgekit.quantize.rewrites import avgpool_before_conv
    from edgekit.onnxfile.structure import onnx_concat_count, onnx_grouped_conv_count, op_counts

    model = densenet_like()
    rewritten = copy.deepcopy(model)
    records = avgpool_before_conv(rewritten)
    # the transition only: the shared conv's output feeds a second consumer
    assert records == [{"conv": "tr.conv", "pool": "tr.pool", "kernel": 2}]
    onnx.checker.check_model(rewritten, full_check=True)
    assert onnx_grouped_conv_count(rewritten) == onnx_grouped_conv_count(model)
    assert onnx_concat_count(rewritten) == onnx_concat_count(model)
    assert op_counts(rewritten) == op_counts(model)
    # the pool now reads the Relu, the conv reads the pool
    pool = next(n for n in rewritten.graph.node if n.name == "tr.pool")
    conv = next(n for n in rewritten.graph.node if n.name == "tr.conv")
    assert pool.input[0] == "tr.r" and conv.input[0] == pool.output[0] and conv.output[0] == "tr.pool.y"
    for x in _inputs():
        np.testing.assert_allclose(_run(rewritten, x), _run(model, x), atol=1e-4, rtol=0)
    assert avgpool_before_conv(rewritten) == []


def test_avgpool_as_depthwise_is_exact_in_float_and_adds_one_grouped_conv_each():
    import copy

    import onnx

    from edgekit.quantize.rewrites import avgpool_as_depthwise, avgpool_before_conv, batchnorm_as_depthwise
    from edgekit.onnxfile.structure import onnx_concat_count, onnx_grouped_conv_count, op_counts

    model = densenet_like()
    rewritten = copy.deepcopy(model)
    records = avgpool_as_depthwise(rewritten)
    assert [(r["pool"], r["kernel"], r["strides"], r["channels"]) for r in records] == [
        ("tr.pool", [2, 2], [2, 2], 16), ("shared.pool", [2, 2], [2, 2], 32)]
    onnx.checker.check_model(rewritten, full_check=True)
    assert "AveragePool" not in op_counts(rewritten)
    assert onnx_grouped_conv_count(rewritten) == onnx_grouped_conv_count(model) + len(records)
    assert onnx_concat_count(rewritten) == onnx_concat_count(model)
    for x in _inputs():
        np.testing.assert_allclose(_run(rewritten, x), _run(model, x), atol=1e-4, rtol=0)
    # the combination measured on densenet121: pool before the transition conv, then as depthwise, then BN
    combined = copy.deepcopy(model)
    assert len(avgpool_before_conv(combined)) == 1
    assert len(avgpool_as_depthwise(combined)) == 2
    assert batchnorm_as_depthwise(combined) == 3
    onnx.checker.check_model(combined, full_check=True)
    assert onnx_grouped_conv_count(combined) == onnx_grouped_conv_count(model) + 2 + 3
    assert onnx_concat_count(combined) == onnx_concat_count(model)
    for x in _inputs():
        np.testing.assert_allclose(_run(combined, x), _run(model, x), atol=1e-4, rtol=0)


def test_avgpool_rewrites_leave_other_pools_alone():
    """avgpool_before_conv: a 3x3 conv before a pool, a padded pool, a pool whose stride differs
    from its window: untouched. avgpool_as_depthwise: only the unpadded pools."""
    import onnx
    from onnx import helper

    import edgekit.quantize.rewrites as rewrites

    rng = np.random.default_rng(3)
    nodes, inits = [], []
    a = _conv(nodes, inits, rng, "c3", "x", 3, 8, k=3, relu=False)
    nodes.append(helper.make_node("AveragePool", [a], ["p1"], name="p1", kernel_shape=[2, 2], strides=[2, 2]))
    b = _conv(nodes, inits, rng, "c1", "p1", 8, 8, k=1, relu=False)
    nodes.append(helper.make_node("AveragePool", [b], ["p2"], name="p2", kernel_shape=[3, 3], strides=[1, 1],
                                  pads=[1, 1, 1, 1]))
    c = _conv(nodes, inits, rng, "c1b", "p2", 8, 8, k=1, relu=False)
    nodes.append(helper.make_node("AveragePool", [c], ["p3"], name="p3", kernel_shape=[2, 2], strides=[2, 2],
                                  pads=[1, 1, 1, 1]))
    model = _model(nodes, inits, "p3", 8)
    before = model.SerializeToString()
    assert rewrites.avgpool_before_conv(model) == []
    assert model.SerializeToString() == before
    records = rewrites.avgpool_as_depthwise(model)
    assert [r["pool"] for r in records] == ["p1"]
    onnx.checker.check_model(model)
