"""Every command against bad input, faults and untrusted files: exit code, one line, nothing half-written."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgekit.artifact import load_onnx
from edgekit.errors import BadInput, EdgekitError
from tests.conftest import SMALL, files_in

IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def _bad_onnx(kind: str, folder: Path, good: Path) -> Path:
    path = folder / f"{kind}.onnx"
    if kind == "zero-bytes":
        path.write_bytes(b"")
    elif kind == "truncated":
        path.write_bytes(good.read_bytes()[:50_000])
    elif kind == "random-bytes":
        path.write_bytes(np.random.default_rng(0).bytes(4096))
    elif kind == "lfs-pointer":
        path.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:0123\nsize 31000000\n")
    elif kind == "directory":
        path.mkdir()
    elif kind == "unreadable":
        shutil.copy(good, path)
        path.chmod(0)
    return path  # "missing": never created


BAD_ONNX = {
    "zero-bytes": "is empty (0 bytes)",
    "truncated": "is not a valid ONNX file",
    "random-bytes": "is not a valid ONNX file",
    "lfs-pointer": "is a Git LFS pointer",
    "directory": "is a directory, not a file",
    "missing": "does not exist",
    "unreadable": "cannot read",
}


@pytest.mark.parametrize("command", ["quantize", "verify", "bench"])
@pytest.mark.parametrize("kind", list(BAD_ONNX))
def test_bad_onnx_inputs(cli, exported, tmp_path, command, kind):
    if kind == "unreadable" and IS_ROOT:
        pytest.skip("running as root: file permissions do not stop root from reading")
    path = _bad_onnx(kind, tmp_path, exported("textbook_resnet18").path)
    out = tmp_path / "out"
    args = [command, path] + (["-o", out / "x.onnx"] if command == "quantize" else [])
    res = cli(*args)
    assert res.exit_code == 2, res.stdout + res.stderr
    assert BAD_ONNX[kind] in res.stderr.replace("\n", " ")
    assert path.name in res.stderr.replace("\n", "")
    assert "Traceback" not in res.stderr
    assert files_in(out) == []


@pytest.fixture
def external(tmp_path, monkeypatch):
    """A small model saved with external data (the >2 GB path, forced by a tiny threshold)."""
    from edgekit.export import export

    monkeypatch.setenv("EDGEKIT_EXTERNAL_DATA_THRESHOLD", "1000")
    folder = tmp_path / "ext"
    result = export("textbook_resnext", input_size=SMALL, output=folder / "m.onnx")
    return result.path


def test_large_model_is_saved_with_external_data_and_checked_by_path(external):
    data = external.with_name("m.onnx.data")
    assert data.exists() and data.stat().st_size > 5 * external.stat().st_size
    model = load_onnx(external)
    assert sum(len(t.raw_data) for t in model.graph.initializer) > 1_000_000  # weights really loaded


def test_external_data_model_quantizes(external, tmp_path):
    from edgekit.quantize import quantize

    result = quantize(external, output=tmp_path / "q.onnx")
    assert result.grouped_convs == 8


def test_external_data_missing(cli, external):
    external.with_name("m.onnx.data").unlink()
    res = cli("bench", external)
    assert res.exit_code == 2 and "external data file 'm.onnx.data'" in res.stderr and "is missing" in res.stderr


def _relocate(model_path: Path, location: str) -> None:
    model = onnx.load(str(model_path), load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
    onnx.save_model(model, str(model_path))


def test_external_data_outside_its_folder_is_refused(cli, external, tmp_path):
    shutil.move(external.with_name("m.onnx.data"), tmp_path / "secret.data")
    _relocate(external, "../secret.data")
    res = cli("bench", external)
    assert res.exit_code == 2 and "points outside its folder" in res.stderr


def test_external_data_through_a_symlink_is_refused(cli, external, tmp_path):
    target = tmp_path / "elsewhere.data"
    shutil.move(external.with_name("m.onnx.data"), target)
    external.with_name("m.onnx.data").symlink_to(target)
    res = cli("bench", external)
    assert res.exit_code == 2 and "symlink" in res.stderr


def test_disk_full_while_saving(cli, tmp_path, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(onnx, "save_model", full)
    out = tmp_path / "out"
    res = cli("export", "textbook_resnet18", "--input-size", SMALL, "-o", out / "m.onnx")
    assert res.exit_code == 3 and "no space left" in res.stderr
    assert files_in(out) == []


def test_ctrl_c_is_exit_130_and_leaves_nothing(cli, tmp_path, monkeypatch):
    import edgekit.export as export_module

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(export_module, "export_to_onnx", interrupted)
    out = tmp_path / "out"
    res = cli("export", "textbook_resnet18", "--input-size", SMALL, "-o", out / "m.onnx")
    assert res.exit_code == 130 and "interrupted" in res.stderr
    assert files_in(out) == []


def test_existing_output_is_replaced_atomically(tmp_path):
    from edgekit.export import export

    target = tmp_path / "m.onnx"
    target.write_bytes(b"an older file")
    export("textbook_resnet18", input_size=SMALL, output=target)
    assert onnx.load(str(target)).graph.node  # a complete model, not the old bytes
    assert files_in(tmp_path) == ["m.onnx"]


def test_debug_shows_the_traceback(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from edgekit.cli import app

    monkeypatch.setenv("EDGEKIT_DEBUG", "1")
    result = CliRunner().invoke(app, ["export", "densnet"])
    assert isinstance(result.exception, BadInput)


def test_huge_image_is_skipped_not_decoded(tmp_path):
    from PIL import Image

    from edgekit.calibration import Preprocessing, load_image_folder

    Image.new("1", (14_000, 14_000)).save(tmp_path / "huge.png")  # 196 Mpx: a decompression bomb
    Image.new("RGB", (40, 40), (10, 20, 30)).save(tmp_path / "small.png")
    result = load_image_folder(tmp_path, Preprocessing.for_input_size(32), use_cache=False)
    assert [p.name for p in result.files] == ["small.png"]
    assert result.corrupt[0][0].name == "huge.png" and "too large" in result.corrupt[0][1]


def test_safetensors_with_wrong_shapes(cli, tmp_path):
    import torch
    from safetensors.torch import save_file

    from edgekit.models import create_model

    state = create_model("textbook_resnet18", input_size=SMALL).state_dict()
    state["net.0.0.weight"] = torch.zeros(32, 3, 7, 7)
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "w.safetensors"))
    res = cli("export", "textbook_resnet18", "--input-size", SMALL, "--weights", tmp_path / "w.safetensors", "-o", tmp_path / "o.onnx")
    assert res.exit_code == 2
    assert "shape mismatch: net.0.0.weight (32, 3, 7, 7) vs (64, 3, 7, 7)" in res.stderr.replace("\n", "")


def test_truncated_safetensors(cli, tmp_path):
    from safetensors.torch import save_file

    from edgekit.models import create_model

    state = create_model("textbook_resnet18", input_size=SMALL).state_dict()
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    path.write_bytes(path.read_bytes()[:1000])
    res = cli("export", "textbook_resnet18", "--weights", path, "-o", tmp_path / "o.onnx")
    assert res.exit_code == 2 and "not a valid safetensors file" in res.stderr


# ---- fuzz: mutated bytes reach the loaders; only EdgekitError (or success) may come out -----------


@pytest.fixture(scope="module")
def good_onnx_bytes(tmp_path_factory):
    from edgekit.export import export

    path = tmp_path_factory.mktemp("fuzz") / "m.onnx"
    export("textbook_densenet", input_size=32, output=path, simplify_graph=False)
    return path.read_bytes()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzz_onnx_loader(good_onnx_bytes, tmp_path, data):
    blob = bytearray(good_onnx_bytes)
    cut = data.draw(st.integers(0, len(blob)))
    flips = data.draw(st.lists(st.tuples(st.integers(0, len(blob) - 1), st.integers(0, 255)), max_size=8))
    for index, value in flips:
        blob[index] = value
    path = tmp_path / "fuzz.onnx"
    path.write_bytes(bytes(blob[: cut or len(blob)]))
    try:
        load_onnx(path)
    except EdgekitError:
        pass


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzz_image_decoder(tmp_path, data):
    from edgekit.calibration import Preprocessing, decode_image

    source = sorted((Path(__file__).resolve().parent.parent / "calibration").glob("*.*g"))
    original = data.draw(st.sampled_from(source)).read_bytes()
    blob = bytearray(original[: data.draw(st.integers(1, len(original)))])
    for index, value in data.draw(st.lists(st.tuples(st.integers(0, len(blob) - 1), st.integers(0, 255)), max_size=6)):
        blob[index] = value
    path = tmp_path / ("fuzz" + Path(data.draw(st.sampled_from([str(s) for s in source]))).suffix)
    path.write_bytes(bytes(blob))
    try:
        out = decode_image(path, Preprocessing.for_input_size(32))
        assert out.shape == (3, 32, 32)
    except ValueError:
        pass
