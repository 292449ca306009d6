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

from edgekit.onnxfile.artifact import load_onnx
from edgekit.core.errors import BadInput, EdgekitError
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

    from edgekit.data.images import load_image_folder
    from edgekit.data.preprocessing import Preprocessing

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
    from edgekit.data.images import decode_image
    from edgekit.data.preprocessing import Preprocessing

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


# ---- the same bad file, the same exit code and message class in every command --------------------


def _same_condition_file(kind: str, folder: Path) -> tuple[Path, str]:
    """(a bad .onnx file, the words its error must contain)."""
    from tests.tiny_models import tiny_metadata, tiny_model, write_tiny

    path = folder / f"{kind}.onnx"
    if kind == "truncated":
        blob = tiny_model().SerializeToString()
        path.write_bytes(blob[: len(blob) // 2])
        return path, "is not a valid ONNX file"
    if kind == "lfs-pointer":
        path.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:0123\nsize 31000000\n")
        return path, "is a Git LFS pointer"
    if kind == "two-inputs":
        return write_tiny(path, inputs=2), "has 2 input(s) and 1 output(s)"
    if kind == "int64-input":
        return write_tiny(path, input_type="int64"), "input 'input' is int64"
    if kind == "metadata-not-json":
        return write_tiny(path, metadata='{"model": "textbook_resnet18",'), "its edgekit metadata is not valid JSON"
    if kind == "metadata-seed-string":
        meta = tiny_metadata()
        meta["weights"]["seed"] = "3"
        return write_tiny(path, metadata=meta), 'edgekit metadata field weights.seed is "3"'
    if kind == "metadata-size-disagrees":
        return write_tiny(path, metadata=tiny_metadata(), size=40), "input_size is 32, but the graph's input (1, 3, 40, 40)"
    if kind == "fifo":
        os.mkfifo(path)
        return path, "is a named pipe (FIFO), not a regular file"
    raise AssertionError(kind)


SAME_CONDITION = ["truncated", "lfs-pointer", "two-inputs", "int64-input", "metadata-not-json",
                  "metadata-seed-string", "metadata-size-disagrees", "fifo"]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("command", ["quantize", "verify", "bench"])
@pytest.mark.parametrize("kind", SAME_CONDITION)
def test_same_bad_file_same_exit_code_in_every_command(cli, tmp_path, command, kind):
    path, expected = _same_condition_file(kind, tmp_path)
    out = tmp_path / "out"
    args = {"quantize": ["-o", out / "q.onnx"], "verify": ["--random-inputs", "1"], "bench": ["--runs", "1"]}[command]
    res = cli(command, path, *args)
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert res.exit_code == 2, res.stdout + res.stderr
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    assert expected in lines[0] and path.name in lines[0]
    assert files_in(out) == []


# ---- signals and leftovers -----------------------------------------------------------------------


def test_sigterm_is_exit_143_and_leaves_nothing(cli, tmp_path, monkeypatch):
    import signal
    import time

    import edgekit.export as export_module

    def terminated(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(30)  # the handler interrupts this

    monkeypatch.setattr(export_module, "export_to_onnx", terminated)
    out = tmp_path / "out"
    before = signal.getsignal(signal.SIGTERM)
    res = cli("export", "textbook_resnet18", "--input-size", 32, "-o", out / "m.onnx")
    assert res.exit_code == 143, res.stderr
    assert res.stderr.strip() == "terminated: nothing was written"
    assert files_in(out) == []
    assert signal.getsignal(signal.SIGTERM) == before  # the CLI restores the handler it replaced


@pytest.mark.timeout(180)
def test_sigterm_through_the_real_entry_point(tmp_path):
    """`python -m edgekit quantize` killed with SIGTERM mid-calibration: exit 143, one line, no staging folder."""
    import subprocess
    import sys

    from tests.tiny_models import tiny_metadata, write_tiny

    model = write_tiny(tmp_path / "m.onnx", metadata=tiny_metadata())
    out = tmp_path / "out"
    script = (
        "import os, signal, time, edgekit.data.images as c\n"
        "def decode(*a, **k):\n"
        "    os.kill(os.getpid(), signal.SIGTERM); time.sleep(60)\n"
        "c.decode_image = decode\n"
        "from edgekit.cli import main\n"
        "main()\n"
    )
    env = {**os.environ, "EDGEKIT_CACHE_DIR": str(tmp_path / "cache")}
    proc = subprocess.run(
        [sys.executable, "-c", script, "quantize", str(model), "-o", str(out / "m.int8.onnx")],
        capture_output=True, text=True, timeout=150, env=env, cwd=Path(__file__).resolve().parent.parent,
    )
    assert proc.returncode == 143, proc.stderr
    assert proc.stderr.strip().splitlines() == ["terminated: nothing was written"]
    assert files_in(out) == []


def test_stale_staging_folders_are_swept(tmp_path):
    import time

    from edgekit.onnxfile.artifact import STALE_STAGING_SECONDS, stage_output

    old = time.time() - STALE_STAGING_SECONDS - 60

    def leftover(name: str, age: float | None) -> Path:
        folder = tmp_path / name
        folder.mkdir()
        (folder / "m.onnx").write_bytes(b"x" * 1000)  # a staged model a SIGKILL left behind
        if age is not None:
            os.utime(folder, (age, age))
        return folder

    stale = leftover(".m.onnx.99999999-abcd1234.edgekit-tmp", old)  # its process is gone
    stale_other = leftover(".other.onnx.abcd1234.edgekit-tmp", old)  # an older naming: age alone decides
    fresh = leftover(".m.onnx.99999998-efgh5678.edgekit-tmp", None)  # a write in progress
    alive = leftover(f".m.onnx.{os.getppid()}-ijkl9012.edgekit-tmp", old)  # a long job still running
    not_ours = leftover("keep.edgekit-tmp", old)
    link_target = tmp_path / "target"
    link_target.mkdir()
    (tmp_path / ".link.onnx.1-x.edgekit-tmp").symlink_to(link_target)
    os.utime(tmp_path / ".link.onnx.1-x.edgekit-tmp", (old, old), follow_symlinks=False)
    staged = stage_output(tmp_path / "m.onnx")
    try:
        assert not stale.exists() and not stale_other.exists()
        assert fresh.exists() and alive.exists() and not_ours.exists()
        assert link_target.exists() and (tmp_path / ".link.onnx.1-x.edgekit-tmp").is_symlink()  # never followed
        assert staged.folder.name.startswith(f".m.onnx.{os.getpid()}-")
    finally:
        staged.discard()


def test_profiling_traces_are_removed_when_a_session_is_collected(tmp_path, monkeypatch):
    import gc
    import tempfile

    from edgekit.runtimes.ort import create_session
    from tests.tiny_models import write_tiny

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    model = write_tiny(tmp_path / "m" / "m.onnx")
    session = create_session(model, "cpu", enable_profiling=True)
    session.session.run(None, {"input": np.zeros((1, 3, 32, 32), np.float32)})
    cycle = {"session": session}
    cycle["self"] = cycle
    del session, cycle
    gc.collect()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("edgekit-profile")] == []


@pytest.mark.timeout(120)
def test_profiling_traces_are_removed_at_exit(tmp_path):
    import subprocess
    import sys

    from tests.tiny_models import write_tiny

    model = write_tiny(tmp_path / "m" / "m.onnx")
    script = (
        "import sys, numpy as np\nfrom pathlib import Path\nfrom edgekit.runtimes.ort import create_session\n"
        f"s = create_session(Path({str(model)!r}), 'cpu', enable_profiling=True)\n"
        "s.session.run(None, {'input': np.zeros((1, 3, 32, 32), np.float32)})\n"
        "sys.modules['__main__'].KEEP = s\n"  # still alive when the interpreter exits
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=100,
                          env={**os.environ, "TMPDIR": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("edgekit-profile")] == []


def test_stale_profiling_traces_are_swept(tmp_path):
    import time

    from edgekit.runtimes.ort import sweep_stale_profiles

    old = time.time() - 7200
    dead = tmp_path / "edgekit-profile-99999999_2026-01-01_00-00-00.json"
    mine = tmp_path / f"edgekit-profile-{os.getpid()}_2026-01-01_00-00-00.json"
    recent = tmp_path / "edgekit-profile-99999998_2026-01-01_00-00-00.json"
    for path in (dead, mine, recent):
        path.write_text("[]")
    for path in (dead, mine):
        os.utime(path, (old, old))
    sweep_stale_profiles(str(tmp_path))
    assert not dead.exists() and mine.exists() and recent.exists()


# ---- paths printed literally -----------------------------------------------------------------------


def test_bracketed_file_names_print_literally(cli, exported, tmp_path):
    source = exported("textbook_resnet18", 32).path
    folder = tmp_path / "x[/b]y"  # a path holding a closing tag: must neither crash nor vanish
    folder.mkdir(parents=True)
    path = folder / "model[v2].onnx"
    shutil.copy(source, path)
    res = cli("verify", path, "--random-inputs", "1", "--providers", "cpu")
    assert res.exit_code == 0, res.stdout + res.stderr
    header = res.stdout.splitlines()[0]
    assert str(path) in header and header.startswith("verify ")
    assert "model[v2].onnx vs PyTorch" in res.stdout
    assert f"PASS {path}" in res.stdout


def test_bracketed_names_in_errors_print_literally(cli, tmp_path):
    path = tmp_path / "bad[/b][red]x[v2].onnx"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"")
    for command in ("quantize", "verify", "bench"):
        res = cli(command, path)
        assert res.exit_code == 2 and res.stderr.strip() == f"error: ONNX file {path} is empty (0 bytes) (re-create or re-download it)"


def test_file_name_that_is_not_utf8_prints_escaped(cli, tmp_path):
    raw = os.path.join(os.fsencode(tmp_path), b"mod\xe9l.onnx")
    with open(raw, "wb"):
        pass
    res = cli("verify", os.fsdecode(raw))
    assert res.exit_code == 2 and "Traceback" not in res.stderr
    assert "mod\\xe9l.onnx is empty (0 bytes)" in res.stderr


# ---- the reference plan reads validated metadata ---------------------------------------------------


def test_plan_reference_validates_the_metadata_it_is_given(tmp_path):
    from edgekit.models.reference import plan_reference
    from tests.tiny_models import tiny_metadata, tiny_model

    model = tiny_model()
    plan = plan_reference(tmp_path / "m.onnx", model, tiny_metadata(), None, None, False, 0)
    assert plan.from_metadata and plan.input_size == 32 and plan.num_classes == 10 and plan.seed == 0
    bad = tiny_metadata()
    bad["weights"]["seed"] = "3"
    with pytest.raises(BadInput, match='field weights.seed is "3"'):
        plan_reference(tmp_path / "m.onnx", model, bad, None, None, False, 0)
    with pytest.raises(BadInput, match=r"num_classes is 10, but the graph's output \(1, 1000\) has 1000 classes"):
        plan_reference(tmp_path / "m.onnx", tiny_model(classes=1000), tiny_metadata(), None, None, False, 0)
    older = tiny_metadata()
    del older["weights"]["init"]  # written before the BatchNorm settling existed
    with pytest.raises(BadInput, match="initialised by another edgekit version \\(init none recorded"):
        plan_reference(tmp_path / "m.onnx", model, older, None, None, False, 0)


@pytest.mark.timeout(300)
def test_int8_of_a_foreign_file_verifies_against_its_parent(cli, tmp_path):
    from tests.tiny_models import write_tiny

    foreign = write_tiny(tmp_path / "f.onnx")
    tensors = tmp_path / "t.npz"
    np.savez(tensors, input=np.random.default_rng(0).standard_normal((8, 3, 32, 32)).astype(np.float32))
    res = cli("quantize", foreign, "--calibration", tensors, "--samples", "4", "-o", tmp_path / "f.int8.onnx")
    assert res.exit_code == 0, res.stderr
    # no PyTorch source: the reference is its fp32 parent in ONNX Runtime, found beside it by sha256
    res = cli("verify", tmp_path / "f.int8.onnx", "--inputs", tensors, "--random-inputs", "0")
    assert res.exit_code == 0, res.stderr
    assert "ONNX Runtime on the fp32 parent" in res.stdout


# --- outputs never land on inputs (issue 22) --------------------------------------------------


def _digest(path: Path) -> str:
    from edgekit.core.files import sha256_file

    return sha256_file(path)


@pytest.mark.parametrize("args", [
    ("bench", "{m}", "--report", "{m}"),
    ("bench", "{m}", "--runs", "3", "--report", "{link}"),
    ("verify", "{m}", "--report", "{link}"),
    ("verify", "{i}", "--layers", "--parent", "{m}", "--plot", "{m}"),
    ("quantize", "{m}", "-o", "{link_onnx}"),
    ("convert", "{m}", "--fp16", "-o", "{link_onnx}"),
])
def test_an_output_that_is_an_input_is_exit_2_and_touches_nothing(cli, exported, tmp_path, args):
    # by path, and by inode (a hard link under another name): one line, exit 2, the input's bytes unchanged
    from edgekit.quantize import quantize

    model = tmp_path / "m.onnx"
    shutil.copyfile(exported("textbook_resnet18").path, model)
    int8 = tmp_path / "i.int8.onnx"
    if "{i}" in args:
        quantize(model, output=int8)
    os.link(model, tmp_path / "link.json")
    os.link(model, tmp_path / "link.onnx")
    before = _digest(model)
    names = {"m": model, "link": tmp_path / "link.json", "link_onnx": tmp_path / "link.onnx", "i": int8}
    res = cli(*[a.format(**names) for a in args])
    assert res.exit_code == 2, res.stdout + res.stderr
    assert "would destroy an input" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert _digest(model) == before


def test_two_files_of_one_name_in_different_folders_are_both_timed(cli, exported, tmp_path):
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        shutil.copyfile(exported("textbook_resnet18").path, tmp_path / folder / "m.onnx")
    res = cli("bench", tmp_path / "a" / "m.onnx", tmp_path / "b" / "m.onnx", "--runs", "3", "--json")
    assert res.exit_code == 0, res.stderr
    import json

    labels = [t["label"] for t in json.loads(res.stdout)["timings"]]
    assert len(labels) == len(set(labels)) == 2
    res = cli("bench", tmp_path / "a" / "m.onnx", tmp_path / "a" / ".." / "a" / "m.onnx")
    assert res.exit_code == 2 and "listed twice" in res.stderr


def test_names_at_and_past_the_file_systems_limit(cli, tmp_path):
    # 300 bytes: one line, exit 2 (was an OSError traceback); 250 bytes: a legal name, written (its staging
    # folder and its .data name are cut to fit, where they once made the name fail)
    res = cli("export", "textbook_resnet18", "--input-size", "32", "-o", tmp_path / ("a" * 300 + ".onnx"))
    assert res.exit_code == 2 and "is 305 bytes; a file name can have at most 255" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    legal = tmp_path / ("b" * 250 + ".onnx")
    res = cli("export", "textbook_resnet18", "--input-size", "32", "-o", legal)
    assert res.exit_code == 0, res.stderr
    assert files_in(tmp_path) == [legal.name]
    res = cli("verify", legal, "--random-inputs", "0", "--report", tmp_path / ("c" * 300 + ".json"))
    assert res.exit_code == 2 and "a file name can have at most 255" in res.stderr


def test_a_labels_fifo_is_refused_without_waiting(cli, exported, tmp_path):
    os.mkfifo(tmp_path / "labels.txt")
    res = cli("package", exported("textbook_resnet18").path, "-o", tmp_path / "b", "--labels", tmp_path / "labels.txt")
    assert res.exit_code == 2 and "labels file" in res.stderr and "not a regular file" in res.stderr
    assert files_in(tmp_path) == ["labels.txt"]


def test_the_bundle_swap_holds_signals_until_it_is_done(tmp_path, monkeypatch):
    # a SIGTERM that arrives between moving the old bundle aside and renaming the new one in: it waits
    import signal

    from edgekit.onnxfile.outputs import commit_folder

    final, staged = tmp_path / "b", tmp_path / "staged"
    final.mkdir()
    (final / "old.txt").write_text("old")
    staged.mkdir()
    (staged / "new.txt").write_text("new")
    real_replace, seen = os.replace, []

    def replace(src, dst):
        if not seen:
            seen.append(True)
            os.kill(os.getpid(), signal.SIGTERM)  # mid-swap
        return real_replace(src, dst)

    got = []
    previous = signal.signal(signal.SIGTERM, lambda *_: got.append(final.exists() and (final / "new.txt").exists()))
    monkeypatch.setattr(os, "replace", replace)
    try:
        commit_folder(staged, final)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert got == [True]  # delivered after the swap, which completed
    assert files_in(final) == ["new.txt"] and files_in(tmp_path) == ["b"]


def test_an_operator_onnx_runtime_does_not_know_is_one_line_exit_2(cli, exported, tmp_path):
    model = onnx.load(str(exported("textbook_resnet18", 32).path))
    relu = next(n for n in model.graph.node if n.op_type == "Relu")
    relu.op_type, relu.domain = "Relu6Custom", "com.example"
    model.opset_import.append(onnx.helper.make_opsetid("com.example", 1))
    onnx.save(model, str(tmp_path / "custom.onnx"))
    res = cli("quantize", tmp_path / "custom.onnx", "-o", tmp_path / "c.int8.onnx")
    assert res.exit_code == 2, res.stderr
    assert "com.example:Relu6Custom" in res.stderr and "Traceback" not in res.stderr + res.stdout
    assert len(res.stderr.strip().splitlines()) == 1 and files_in(tmp_path) == ["custom.onnx"]
