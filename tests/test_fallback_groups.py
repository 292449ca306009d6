"""The accuracy budget's fp32 fallback by QDQ group: one quantize_static pass, groups reverted in the quantized
graph, the step log, the sensitivity cache, a budget nothing meets; and --exclude of a node ORT's pre-processing
inlined."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import files_in
from edgekit.onnxfile.artifact import read_metadata
from edgekit.quantize import quantize


@pytest.fixture
def static_calls(monkeypatch):
    import onnxruntime.quantization as ortq

    calls: list = []
    real = ortq.quantize_static
    monkeypatch.setattr(ortq, "quantize_static", lambda *a, **k: calls.append(1) or real(*a, **k))
    return calls


def _full_sqnr(parent, tmp_path) -> float:
    return quantize(parent.path, min_sqnr=0.0, fallback=False, output=tmp_path / "full.int8.onnx").holdout.sqnr_db


def test_budget_met_in_one_quantize_static_pass_with_a_step_log_and_a_cache_hit(exported, tmp_path, static_calls):
    parent = exported("textbook_resnet18", 32)
    full = _full_sqnr(parent, tmp_path)
    static_calls.clear()
    store = tmp_path / "ranges"
    result = quantize(parent.path, min_sqnr=full + 2.0, ranges_cache=store, output=tmp_path / "m.int8.onnx")
    fb = result.fallback
    assert len(static_calls) == 1  # quantized once: every step reverts groups in that graph
    assert fb.chosen is not None and result.holdout.passed and result.holdout.sqnr_db >= full + 2.0
    assert fb.steps and fb.steps[-1].verdict == "met the budget" and fb.runs["steps"] == len(fb.steps)
    assert all(s.verdict in {"kept", "kept (one worsening step tolerated)", "undone", "met the budget"} for s in fb.steps)
    step_lines = [n for n in result.notes if n.startswith("fp32 fallback step")]
    assert len(step_lines) == len(fb.steps) and "met the budget" in step_lines[-1]
    assert not fb.cached and fb.runs["rank"] >= fb.groups > 0
    # before the walk, the most the fallback can revert (every group but one) was estimated from the ranking's runs,
    # far enough above the gate that it was not measured
    assert len(fb.bound_groups) == fb.groups - 1 and fb.bound_estimate_db >= full + 2.0 + 3.0
    assert "bound" not in fb.runs and fb.bound is None and not fb.bound_stopped
    assert list(store.glob("*.sensitivity.json"))
    # the shipped file is the reverted graph: its metadata lists the fp32 nodes and keeps them float
    meta = read_metadata(onnx.load(str(result.path)))
    assert set(fb.chosen.fp32_nodes) <= set(meta["recipe"]["excluded_nodes"])
    assert "WeightBiasQuantization" in str(meta["recipe"]["session_options"])
    model = onnx.load(str(result.path))
    producers = {o: n.op_type for n in model.graph.node for o in n.output}
    names = {n.name for n in model.graph.node}
    assert set(fb.chosen.fp32_nodes) <= names
    weighted = [n for n in model.graph.node if n.name in fb.chosen.fp32_nodes and n.op_type in ("Conv", "Gemm")]
    assert all(producers.get(n.input[1]) != "DequantizeLinear" for n in weighted)  # the parent's float weights
    # a second budget on the same file ranks nothing again
    static_calls.clear()
    again = quantize(parent.path, min_sqnr=full + 2.0, ranges_cache=store, output=tmp_path / "m2.int8.onnx")
    assert again.fallback.cached and again.fallback.runs["rank"] == 0 and len(static_calls) == 1
    assert again.fallback.chosen.fp32_nodes == fb.chosen.fp32_nodes


def test_a_broken_sensitivity_entry_is_said_and_ranked_again(exported, tmp_path):
    parent = exported("textbook_resnet18", 32)
    full = _full_sqnr(parent, tmp_path)
    store = tmp_path / "ranges"
    quantize(parent.path, min_sqnr=full + 2.0, ranges_cache=store, output=tmp_path / "a.int8.onnx")
    (entry,) = store.glob("*.sensitivity.json")
    entry.write_text('{"scores": [1, 2]}')
    result = quantize(parent.path, min_sqnr=full + 2.0, ranges_cache=store, output=tmp_path / "b.int8.onnx")
    assert not result.fallback.cached and any("sensitivity cache entry" in n for n in result.notes)


def test_budget_nothing_meets_is_exit_1_one_line_nothing_written(cli, exported, tmp_path, monkeypatch):
    # found in one measurement (every group but one in fp32), not by walking every group
    from edgekit.quantize.budget import Measure

    measured: list = []
    real = Measure.__call__
    monkeypatch.setattr(Measure, "__call__", lambda self, path, *a, **k: measured.append(path) or real(self, path, *a, **k))
    parent = exported("textbook_resnet18", 32)
    out = tmp_path / "never.int8.onnx"
    res = cli("quantize", parent.path, "--min-sqnr", "90", "-o", out)
    assert res.exit_code == 1 and "QDQ group(s) to fp32" in res.stderr and "Traceback" not in res.stderr
    assert "did not meet it either, so no group was tried one at a time" in res.stderr
    assert res.stderr.count("\n") == 1 and not out.exists() and files_in(tmp_path) == []
    assert [p.name for p in measured[1:]] == ["fallback-bound.onnx"]  # the full file, then the bound: no step


def _hardswish_model(path):
    rng = np.random.default_rng(0)
    weights = [numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "W"),
               numpy_helper.from_array(rng.standard_normal((10, 8)).astype(np.float32), "W2")]
    nodes = [helper.make_node("Conv", ["x", "W"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("HardSwish", ["c"], ["h"], name="hswish"),
             helper.make_node("GlobalAveragePool", ["h"], ["p"], name="gap"),
             helper.make_node("Flatten", ["p"], ["f"], name="flat"),
             helper.make_node("Gemm", ["f", "W2"], ["y"], name="fc", transB=1)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 32, 32])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])], weights)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))
    return path


def test_exclude_of_an_inlined_hardswish_excludes_what_it_became(cli, tmp_path):
    parent = _hardswish_model(tmp_path / "hs.onnx")
    out = tmp_path / "hs.int8.onnx"
    res = cli("quantize", parent, "--exclude", "hswish", "--min-sqnr", "0", "-o", out)
    assert res.exit_code == 0, res.stderr
    assert "--exclude hswish: ONNX Runtime's pre-processing replaced this HardSwish by HardSigmoid, Mul" in res.stdout + res.stderr
    model = onnx.load(str(out))
    derived = [n for n in model.graph.node if n.name.startswith("hswish/")]
    assert {n.op_type for n in derived} == {"HardSigmoid", "Mul"}
    assert set(n.name for n in derived) <= set(read_metadata(model)["recipe"]["excluded_nodes"])
