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
def bundle(exported, calibration_npz, tmp_path_factory) -> Path:
    """textbook_resnet18 int8 (7-bit weights: exact on every CPU) at 32 px, packaged (int8: fast under QEMU;
    calibrated from a .npz of the photos, it meets its budget with every group in int8 and no fallback search)."""
    from edgekit.package import package
    from edgekit.quantize import quantize

    folder = tmp_path_factory.mktemp("h4-bundle")
    q = quantize(exported("textbook_resnet18", 32).path, target="x86-avx2", calibration=calibration_npz(32),
                 output=folder / "r18.int8.onnx")
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
        if not os.access(readonly, os.W_OK):  # as root a read-only folder is writable: that case cannot be made
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


@pytest.mark.slow
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


# --- 4-7. the sweep: outputs never on inputs, refusals before the first write, caches, signals, Ray ------------


def _netns_prefix() -> list[str]:
    """Run under `unshare -n` with only loopback up, as tests/test_sweep.py does, where that is possible."""
    import shutil as sh

    if not sh.which("unshare") or not sh.which("ip"):
        return []
    probe = subprocess.run(["unshare", "-n", "sh", "-c", "ip link set lo up"], capture_output=True, text=True)
    return ["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$0" "$@"'] if probe.returncode == 0 else []


def sweep(*args, env: dict | None = None, timeout: float = 400) -> subprocess.CompletedProcess:
    argv = [*_netns_prefix(), *EDGEKIT, "sweep", *map(str, args)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})},
                          cwd=ROOT)


@pytest.fixture
def labelled(tmp_path) -> Path:
    """3 classes of 2 real photos, one corrupt image and one symlink loop among them."""
    from tests.conftest import CALIBRATION

    root = tmp_path / "labelled"
    photos = sorted(p for p in CALIBRATION.iterdir() if p.suffix in (".jpg", ".png"))[:6]
    for i, photo in enumerate(photos):
        (root / f"class{i % 3}").mkdir(parents=True, exist_ok=True)
        (root / f"class{i % 3}" / photo.name).write_bytes(photo.read_bytes())
    (root / "class0" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg" * 50)
    (root / "class1" / "loop.jpg").symlink_to("loop.jpg")
    return root


def test_sweep_output_on_its_inputs_and_bad_options_are_refused_before_any_write(labelled, tmp_path, cli):
    pytest.importorskip("ray")
    (tmp_path / "wdir").mkdir()
    weights = tmp_path / "wdir" / "w.safetensors"
    weights.write_bytes(b"not read: refused first")
    calibration = tmp_path / "calib"
    calibration.mkdir()
    (calibration / "a.jpg").write_bytes((labelled / "class2").iterdir().__next__().read_bytes())
    (tmp_path / "link").symlink_to(labelled)
    before = {p: tree(p) for p in (labelled, calibration)}
    base = ["sweep", "--models", "textbook_densenet", "--input-size", "32", "--dataset", labelled,
            "--calibration", calibration]
    cases = {
        "is the --dataset": [labelled],
        "is the --calibration": [calibration],
        "inside the --dataset": [labelled / "class0"],
        "inside the --calibration": [calibration / "sweep"],
        "holds the --dataset": [tmp_path],
        "is the --dataset (through a symlink)": [tmp_path / "link"],
    }
    for why, out in cases.items():
        res = cli(*base, "-o", *out)
        lines = [line for line in res.stderr.splitlines() if line.strip()]
        assert res.exit_code == 2 and len(lines) == 1, (why, res.stderr)
        assert why.split(" (")[0] in lines[0], (why, lines[0])
    res = cli(*base, "--weights", f"textbook_densenet={weights}", "-o", tmp_path / "wdir" / "sub" / "..")
    assert res.exit_code == 2 and "holds the --weights" in res.stderr
    # --workers 0: refused before sweep.yaml or jobs/ exist
    proc = sweep("--models", "textbook_densenet", "--input-size", 32, "--dataset", labelled, "--workers", 0,
                 "-o", tmp_path / "w0", timeout=120)
    assert proc.returncode == 2 and "--workers must be 1 to 1024" in one_line(proc)
    assert not (tmp_path / "w0").exists()
    assert {p: tree(p) for p in (labelled, calibration)} == before


def test_sweep_environment_problems_are_exit_3_before_any_write(labelled, tmp_path):
    import socket
    import time

    pytest.importorskip("ray")
    home = tmp_path / "home-is-a-file"
    home.write_text("")
    temp = tmp_path / "tmpdir-is-a-file"
    temp.write_text("")
    with socket.socket() as s:  # a loopback port where nothing listens
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    base = ["--models", "textbook_densenet", "--input-size", 32, "--dataset", labelled]
    for env, extra, expected in (({"HOME": str(home)}, [], "HOME"), ({"TMPDIR": str(temp)}, [], "temp folder"),
                                 ({}, ["--address", f"127.0.0.1:{port}"], "cannot be reached")):
        out = tmp_path / f"out-{expected.split()[0]}"
        started = time.monotonic()
        proc = subprocess.run([*EDGEKIT, "sweep", *map(str, base + extra), "-o", str(out)], capture_output=True,
                              text=True, timeout=120, env={**os.environ, **env}, cwd=ROOT)
        assert proc.returncode == 3, proc.stderr
        assert expected in one_line(proc) and not out.exists()
        assert time.monotonic() - started < 30  # an unreachable --address: given up before any export or Ray


@pytest.mark.slow
def test_sweep_names_bad_images_and_recomputes_damaged_caches(labelled, tmp_path):
    """One sweep, then its caches damaged three ways (a row with wrong types, an fp32 entry without its
    predictions, a ranges entry that is JSON but not ranges): the re-run says each in one line and computes it
    again; nothing is fatal, nothing is trusted."""
    pytest.importorskip("ray")
    out = tmp_path / "sweep"
    args = ["--models", "textbook_densenet", "--targets", "x86-avx2", "--samples", 8, "--input-size", 32,
            "--dataset", labelled, "--no-latency", "--workers", 2, "-o", out, "--json"]
    before = tree(labelled)
    first = sweep(*args)
    assert first.returncode == 0, first.stderr[-2000:]
    assert "Traceback" not in first.stderr
    assert "corrupt.jpg" in first.stderr and "loop.jpg (a symlink loop)" in first.stderr
    for path in (out / "jobs").glob("*.json"):
        entry = json.loads(path.read_text())
        if "predictions" in entry:
            del entry["predictions"]
        else:
            entry["samples"], entry["int8_top1"] = "eight", None
        path.write_text(json.dumps(entry))
    for path in (out / "calibration").glob("*.json"):
        path.write_text(json.dumps({"CLS": "TensorsData", "data": {"x": [1, 2]}}))
    second = sweep(*args)
    assert second.returncode == 0, second.stderr[-2000:]
    notes = [line for line in second.stderr.splitlines() if line.startswith("note:")]
    assert any("it has no predictions; computed again" in n for n in notes), notes
    assert any("its samples is str, not int; computed again" in n for n in notes), notes
    assert any("is not ONNX Runtime's activation ranges" in n for n in notes), notes
    rows = json.loads(second.stdout)["rows"]
    assert [r["status"] for r in rows] == ["ok"] and not rows[0]["cached"]
    assert tree(labelled) == before


@pytest.mark.slow
def test_sigterm_during_a_sweep_keeps_the_finished_rows_and_leaves_no_ray(labelled, tmp_path, request):
    import signal
    import time

    pytest.importorskip("ray")
    out = tmp_path / "sweep"
    import shutil as sh
    import tempfile

    ray_tmp = Path(tempfile.mkdtemp(prefix="ek-ray-", dir="/tmp"))  # short: Ray's socket paths must fit 107 bytes
    request.addfinalizer(lambda: sh.rmtree(ray_tmp, ignore_errors=True))
    faults = {"stall": "textbook_resnext", "marker_dir": str(tmp_path)}  # resnext's job still runs at SIGTERM
    args = ["sweep", "--models", "textbook_densenet,textbook_resnext", "--targets", "x86-avx2", "--samples", "8",
            "--input-size", "32", "--dataset", str(labelled), "--no-latency", "--workers", "2", "-o", str(out)]
    from tests.sweep_faults import COMMAND, environment  # the faults live in tests/, not in edgekit

    proc = subprocess.Popen([*_netns_prefix(), *COMMAND, *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **environment(faults), "RAY_TMPDIR": str(ray_tmp)})
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            entries = [json.loads(p.read_text()) for p in (out / "jobs").glob("*.json")] if (out / "jobs").is_dir() else []
            if any(e.get("model") == "textbook_densenet" for e in entries):
                break
            time.sleep(0.5)
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, stderr[-2000:]
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("terminated: 1 of 2 rows finished"), stderr[-2000:]
    saved = json.loads((out / "results.json").read_text())
    assert saved["interrupted"] is True
    assert {r["model"]: r["status"] for r in saved["rows"]} == {"textbook_densenet": "ok", "textbook_resnext": "interrupted"}
    time.sleep(2)
    left = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if str(ray_tmp).encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                left.append(pid)
        except OSError:
            pass
    assert left == [], "Ray processes left running"


@pytest.mark.slow
def test_verify_dataset_names_each_corrupt_image_and_symlink_loop(exported, labelled):
    before = tree(labelled)
    proc = run("verify", exported("textbook_resnet18", 32).path, "--dataset", labelled, "--random-inputs", 0,
               timeout=300)
    assert proc.returncode in (0, 1) and "Traceback" not in proc.stderr, proc.stderr
    said = " ".join((proc.stdout + proc.stderr).split())
    assert "corrupt.jpg (cannot decode" in said and "loop.jpg (a symlink loop)" in said
    assert tree(labelled) == before
