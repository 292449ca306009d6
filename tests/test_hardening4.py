"""Hardening, fourth round (issue 29): each bad input through the real CLI in a subprocess under a timeout: its
exit code, one line on stderr, no traceback, no hang, its inputs unchanged, nothing half-written, and no marker
from planted code."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, files_in

EDGEKIT = [sys.executable, "-m", "edgekit"]


def run(*args, env: dict | None = None, timeout: float = 240, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """`edgekit ARGS` as a user runs it; a hang fails the test (TimeoutExpired) instead of blocking it."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([*EDGEKIT, *map(str, args)], capture_output=True, text=True, timeout=timeout, env=full_env,
                          cwd=cwd or ROOT)


def one_line(proc: subprocess.CompletedProcess) -> str:
    """The single line on stderr (asserted: one, and no traceback)."""
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert "Traceback" not in proc.stderr, proc.stderr
    assert len(lines) == 1, proc.stderr
    return lines[0]


def tree(folder: Path) -> dict[str, str]:
    """Every entry under `folder`: regular files by sha256, everything else (links, FIFOs) by what it is."""
    out = {}
    for path in sorted(Path(folder).rglob("*")):
        info = path.lstat()
        key = str(path.relative_to(folder))
        if stat.S_ISREG(info.st_mode):
            out[key] = hashlib.sha256(path.read_bytes()).hexdigest()
        elif stat.S_ISLNK(info.st_mode):
            out[key] = "link:" + os.readlink(path)
        else:
            out[key] = f"mode:{stat.S_IFMT(info.st_mode)}"
    return out


@pytest.fixture(scope="session")
def bundle(exported, tmp_path_factory) -> Path:
    """textbook_resnet18 int8 (7-bit weights: exact on every CPU) at 32 px, packaged (int8: fast under QEMU)."""
    from edgekit.package import package
    from edgekit.quantize import quantize

    folder = tmp_path_factory.mktemp("h4-bundle")
    q = quantize(exported("textbook_resnet18", 32).path, target="x86-avx2", output=folder / "r18.int8.onnx")
    return package(q.path, output=folder / "r18.bundle").folder


def copy_bundle(source: Path, dest: Path) -> Path:
    dest.mkdir()
    for item in source.iterdir():
        (dest / item.name).write_bytes(item.read_bytes())
    return dest


# --- 1. the device check never trusts the bundle ----------------------------------------------------------


FORGED = '''import json, sys
open({marker!r}, "w").write("planted code ran")
print("PASS")
sys.exit(0)
'''


def _zero_weights(model: Path) -> None:
    import numpy as np
    import onnx
    from onnx import numpy_helper

    proto = onnx.load(str(model))
    for init in proto.graph.initializer:
        array = numpy_helper.to_array(init)
        if array.dtype.kind == "f":
            init.CopyFrom(numpy_helper.from_array(np.zeros_like(array), init.name))
    onnx.save(proto, str(model))


def _tamper(bundle: Path, dest: Path, marker: Path, rewrite_manifest: bool) -> Path:
    """A copy whose check.py is forged (writes `marker`, prints PASS) and whose weights are zeroed; with
    `rewrite_manifest`, the manifest is rewritten to match, as an attacker who can edit the whole folder would."""
    forged = copy_bundle(bundle, dest)
    (forged / "check.py").write_text(FORGED.format(marker=str(marker)))
    manifest = json.loads((forged / "manifest.json").read_text())
    _zero_weights(forged / manifest["model"]["file"])
    if rewrite_manifest:
        for name in manifest["files"]:
            manifest["files"][name]["sha256"] = hashlib.sha256((forged / name).read_bytes()).hexdigest()
        (forged / "manifest.json").write_text(json.dumps(manifest))
    return forged


@pytest.mark.slow
@pytest.mark.parametrize("lane", ["avx2", "arm64"])
def test_a_tampered_bundle_fails_on_a_device_and_its_code_never_runs(bundle, tmp_path, lane, request):
    request.getfixturevalue(lane)  # skipped with the reason where the emulator or the sysroot is missing
    device = {"avx2": "x86-avx2", "arm64": "arm64-a76"}[lane]
    pinned = hashlib.sha256((bundle / "manifest.json").read_bytes()).hexdigest()
    marker = tmp_path / "planted-code-ran"

    # check.py and weights changed, the manifest not: sha256 mismatches, nothing run, FAIL
    forged = _tamper(bundle, tmp_path / "forged", marker, rewrite_manifest=False)
    before = tree(forged)
    proc = run("verify", forged, "--device", device, "--expect-manifest", pinned)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "sha256 mismatch" in one_line(proc) and "check.py" in proc.stderr
    assert "PASS\n" not in proc.stdout and not marker.exists()
    assert tree(forged) == before

    # the manifest rewritten to match: --expect-manifest refuses it before anything runs
    rewritten = _tamper(bundle, tmp_path / "rewritten", marker, rewrite_manifest=True)
    before = tree(rewritten)
    proc = run("verify", rewritten, "--device", device, "--expect-manifest", pinned)
    assert proc.returncode == 1 and "not the expected" in one_line(proc)
    assert not marker.exists() and tree(rewritten) == before

    # without the pin, edgekit's own checks run on the zeroed model (never the forged check.py): its gates fail
    proc = run("verify", rewritten, "--device", device, "--json")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    result = json.loads(proc.stdout)
    assert not result["passed"] and result["rows"] and all(r["status"] == "FAIL" for r in result["rows"])
    assert result["cpu"]["device"] == device and not marker.exists() and tree(rewritten) == before


@pytest.mark.slow
def test_an_intact_bundle_passes_on_the_device_with_edgekits_own_code(bundle, avx2, tmp_path):
    before = tree(bundle)
    pinned = hashlib.sha256((bundle / "manifest.json").read_bytes()).hexdigest()
    proc = run("verify", bundle, "--device", "x86-avx2", "--expect-manifest", pinned, "--json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(proc.stdout)
    assert result["passed"] and result["folder"] == str(bundle) and result["cpu"]["machine"] == "x86_64"
    assert any("check.py is for the board" in n for n in result["notes"])
    assert tree(bundle) == before


def test_a_bundle_file_that_is_a_fifo_or_symlink_is_refused_before_the_device_starts(bundle, avx2, tmp_path):
    manifest = json.loads((bundle / "manifest.json").read_text())
    model = manifest["model"]["file"]
    fifo = copy_bundle(bundle, tmp_path / "fifo")
    (fifo / model).unlink()
    os.mkfifo(fifo / model)
    proc = run("verify", fifo, "--device", "x86-avx2", timeout=120)
    assert proc.returncode == 2 and "not a regular file" in one_line(proc)
    linked = copy_bundle(bundle, tmp_path / "linked")
    (linked / model).unlink()
    (linked / model).symlink_to(bundle / model)
    proc = run("verify", linked, "--device", "x86-avx2", timeout=120)
    assert proc.returncode == 2 and "not a symlink" in one_line(proc)


# --- 2. devices ------------------------------------------------------------------------------------------


def _garbage_sysroot(root: Path, content: bytes) -> Path:
    """A devices folder whose arm64 Python is not an aarch64 program."""
    python = root / "arm64" / "sysroot" / "usr" / "bin" / "python3.11"
    python.parent.mkdir(parents=True)
    python.write_bytes(content)
    python.chmod(0o755)
    (root / "arm64" / "site" / "onnxruntime").mkdir(parents=True)
    (root / "arm64" / "device.json").write_text(json.dumps({"onnxruntime": "1.26.0", "numpy": "2.0.0", "python": "3.11"}))
    return root


@pytest.mark.parametrize("content", [b"\x7fELF\x02\x01\x01" + b"\0" * 57, os.urandom(4096)], ids=["truncated", "garbage"])
def test_a_sysroot_whose_python_is_garbage_is_exit_3_everywhere(bundle, exported, tmp_path, content):
    from edgekit.runtimes.devices import find_emulator

    if find_emulator("aarch64") is None:
        pytest.skip("needs qemu-aarch64")
    env = {"EDGEKIT_DEVICES_DIR": str(_garbage_sysroot(tmp_path / "devices", content))}
    before = tree(bundle)
    for args in ([bundle], [exported("textbook_resnet18", 32).path, "--random-inputs", "0"]):
        proc = run("verify", *args, "--device", "arm64-a76", env=env, timeout=120)
        assert proc.returncode == 3, proc.stdout + proc.stderr
        assert "arm64-a76" in one_line(proc)
    assert tree(bundle) == before


def _hanging_emulator(folder: Path) -> Path:
    """A qemu-x86_64 on PATH that says its version and then never answers."""
    folder.mkdir()
    fake = folder / "qemu-x86_64"
    fake.write_text('#!/bin/sh\nif [ "$1" = "--version" ]; then echo "qemu-x86_64 version 10.0.2"; exit 0; fi\n'
                    'exec sleep 600\n')
    fake.chmod(0o755)
    return folder


def test_a_device_that_never_answers_is_given_up(bundle, exported, tmp_path):
    from edgekit.runtimes.devices import DEVICE_TIMEOUT_S, device_status

    if device_status("x86-avx2").mode == "native":
        pytest.skip("this host is an AVX2 CPU itself: nothing is emulated")
    assert DEVICE_TIMEOUT_S <= 180  # the default: given up within 3 minutes
    env = {"PATH": f"{_hanging_emulator(tmp_path / 'bin')}:{os.environ['PATH']}"}
    for args in ([bundle], [exported("textbook_resnet18", 32).path, "--random-inputs", "0"]):
        proc = run("verify", *args, "--device", "x86-avx2", "--device-timeout", "2", env=env, timeout=60)
        assert proc.returncode == 3, proc.stdout + proc.stderr
        line = one_line(proc)
        assert "no answer in 2 s" in line and "--device-timeout" in line


def test_a_devices_facts_file_that_is_a_fifo_never_hangs(tmp_path):
    (tmp_path / "arm64" / "sysroot" / "usr" / "bin").mkdir(parents=True)
    (tmp_path / "arm64" / "site" / "onnxruntime").mkdir(parents=True)
    (tmp_path / "arm64" / "sysroot" / "usr" / "bin" / "python3.11").write_bytes(b"x")
    os.mkfifo(tmp_path / "arm64" / "device.json")
    proc = run("devices", "--json", env={"EDGEKIT_DEVICES_DIR": str(tmp_path)}, timeout=60)
    assert proc.returncode == 0, proc.stderr
    arm = {d["name"]: d for d in json.loads(proc.stdout)["devices"]}["arm64-a76"]
    assert not arm["ready"] and "devices setup arm64" in " ".join(arm["missing"])


def _setup(devices_dir: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    return run("devices", "setup", "arm64", env={"EDGEKIT_DEVICES_DIR": str(devices_dir)}, timeout=120, cwd=tmp_path)


def test_devices_setup_into_a_folder_it_cannot_make_or_write_is_exit_3(tmp_path):
    import shutil

    if shutil.which("debootstrap") is None or shutil.which("qemu-aarch64") is None:
        pytest.skip("needs debootstrap and qemu-aarch64 to get as far as the folder")
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    proc = _setup(blocker / "devices", tmp_path)
    assert proc.returncode == 3 and "cannot make the devices folder" in one_line(proc)
    readonly = tmp_path / "readonly"
    readonly.mkdir()
    readonly.chmod(0o555)
    try:
        if os.access(readonly, os.W_OK):
            pytest.skip("running as root: a read-only folder is writable")
        proc = _setup(readonly, tmp_path)
        assert proc.returncode == 3 and "cannot make the devices folder" in one_line(proc)
        assert files_in(readonly) == []
    finally:
        readonly.chmod(0o755)


def test_devices_setup_on_a_full_disk_is_exit_3_and_leaves_no_staging_folder(tmp_path, monkeypatch):
    import errno

    from typer.testing import CliRunner

    import edgekit.runtimes.sysroot as sysroot
    from edgekit.cli import app

    def full(argv, what, *args, **kwargs):
        Path(argv[-2] if what == "debootstrap" else tmp_path / "x").mkdir(parents=True, exist_ok=True)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setenv("EDGEKIT_DEVICES_DIR", str(tmp_path / "devices"))
    monkeypatch.setattr(sysroot, "check_tools", lambda version: "qemu-aarch64")
    monkeypatch.setattr(sysroot, "debian_mirror", lambda: "http://deb.debian.org/debian")
    monkeypatch.setattr(sysroot, "_run", full)
    res = CliRunner().invoke(app, ["devices", "setup", "arm64"])
    assert res.exit_code == 3, res.output
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "No space left on device" in lines[0]
    assert files_in(tmp_path / "devices") == []


# --- 3. round three's leftovers: package -o and --images ---------------------------------------------------


def test_package_into_a_folder_whose_manifest_is_a_fifo_is_refused_not_waited_on(bundle, tmp_path):
    model = bundle.parent / "r18.int8.onnx"
    out = tmp_path / "out"
    out.mkdir()
    os.mkfifo(out / "manifest.json")
    before = tree(out)
    proc = run("package", model, "-o", out, timeout=60)
    assert proc.returncode == 2 and "not an edgekit bundle" in one_line(proc)
    assert tree(out) == before


def test_package_under_a_symlink_loop_is_one_line(bundle, tmp_path):
    model = bundle.parent / "r18.int8.onnx"
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    for out in (tmp_path / "a", tmp_path / "a" / "bundle"):
        proc = run("package", model, "-o", out, timeout=60)
        assert proc.returncode == 2 and "symlink loop" in one_line(proc)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]


def test_package_images_with_a_decompression_bomb_names_and_skips_it(bundle, tmp_path):
    from PIL import Image

    model = bundle.parent / "r18.int8.onnx"
    images = tmp_path / "images"
    images.mkdir()
    Image.new("L", (20000, 20000)).save(images / "bomb.png")  # 400 Mpixel, 400 kB on disk
    Image.new("RGB", (48, 48), (200, 30, 30)).save(images / "red.png")
    before = tree(images)
    proc = run("package", model, "-o", tmp_path / "b.bundle", "--images", images, "--json", timeout=180)
    assert proc.returncode == 0, proc.stderr
    notes = json.loads(proc.stdout)["notes"]
    assert any("bomb.png" in n and "too large to decode safely" in n for n in notes), notes
    assert "Traceback" not in proc.stderr and tree(images) == before
