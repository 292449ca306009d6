"""`edgekit convert --fp16`: gates against PyTorch, structure kept, metadata chain, refusals, atomic writes."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgekit.onnxfile.artifact import read_metadata, sha256_file
from edgekit.convert import FP16_MAX_FINITE, convert
from edgekit.core.errors import GateFailed
from edgekit.onnxfile.graph import detect_precision
from edgekit.onnxfile.structure import onnx_concat_count, onnx_grouped_conv_count
from tests.conftest import files_in


@pytest.mark.parametrize("name, grouped, concats", [("textbook_resnext", 8, 0), ("textbook_densenet", 0, 16)])
def test_fp16_passes_its_gates_and_keeps_the_structure(name, grouped, concats, exported, tmp_path):
    parent = exported(name)
    result = convert(parent.path, output=tmp_path)
    assert result.path == tmp_path / f"{parent.path.stem}.fp16.onnx" and result.path.is_file()
    model = onnx.load(str(result.path))
    assert detect_precision(model) == "fp16"
    assert onnx_grouped_conv_count(model) == grouped == result.grouped_convs
    assert onnx_concat_count(model) == concats == result.concats
    # float32 in and out by default: the casts live inside the graph
    assert model.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert model.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT
    c = result.comparison
    assert result.passed and c.sqnr_db >= 30 and c.top1_agreement >= 0.9 and not (c.nan or c.inf)
    assert result.reference.startswith("PyTorch textbook_") and "fp32" in result.reference
    assert 1.8 < result.size_ratio < 2.1
    assert result.activations is not None and result.activations.fits and 0 < result.activations.max_abs < FP16_MAX_FINITE


def test_metadata_chain(exported, tmp_path):
    parent = exported("textbook_resnet18")
    result = convert(parent.path, output=tmp_path / "r.fp16.onnx")
    meta = read_metadata(onnx.load(str(result.path)))
    assert meta["precision"] == "fp16"
    assert meta["parent"] == {"file": parent.path.name, "path": str(parent.path.resolve()), "sha256": sha256_file(parent.path),
                              "metadata": True}
    conversion = meta["conversion"]
    assert conversion["tool"] == "onnxconverter-common" and conversion["version"] == result.tool_version
    assert conversion["keep_io_types"] is True and conversion["max_finite_val"] == FP16_MAX_FINITE
    assert set(conversion["clamped"]) == {"tiny", "huge"}
    # what the reference is rebuilt from travels unchanged
    for key in ("model", "num_classes", "input_size", "weights", "preprocessing"):
        assert meta[key] == parent.metadata[key]
    assert meta["versions"]["onnxconverter-common"] == result.tool_version


def test_fp16_io_takes_float16(cli, exported, tmp_path):
    out = tmp_path / "io.onnx"
    res = cli("convert", exported("textbook_resnext").path, "--fp16", "--fp16-io", "-o", out, "--json")
    assert res.exit_code == 0, res.stderr
    data = json.loads(res.stdout)
    assert data["keep_io_types"] is False and data["passed"] is True and data["precision"] == "fp16"
    assert set(data) >= {"parent_bytes", "bytes", "comparison", "vs_parent", "activations", "tolerance", "metadata"}
    model = onnx.load(str(out))
    assert model.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT16
    assert model.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT16
    assert read_metadata(model)["conversion"]["keep_io_types"] is False


def test_table_says_what_the_cpu_check_means(cli, exported, tmp_path):
    res = cli("convert", exported("textbook_resnext").path, "--fp16", "-o", tmp_path)
    assert res.exit_code == 0, res.stderr
    assert "wrote" in res.stdout and "SQNR" in res.stdout and "top-1 agreement" in res.stdout
    assert "smaller" in res.stdout and "GPU and" in res.stdout


def test_int8_is_refused_with_exit_2(cli, exported, tmp_path):
    from edgekit.quantize import quantize

    q = quantize(exported("textbook_resnet18").path, output=tmp_path / "q" / "r.int8.onnx")
    out = tmp_path / "out"
    res = cli("convert", q.path, "--fp16", "-o", out)
    assert res.exit_code == 2 and "is int8 (quantized)" in res.stderr and res.stderr.count("\n") == 1
    assert files_in(out) == []


def test_already_fp16_is_refused(cli, exported, tmp_path):
    first = convert(exported("textbook_resnext").path, output=tmp_path / "a.fp16.onnx")
    res = cli("convert", first.path, "--fp16", "-o", tmp_path / "b.onnx")
    assert res.exit_code == 2 and "already fp16" in res.stderr
    assert files_in(tmp_path) == ["a.fp16.onnx"]


def test_without_fp16_says_what_to_convert_to(cli, exported, tmp_path):
    res = cli("convert", exported("textbook_resnext").path, "-o", tmp_path)
    assert res.exit_code == 2 and "--fp16" in res.stderr and files_in(tmp_path) == []


def test_output_is_the_input(cli, exported):
    path = exported("textbook_resnext").path
    res = cli("convert", path, "--fp16", "-o", path)
    assert res.exit_code == 2 and "is the input file itself" in res.stderr


def test_gate_failure_is_exit_1_and_leaves_the_previous_file(cli, exported, tmp_path):
    out = tmp_path / "g.fp16.onnx"
    out.write_bytes(b"previous")
    res = cli("convert", exported("textbook_resnext").path, "--fp16", "-o", out, "--min-sqnr", "150")
    assert res.exit_code == 1 and "does not pass the fp16 gates" in res.stderr and "nothing was written" in res.stderr
    assert out.read_bytes() == b"previous" and files_in(tmp_path) == ["g.fp16.onnx"]


def _foreign(path, weight: float):
    """A tiny classifier without edgekit metadata: 1x1 Conv (3 -> 4) with every weight `weight`, global pool."""
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["input", "w"], ["a"], name="conv"),
            helper.make_node("Relu", ["a"], ["b"], name="relu"),
            helper.make_node("GlobalAveragePool", ["b"], ["c"], name="pool"),
            helper.make_node("Flatten", ["c"], ["logits"], name="flatten"),
        ],
        "foreign",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 32, 32])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 4])],
        [numpy_helper.from_array(np.linspace(0.5, 1.5, 12).reshape(4, 3, 1, 1).astype(np.float32) * weight, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    onnx.save(model, str(path))
    return path


def test_foreign_file_is_compared_with_its_fp32_self(tmp_path):
    result = convert(_foreign(tmp_path / "f.onnx", 1.0), output=tmp_path / "f16.onnx")
    assert result.passed and "fp32 parent file" in result.reference
    assert any("no edgekit metadata" in n for n in result.notes)
    assert read_metadata(onnx.load(str(result.path)))["parent"]["metadata"] is False


def test_activation_that_overflows_fp16_is_refused(tmp_path):
    # ImageNet-normalised photos reach about +-2.6; 3 channels x 3e4 puts the conv output past 65504,
    # which ONNX Runtime's CPU run of the fp16 file would never show (it computes in fp32).
    with pytest.raises(GateFailed, match="past fp16's largest finite value"):
        convert(_foreign(tmp_path / "big.onnx", 3e4), output=tmp_path / "out" / "big16.onnx")
    assert files_in(tmp_path / "out") == []


def test_convert_takes_imported_files_and_users_own_modules(cli, tmp_path, monkeypatch):
    """The reference convert compares with is verify's: the original of an imported file (in ONNX Runtime), and a
    user's own module only when it is named again with --model (never imported by itself)."""
    from tests import foreign_models as fm

    imported = tmp_path / "imp" / "mnv3.onnx"
    assert cli("import", fm.torchvision_torchscript(tmp_path, "mobilenet_v3_small", 64), "-o", imported).exit_code == 0
    res = cli("convert", imported, "--fp16", "--json")
    assert res.exit_code == 0, res.stderr
    assert json.loads(res.stdout)["reference"].startswith("ONNX Runtime on the original file")

    monkeypatch.chdir(tmp_path)
    fm.user_module_source(tmp_path)
    mine = tmp_path / "my" / "my.onnx"
    assert cli("export", "mynet.py:build", "--input-size", "32", "-o", mine).exit_code == 0
    res = cli("convert", mine, "--fp16")
    assert res.exit_code == 2 and "--model mynet.py:build" in res.stderr
    assert not (tmp_path / "my" / "my.fp16.onnx").exists()
    res = cli("convert", mine, "--fp16", "--model", "mynet.py:build", "--json")
    assert res.exit_code == 0, res.stderr
    assert json.loads(res.stdout)["reference"].startswith("PyTorch mynet.py:build")
