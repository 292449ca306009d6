"""`edgekit import`: ONNX files made elsewhere become edgekit fp32 files that every command accepts.

The corpus (tests/foreign_models.py) is built once per module; every test goes through the real CLI."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

import foreign_models as fm
from conftest import files_in


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("foreign")
    return {
        "torchscript": fm.torchvision_torchscript(folder),
        "dynamo": fm.torchvision_dynamo(folder),
        "onnxsim": fm.onnxsim_file(folder),
        "view_dynamic": fm.view_dynamic_batch(folder),
        "paddle": fm.paddle_style_opset11(folder),
        "dense": fm.dense_output(folder),
    }


PADDLE_ARGS = ("--input-shape", "1,3,32,96", "--resize", "letterbox", "--mean", "0.5,0.5,0.5", "--std", "0.5,0.5,0.5",
               "--channels", "bgr", "--pad-value", "128")
CASES = {  # corpus key -> (extra arguments, the words each change line must hold, the task)
    "torchscript": ((), [], "classify"),
    "dynamo": ((), ["external data loaded"], "classify"),
    "onnxsim": ((), [], "classify"),
    "view_dynamic": (("--input-shape", "1,3,32,32"), ["pinned from (batch, 3, 32, 32) to (1, 3, 32, 32)",
                                                      "shape-only subgraphs folded with onnxsim"], "classify"),
    "paddle": (PADDLE_ARGS, ["pinned from (-1, 3, h, w) to (1, 3, 32, 96)", "Constant node(s) turned into initializers",
                             "opset 11 upgraded to 13"], "classify"),
    "dense": ((), [], "dense"),
}


def _meta(path):
    from edgekit.onnxfile.artifact import load_onnx, read_metadata

    model = load_onnx(path)  # every command's loader: signature, schema, metadata against the graph
    return model, read_metadata(model, path)


def _one_line_error(res, code):
    assert res.exit_code == code, (res.exit_code, res.stdout, res.stderr)
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    assert "Traceback" not in res.stderr
    return lines[0]


@pytest.mark.parametrize("key", list(CASES))
def test_each_corpus_file_imports(cli, corpus, tmp_path, key):
    from edgekit.core.files import sha256_file

    source = corpus[key]
    before = sha256_file(source)
    out = tmp_path / f"{key}.onnx"
    extra, words, task = CASES[key]
    res = cli("import", source, "-o", out, "--json", *extra)
    assert res.exit_code == 0, res.stderr
    result = json.loads(res.stdout)
    for word in words:
        assert any(word in change for change in result["changes"]), (word, result["changes"])
    assert result["task"] == task and result["task_detected"]
    assert result["vs_original"]["passed"]
    assert sha256_file(source) == before  # the original is never touched
    model, meta = _meta(out)
    assert meta["precision"] == "fp32" and meta["task"] == task
    assert meta["imported"]["file"] == source.name and meta["imported"]["sha256"] == before
    assert meta["imported"]["changes"] == result["changes"]
    assert meta["imported"]["preprocessing"] == ("given" if key == "paddle" else "assumed")  # and a note says so
    assert any("no preprocessing given" in n for n in result["notes"]) == (key != "paddle")
    assert meta["opset"] >= 13 and meta["imported"]["check"]["max_abs"] <= 1e-5
    assert not [n for n in model.graph.node if n.op_type == "Constant" and n.attribute[0].t.dims]  # no weight constant
    assert files_in(tmp_path) == [out.name]  # no sidecar, no staging folder left


def test_the_summary_says_the_changes_the_task_and_the_check(cli, corpus, tmp_path):
    res = cli("import", corpus["paddle"], "-o", tmp_path / "p.onnx", *PADDLE_ARGS)
    assert res.exit_code == 0, res.stderr
    text = " ".join(res.stdout.split())
    assert "Constant node(s) turned into initializers" in text and "opset 11 upgraded to 13" in text
    assert "classify (detected from the output's shape" in text
    assert "letterbox into 32x96" in text and "pixel value 128" in text
    assert "bit-exact" in text or "max abs" in text
    assert "PaddlePaddle 2.6" in text


def test_non_square_letterbox_preprocessing_is_recorded(cli, corpus, tmp_path):
    from edgekit.data.preprocessing import Preprocessing

    out = tmp_path / "p.onnx"
    assert cli("import", corpus["paddle"], "-o", out, *PADDLE_ARGS).exit_code == 0
    model, meta = _meta(out)
    assert meta["input_shape"] == [1, 3, 32, 96] and "input_size" not in meta
    pre = Preprocessing.from_dict(meta["preprocessing"])
    assert pre.crop == (32, 96) and pre.resize == "letterbox" and pre.pad_value == 128 and pre.channels == "bgr"
    assert meta["preprocessing"]["crop"] == [32, 96]
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, 3, 32, 96]


def test_preprocessing_file_with_a_non_square_letterbox(cli, corpus, tmp_path):
    spec = tmp_path / "pre.json"
    spec.write_text(json.dumps({"resize": "letterbox", "crop": [32, 96], "pad_value": 0, "mean": [0.5, 0.5, 0.5],
                                "std": [0.5, 0.5, 0.5], "channels": "bgr"}))
    out = tmp_path / "p.onnx"
    res = cli("import", corpus["paddle"], "-o", out, "--input-shape", "1,3,32,96", "--preprocessing", spec, "--json")
    assert res.exit_code == 0, res.stderr
    meta = _meta(out)[1]
    assert meta["preprocessing"]["crop"] == [32, 96] and meta["preprocessing"]["resize"] == "letterbox"
    assert meta["imported"]["preprocessing"] == "given"
    spec.write_text(json.dumps({"resize": "letterbox", "crop": [48, 192], "mean": [0.5] * 3, "std": [0.5] * 3}))
    line = _one_line_error(cli("import", corpus["paddle"], "-o", out, "--input-shape", "1,3,32,96",
                               "--preprocessing", spec), 2)
    assert f"preprocessing file {spec} field 'crop' is 48x192 but --input-shape is 32x96" in line


def test_a_dynamic_batch_stays_dynamic_when_asked(cli, corpus, tmp_path):
    import onnxruntime as ort

    out = tmp_path / "p.onnx"
    res = cli("import", corpus["paddle"], "-o", out, "--input-shape", "N,3,32,96", "--crop", "32x96")
    assert res.exit_code == 0, res.stderr
    _model, meta = _meta(out)
    assert meta["input_shape"] == ["batch", 3, 32, 96] and meta["dynamic_batch"] is True
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert session.run(None, {"x": np.zeros((3, 3, 32, 96), np.float32)})[0].shape == (3, 6)


def test_a_file_with_a_dynamic_batch_and_static_hw_keeps_its_dynamic_batch(cli, corpus, tmp_path):
    out = tmp_path / "v.onnx"
    res = cli("import", corpus["view_dynamic"], "-o", out, "--json")
    assert res.exit_code == 0, res.stderr
    meta = _meta(out)[1]
    assert meta["input_shape"] == ["batch", 3, 32, 32] and meta["dynamic_batch"] is True
    assert not any("pinned" in c for c in json.loads(res.stdout)["changes"])  # already named "batch": no change


def test_dense_output_is_detected_and_classify_refused(cli, corpus, tmp_path):
    out = tmp_path / "d.onnx"
    res = cli("import", corpus["dense"], "-o", out, "--json")
    assert res.exit_code == 0, res.stderr
    assert json.loads(res.stdout)["output_shape"] == [1, 1, 64, 64]
    assert _meta(out)[1]["task"] == "dense" and "num_classes" not in _meta(out)[1]
    line = _one_line_error(cli("import", corpus["dense"], "-o", tmp_path / "c.onnx", "--task", "classify"), 2)
    assert "(N, 1, 64, 64)" in line and "--task dense" in line
    assert files_in(tmp_path) == ["d.onnx"]


def test_default_output_is_under_exports(cli, corpus, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli("import", corpus["onnxsim"]).exit_code == 0
    assert files_in(tmp_path / "exports") == ["viewnet_sim.onnx"]
    # an imported file is an edgekit file: importing it again is refused
    line = _one_line_error(cli("import", "exports/viewnet_sim.onnx", "-o", tmp_path / "again.onnx"), 2)
    assert "already an edgekit file" in line


# --- refusals: one line, the right exit code, nothing written ---------------------------------------------


def test_dynamic_height_width_needs_input_shape(cli, corpus, tmp_path):
    line = _one_line_error(cli("import", corpus["paddle"], "-o", tmp_path / "p.onnx"), 2)
    assert "dynamic height and width" in line and "--input-shape" in line
    assert files_in(tmp_path) == []


@pytest.mark.parametrize("shape, words", [
    ("1,3,32", "give N,C,H,W"), ("1,3,32,abc", "not a whole number"), ("1,2,32,96", "1 or 3 channels"),
    ("1,3,0,96", "height and width"),
])
def test_bad_input_shape_is_one_line(cli, corpus, tmp_path, shape, words):
    line = _one_line_error(cli("import", corpus["paddle"], "-o", tmp_path / "p.onnx", "--input-shape", shape), 2)
    assert words in line
    assert files_in(tmp_path) == []


def test_input_shape_must_agree_with_static_dims(cli, corpus, tmp_path):
    line = _one_line_error(cli("import", corpus["dense"], "-o", tmp_path / "d.onnx", "--input-shape", "1,3,32,32"), 2)
    assert "height 32" in line and "give 64" in line
    line = _one_line_error(cli("import", corpus["dense"], "-o", tmp_path / "d.onnx", "--input-shape", "N,3,64,64"), 2)
    assert "dynamic batch" in line


def test_missing_sidecar_is_one_line(cli, corpus, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(corpus["dynamo"], folder)  # the .onnx without its .onnx.data
    line = _one_line_error(cli("import", folder / corpus["dynamo"].name, "-o", tmp_path / "out.onnx"), 2)
    assert "external data file" in line and "is missing" in line
    assert files_in(tmp_path) == ["in"]


def test_a_file_that_is_not_onnx_is_one_line(cli, tmp_path):
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"this is not a protobuf at all\n" * 3)
    line = _one_line_error(cli("import", bad, "-o", tmp_path / "out.onnx"), 2)
    assert "not a valid ONNX file" in line
    assert files_in(tmp_path) == ["model.onnx"]


def test_output_onto_the_input_is_refused(cli, corpus, tmp_path):
    from edgekit.core.files import sha256_file

    source = tmp_path / "textdet.onnx"
    shutil.copy(corpus["dense"], source)
    before = sha256_file(source)
    line = _one_line_error(cli("import", source, "-o", source), 2)
    assert "would destroy an input" in line
    line = _one_line_error(cli("import", source, "-o", tmp_path), 2)  # a folder: the same name inside it
    assert "would destroy an input" in line
    (tmp_path / "link.onnx").hardlink_to(source)
    _one_line_error(cli("import", source, "-o", tmp_path / "link.onnx"), 2)
    assert sha256_file(source) == before and files_in(tmp_path) == ["link.onnx", "textdet.onnx"]


def test_a_normalised_graph_that_differs_from_the_original_fails_and_writes_nothing(cli, corpus, tmp_path, monkeypatch):
    from onnx import numpy_helper

    from edgekit.importer import normalise

    real = normalise.fold_shapes

    def broken(model, where):
        model, change = real(model, where)
        weight = next(t for t in model.graph.initializer if len(t.dims) == 4)
        weight.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(weight) * 1.01, weight.name))
        return model, change

    monkeypatch.setattr(normalise, "fold_shapes", broken)
    line = _one_line_error(cli("import", corpus["onnxsim"], "-o", tmp_path / "x.onnx"), 1)
    assert "differs from the original's" in line and "nothing was written" in line
    assert files_in(tmp_path) == []


def test_preprocessing_must_match_the_input(cli, corpus, tmp_path):
    line = _one_line_error(cli("import", corpus["paddle"], "-o", tmp_path / "p.onnx", "--input-shape", "1,3,32,96",
                               "--crop", "32x64"), 2)
    assert "--crop is 32x64 but --input-shape is 32x96" in line
    line = _one_line_error(cli("import", corpus["paddle"], "-o", tmp_path / "p.onnx", "--input-shape", "1,3,32,96",
                               "--pad-value", "3"), 2)
    assert "only a letterbox resize pads" in line
    assert files_in(tmp_path) == []


# --- every command accepts the imported file -------------------------------------------------------------


@pytest.mark.parametrize("key", ["onnxsim", "paddle", "dense", pytest.param("dynamo", marks=pytest.mark.slow)])
def test_quantize_takes_each_imported_file(cli, corpus, tmp_path, key):
    extra, _words, _task = CASES[key]
    fp32 = tmp_path / f"{key}.onnx"
    assert cli("import", corpus[key], "-o", fp32, *extra).exit_code == 0
    args = ["quantize", fp32, "-o", tmp_path / f"{key}.int8.onnx", "--json"]
    if key == "paddle":  # non-square calibration tensors (N, 3, 32, 96)
        npz = tmp_path / "calib.npz"
        np.savez(npz, x=np.random.default_rng(0).standard_normal((8, 3, 32, 96)).astype(np.float32))
        args += ["--calibration", npz]
    if key == "dynamo":  # random-weight mobilenet_v3_small: int8 agrees on fewer than 95 % of held-out crops
        args += ["--min-agreement", "0.5"]
    res = cli(*args)
    assert res.exit_code == 0, res.stderr
    _model, meta = _meta(tmp_path / f"{key}.int8.onnx")
    assert meta["precision"] == "int8"


# --- non-square and letterbox preprocessing: host and device compute the same pixels ----------------------


@pytest.mark.parametrize("kw", [
    dict(resize="letterbox", crop=(32, 96), pad_value=128, channels="bgr", mean=(0.5,) * 3, std=(0.5,) * 3),
    dict(resize="letterbox", crop=(40, 24), pad_value=0),
    dict(resize=None, crop=(32, 96)),
    dict(resize=120, crop=(48, 96), interpolation="bicubic"),
    dict(resize="letterbox", crop=(32, 64), channels="gray", input_channels=1, mean=(0.5,), std=(0.25,)),
])
def test_device_preprocessing_matches_the_host_for_non_square_inputs(kw):
    from PIL import Image

    from edgekit.data.preprocessing import Preprocessing
    from edgekit.ondevice.preprocess import crop_uint8, normalize

    pre = Preprocessing(**kw)
    d = pre.to_dict()
    assert Preprocessing.from_dict(json.loads(json.dumps(d))) == pre  # the metadata's round trip
    rng = np.random.default_rng(0)
    for size in ((50, 60), (200, 31), (17, 90)):  # (W, H): wide, tall, taller than the input
        image = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
        host = pre.apply(image)
        device = normalize(crop_uint8(image, d), d["mean"], d["std"])
        assert host.shape == pre.chw == device.shape
        np.testing.assert_allclose(device, host, atol=1e-6)


def test_letterbox_keeps_the_aspect_and_pads_right_and_bottom():
    from PIL import Image

    from edgekit.data.preprocessing import Preprocessing

    pre = Preprocessing(resize="letterbox", crop=(32, 96), pad_value=255, mean=(0.0,) * 3, std=(1.0,) * 3)
    out = pre.apply(Image.new("RGB", (40, 20), (0, 0, 0)))  # 2:1 into 96x32 -> 64x32, then 32 columns of padding
    assert out.shape == (3, 32, 96)
    assert np.all(out[:, :, :64] == 0.0) and np.all(out[:, :, 64:] == 1.0)
    out = pre.apply(Image.new("RGB", (10, 40), (0, 0, 0)))  # tall: 8x32, the rest padded
    assert np.all(out[:, :, :8] == 0.0) and np.all(out[:, :, 8:] == 1.0)


@pytest.mark.slow
def test_a_non_square_imported_file_packages_and_its_bundle_checks(cli, corpus, tmp_path):
    import subprocess
    import sys

    fp32, int8, bundle = tmp_path / "p.onnx", tmp_path / "p.int8.onnx", tmp_path / "bundle"
    assert cli("import", corpus["paddle"], "-o", fp32, *PADDLE_ARGS).exit_code == 0
    assert cli("quantize", fp32, "-o", int8).exit_code == 0
    res = cli("package", int8, "--parent", fp32, "-o", bundle)
    assert res.exit_code == 0, res.stderr
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["preprocessing"]["crop"] == [32, 96] and manifest["preprocessing"]["resize"] == "letterbox"
    check = subprocess.run([sys.executable, "check.py"], cwd=bundle, capture_output=True, text=True, timeout=300)
    assert check.returncode == 0, check.stdout + check.stderr


@pytest.mark.parametrize("field, value, words", [
    ("crop", [32], "expected N or HxW"), ("crop", [0, 96], "N, or HxW"), ("crop", [32, 96.5], "expected N or HxW"),
    ("crop", [32, 96, 3], "expected N or HxW"), ("resize", "letterboxed", "expected a whole number"),
    ("pad_value", 3, "only a letterbox resize pads"),
])
def test_damaged_non_square_preprocessing_metadata_is_one_bad_input(field, value, words):
    from edgekit.core.errors import BadInput
    from edgekit.data.preprocessing import Preprocessing

    good = Preprocessing(resize=None, crop=(32, 96)).to_dict()
    assert good["crop"] == [32, 96] and "pad_value" not in good  # other files' dicts keep their keys
    with pytest.raises(BadInput, match=words):
        Preprocessing.from_dict({**good, field: value})
    assert Preprocessing.from_dict({**good, "crop": "32x96"}).crop == (32, 96)
    assert Preprocessing.from_dict({**good, "crop": [64, 64]}).crop == 64  # a square pair is stored as N


def test_untrained_is_declared_and_decides_the_gates_downstream(cli, corpus, tmp_path, monkeypatch):
    """Unknown weights count as trained (the strict gates); --untrained declares a random init, recorded in the
    metadata, and quantize/verify then apply the random-weight gates and say why. The int8 file is written beside the
    working folder's exports/ and still finds its parent where it was (recorded path, sha256-checked)."""
    from edgekit.judge.compare import weights_of_file

    plain, declared = tmp_path / "plain" / "m.onnx", tmp_path / "declared" / "m.onnx"
    assert cli("import", corpus["torchscript"], "-o", plain).exit_code == 0
    res = cli("import", corpus["torchscript"], "--untrained", "-o", declared)
    assert res.exit_code == 0, res.stderr
    assert "declared untrained" in res.stdout
    assert _meta(declared)[1]["imported"]["weights"] == "untrained" and "weights" not in _meta(plain)[1]["imported"]
    assert weights_of_file(_meta(plain)[1])[0] is True
    assert weights_of_file(_meta(declared)[1]) == (False, "declared untrained at import (edgekit import --untrained)")

    monkeypatch.chdir(tmp_path)
    res = cli("quantize", declared, "--json")
    assert res.exit_code == 0, res.stderr
    result = json.loads(res.stdout)
    assert "declared untrained" in result["gates"] and result["path"].endswith("exports/m.int8.onnx")
    res = cli("verify", tmp_path / "exports" / "m.int8.onnx", "--providers", "cpu")
    assert res.exit_code == 0, res.stderr
    assert "the fp32 parent" in res.stdout and "they do not predict accuracy" in res.stdout
