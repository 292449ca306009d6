"""Per-layer int8 error (edgekit.layer_error) on a real edgekit export + quantize of textbook_resnet18 at 64 px."""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from edgekit.core.errors import BadInput
from edgekit.layer_error import ActivationError, LayerReport, WeightError, layer_errors
from edgekit.plots import plot_layer_errors

ROOT = Path(__file__).resolve().parent.parent
CALIBRATION = ROOT / "calibration"
SIZE = 64  # at 32 px this random-weight net's held-out int8 SQNR sits near quantize's 10 dB gate (7.7-13 dB seen)
KEEP_FLOAT = {"optimization.disable_specified_optimizers": "WeightBiasQuantization"}


@pytest.fixture(scope="session")
def pair(tmp_path_factory):
    """(fp32 path, int8 path): textbook_resnet18 exported and quantized (x86-avx2) by edgekit."""
    from edgekit.export import export
    from edgekit.quantize import quantize

    folder = tmp_path_factory.mktemp("layers-models")
    fp32 = export("textbook_resnet18", input_size=SIZE, output=folder / "r18.onnx").path
    int8 = quantize(fp32, output=folder / "r18.int8.onnx", target="x86-avx2").path
    return Path(fp32), Path(int8)


@pytest.fixture(scope="session")
def photos():
    from edgekit.data.images import load_image_folder
    from edgekit.data.preprocessing import Preprocessing

    return load_image_folder(CALIBRATION, Preprocessing.for_input_size(SIZE), samples=8).tensors


@pytest.fixture(scope="session")
def report_and_leftovers(pair, photos, tmp_path_factory):
    fp32, int8 = pair
    workdir = tmp_path_factory.mktemp("layers-work")
    beside_before = sorted(os.listdir(fp32.parent))
    stages: list[str] = []
    report = layer_errors(fp32, int8, photos, workdir=workdir, on_stage=stages.append)
    leftovers = {"workdir": sorted(os.listdir(workdir)), "beside": sorted(os.listdir(fp32.parent)),
                 "beside_before": beside_before}
    return report, leftovers, stages


@pytest.fixture(scope="session")
def report(report_and_leftovers) -> LayerReport:
    return report_and_leftovers[0]


def _model(path: Path):
    import onnx

    return onnx.load(str(path))


def test_every_conv_output_is_measured(report, pair):
    fp32, _ = pair
    convs = [n.name for n in _model(fp32).graph.node if n.op_type == "Conv"]
    measured = {a.fp32_node for a in report.activations}
    assert len(convs) == 20 and set(convs) <= measured
    by_node = {a.fp32_node: a for a in report.activations}
    assert all(by_node[c].op_type == "Conv" for c in convs)
    # a Conv followed by Relu: the quantizer folded the Relu, the measured tensor is the Relu's output
    assert any(by_node[c].tensor.endswith("Relu_output_0") for c in convs)
    assert report.samples == 8 and report.batch == 1 and report.runs == 8
    assert not report.unmatched_activations


def test_sqnrs_are_finite_plausible_and_worst_first(report):
    acts = report.activations
    for a in acts:
        assert math.isfinite(a.sqnr_db) and a.sqnr_db > 5, a
        assert math.isfinite(a.simulated_sqnr_db) and a.simulated_sqnr_db > 5, a
        # quantization-only error: the folded Relu must not count as noise (it read ~3 dB before the fix)
        assert a.qdq_sqnr_db > 25, a
    assert [a.sqnr_db for a in acts] == sorted(a.sqnr_db for a in acts)
    assert report.worst(3) == acts[:3]
    logits = next(a for a in acts if a.tensor == "logits")
    assert logits.op_type == "Gemm" and logits.fp32_node.endswith("Gemm")
    graph_input = next(a for a in acts if a.op_type == "input")
    assert graph_input.position == -1 and graph_input.fp32_node is None and graph_input.sqnr_db > 35
    # depth: positions are fp32-graph indices, increasing along a residual block
    assert len({a.position for a in acts}) == len(acts)


def test_weights(report, pair):
    fp32, _ = pair
    layers = {n.name for n in _model(fp32).graph.node if n.op_type in ("Conv", "Gemm")}
    weights = [w for w in report.weights if w.role == "weight"]
    assert {w.node for w in weights} == layers
    assert all(w.sqnr_db > 25 for w in weights)  # 7-bit per-channel: ~42 dB on these random weights
    assert {w.role for w in report.weights} == {"weight", "bias"}
    assert [w.sqnr_db for w in report.weights] == sorted(w.sqnr_db for w in report.weights)
    assert not report.unmatched_weights


def test_sensitive_nodes_are_fp32_node_names(report, pair):
    fp32, _ = pair
    names = {n.name for n in _model(fp32).graph.node}
    ranked = report.sensitive_nodes(5)
    assert len(ranked) == 5 == len(set(ranked)) and set(ranked) <= names
    first = report.ranked()[0]
    assert first.added_noise == max(a.added_noise for a in report.activations if a.fp32_node)


def test_to_dict_is_strict_json(report):
    text = json.dumps(report.to_dict(), allow_nan=False)
    data = json.loads(text)
    assert data["activations"][0]["tensor"] == report.activations[0].tensor
    assert data["sensitive_nodes"][:3] == report.sensitive_nodes(3)
    odd = LayerReport(
        Path("a.onnx"), Path("b.onnx"), 1, 1, 1, {}, 0.1,
        [ActivationError("t", "n", "Conv", "n", 0, math.inf, math.nan, -math.inf, math.inf, math.nan)],
        [WeightError("w", "n", "Conv", "weight", 0, math.inf)],
    )
    data = json.loads(json.dumps(odd.to_dict(), allow_nan=False))
    assert data["activations"][0]["sqnr_db"] == "inf" and data["activations"][0]["simulated_sqnr_db"] == "nan"
    assert data["activations"][0]["qdq_sqnr_db"] == "-inf" and data["weights"][0]["sqnr_db"] == "inf"


def test_no_temp_files_left(report_and_leftovers):
    _report, leftovers, stages = report_and_leftovers
    assert leftovers["workdir"] == []
    assert leftovers["beside"] == leftovers["beside_before"]  # no <model>-inferred.onnx beside the models
    assert stages[0] == "augment" and stages[-1] == "rank"


def test_plot_is_a_png(report, tmp_path):
    from PIL import Image

    out = plot_layer_errors(report, tmp_path / "sub" / "layers.png", "textbook_resnet18 int8 (x86-avx2)")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(out) as image:
        image.verify()
    assert sorted(os.listdir(out.parent)) == ["layers.png"]


def test_rounds_and_padding_give_the_same_numbers(pair, photos, report, tmp_path):
    """Several collection rounds (tiny max_bytes) and a static batch of 3 fed 8 samples (the last chunk
    padded with a repeat, padded rows dropped) measure exactly what one round on the same samples does."""
    import onnx

    fp32, int8 = pair
    x = photos
    base = {a.tensor: a.sqnr_db for a in report.activations}
    rounds = layer_errors(fp32, int8, x, max_bytes=1)
    assert rounds.runs == 8
    assert {a.tensor: a.sqnr_db for a in rounds.activations} == pytest.approx(base, abs=1e-6)

    paths = {}
    for name, src in (("fp32", fp32), ("int8", int8)):
        model = onnx.load(str(src))
        for value in list(model.graph.input) + list(model.graph.output):
            value.type.tensor_type.shape.dim[0].dim_value = 3
        del model.graph.value_info[:]
        del model.metadata_props[:]  # foreign files now: their metadata would describe batch 1
        paths[name] = tmp_path / f"b3.{name}.onnx"
        onnx.save(model, str(paths[name]))
    batched = layer_errors(paths["fp32"], paths["int8"], x)
    assert batched.batch == 3 and batched.runs == 3
    assert {a.tensor: a.sqnr_db for a in batched.activations} == pytest.approx(base, abs=1e-3)


# --- a layer made sensitive on purpose ------------------------------------------------------------


def _make_sensitive(fp32: Path, folder: Path) -> tuple[Path, Path, str]:
    """Give one mid-network Conv (A) an outlier weight on an input channel that is always zero.

    The producer of A's input gets one dead output channel (weights 0, bias -1, then ReLU), and
    every output channel of A gets a tap of 50x its largest weight on that channel: the tap does
    not change the fp32 function, but A's per-channel weight scales are 50x too coarse, so in int8
    its ordinary weights round to 0 or +-1. Returns (dead-channel model, the same with the outlier
    taps, A's name).
    """
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(fp32))
    producer = {o: n for n in model.graph.node for o in n.output}
    inits = {t.name: t for t in model.graph.initializer}
    candidates = []
    for node in model.graph.node:
        relu = producer.get(node.input[0])
        if node.op_type == "Conv" and relu is not None and relu.op_type == "Relu":
            conv = producer.get(relu.input[0])
            if conv is not None and conv.op_type == "Conv":
                candidates.append((conv, node))
    p, a = candidates[len(candidates) // 2]

    def get(name):
        return numpy_helper.to_array(inits[name]).copy()

    def put(name, array):
        inits[name].CopyFrom(numpy_helper.from_array(array.astype(np.float32), name))

    wp, bp, wa = get(p.input[1]), get(p.input[2]), get(a.input[1])
    wp[0], bp[0] = 0.0, -1.0
    put(p.input[1], wp)
    put(p.input[2], bp)
    onnx.save(model, str(folder / "dead.onnx"))
    k = wa.shape[-1] // 2
    wa[:, 0, k, k] = 50 * np.abs(wa).reshape(len(wa), -1).max(axis=1)
    put(a.input[1], wa)
    onnx.save(model, str(folder / "sens.onnx"))
    return folder / "dead.onnx", folder / "sens.onnx", a.name


@pytest.fixture(scope="session")
def sensitive(pair, photos, tmp_path_factory):
    from edgekit.quantize import quantize

    fp32, _ = pair
    folder = tmp_path_factory.mktemp("layers-sensitive")
    dead, src, a = _make_sensitive(fp32, folder)
    kwargs = dict(target="x86-avx2", min_sqnr=0, min_top1_agreement=0)
    int8 = quantize(src, output=folder / "sens.int8.onnx", **kwargs).path
    excluded = quantize(src, output=folder / "sens.excluded.int8.onnx", exclude=[a], **kwargs).path
    return src, Path(int8), Path(excluded), a, dead


def _fp32_outputs(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: x[i : i + 1]})[0] for i in range(len(x))])


def test_sensitive_nodes_names_the_damaged_layer(sensitive, photos):
    src, int8, _excluded, a, dead = sensitive
    x = photos[:4]
    # the outlier taps change nothing in fp32
    np.testing.assert_allclose(_fp32_outputs(src, x), _fp32_outputs(dead, x), atol=1e-5)
    report = layer_errors(src, int8, x)
    assert report.sensitive_nodes(1) == [a]
    act = next(r for r in report.activations if r.fp32_node == a)
    assert act.drop_db > 10, act  # it turns a ~27 dB input into a < 15 dB output
    # the absolute SQNR points elsewhere: error accumulates, the deepest layers are lower still
    assert report.worst(1)[0].fp32_node != a


def test_excluded_conv_is_requantized_by_ort_unless_told_not_to(sensitive, photos):
    """quantize_static leaves an excluded Conv in float between a DQ and a Q; ORT's WeightBiasQuantization
    optimizer quantizes its weights again at session start (QLinearConv), so only the session config that
    disables it keeps the layer in fp32. layer_errors measures what the session really runs."""
    src, _int8, excluded, a, _dead = sensitive
    x = photos[:4]
    default = {r.fp32_node: r for r in layer_errors(src, excluded, x).activations}[a]
    kept = {r.fp32_node: r for r in layer_errors(src, excluded, x, session_config=KEEP_FLOAT).activations}[a]
    assert kept.sqnr_db == pytest.approx(kept.simulated_sqnr_db, abs=0.2)
    assert default.sqnr_db < kept.sqnr_db - 3, (default, kept)


# --- bad input ------------------------------------------------------------------------------------


def test_bad_input(pair, photos, sensitive, report, tmp_path):
    fp32, int8 = pair
    x = photos[:2]
    with pytest.raises(BadInput, match="not an fp32 model"):
        layer_errors(int8, fp32, x)
    with pytest.raises(BadInput, match="same file"):
        layer_errors(fp32, fp32, x)
    with pytest.raises(BadInput, match="QDQ int8 file"):
        layer_errors(fp32, sensitive[0], x)
    with pytest.raises(BadInput, match="quantized from another file"):
        layer_errors(sensitive[0], int8, x)
    with pytest.raises(BadInput, match="axis 2 differs"):
        layer_errors(fp32, int8, np.zeros((2, 3, 32, 32), np.float32))
    with pytest.raises(BadInput, match="floating point"):
        layer_errors(fp32, int8, np.zeros((2, 3, SIZE, SIZE), np.uint8))
    with pytest.raises(BadInput, match="at least one sample"):
        layer_errors(fp32, int8, np.zeros((0, 3, SIZE, SIZE), np.float32))
    with pytest.raises(BadInput, match="NaN or Inf"):
        layer_errors(fp32, int8, np.full((1, 3, SIZE, SIZE), np.nan, np.float32))
    with pytest.raises(BadInput, match="does not exist"):
        layer_errors(tmp_path / "missing.onnx", int8, x)
    folder = tmp_path / "ro"
    folder.mkdir()
    shutil.copy(fp32, folder / "blocked")
    with pytest.raises(BadInput, match="cannot write"):
        plot_layer_errors(report, folder / "blocked" / "x.png", "t")
