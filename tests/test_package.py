"""`edgekit package`: a bundle that verifies itself with numpy + onnxruntime only (no torch, no edgekit),
fails on a tampered file, carries an .ort that matches, stays small, and is written atomically."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from edgekit.ondevice import metrics as bundle_metrics
from edgekit.ondevice import BUNDLE_SCRIPTS, script_path
from edgekit.judge.compare import DEFAULT_TOLERANCES, compare_outputs
from edgekit.core.errors import BadInput, CheckFailed
from tests.conftest import CALIBRATION, files_in

# Runs check.py the way a device would: torch, torchvision and edgekit cannot be imported (a meta-path
# finder refuses them before any other finder, editable installs included), the working directory is
# elsewhere, and nothing of the test process's environment that names CPUs is inherited.
DEVICE_BOOTSTRAP = """
import runpy, sys
class NoTorchNoEdgekit:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('torch', 'torchvision', 'edgekit'):
            raise ImportError(f'{name} is not installed on the device')
        return None
sys.meta_path.insert(0, NoTorchNoEdgekit())
script, sys.argv = sys.argv[1], sys.argv[1:]
runpy.run_path(script, run_name='__main__')
"""


def _importable(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


HAS_OPENVINO = _importable("openvino")
# Boards made by scripts/emulators.sh: numpy + onnxruntime only, and numpy + onnxruntime + Pillow + openvino only.
ORT_BOX = Path(os.environ.get("EDGEKIT_SSH_BOX") or Path.home() / ".cache" / "edgekit" / "ssh-box") / "bin" / "python"
OPENVINO_BOX = Path(os.environ.get("EDGEKIT_OPENVINO_BOX") or Path.home() / ".cache" / "edgekit" / "openvino-box") / "bin" / "python"


def device_env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EDGEKIT_", "PYTHONPATH"))}
    env["OMP_NUM_THREADS"] = "1"
    return env


def run_on_device(script: Path, *args, cwd: Path, device=None) -> subprocess.CompletedProcess:
    """check.py as a device runs it; `device` (a runtimes.devices.DeviceStatus, e.g. the avx2 fixture) runs it
    on that CPU's arithmetic, under QEMU where the device is emulated."""
    launcher = list(device.command) if device is not None else []
    return subprocess.run(
        [*launcher, sys.executable, "-c", DEVICE_BOOTSTRAP, str(script), *map(str, args)],
        capture_output=True, text=True, cwd=cwd, env=device_env(), timeout=600,
    )


def clone(bundle: Path, dest: Path, copy: tuple[str, ...] = ()) -> Path:
    """A copy of a bundle: hard links, except real copies of the files a test will modify."""
    dest.mkdir()
    for item in bundle.iterdir():
        (shutil.copyfile if item.name in copy else os.link)(item, dest / item.name)
    return dest


@pytest.fixture(scope="session")
def labels_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("labels") / "labels.txt"
    path.write_text("".join(f"label-{i}\n" for i in range(10)))  # the textbook models have 10 classes
    return path


@pytest.fixture(scope="session")
def fp32_bundle(exported, tmp_path_factory, labels_file):
    """textbook_resnet18 fp32 (64 px: the size its int8 file passes its gates at), packaged through the CLI (--json)."""
    from typer.testing import CliRunner

    from edgekit.cli import app

    out = tmp_path_factory.mktemp("fp32") / "r18.bundle"
    both = ["--runtimes", "ort,openvino"] if HAS_OPENVINO else []  # its check.py runs OpenVINO too, where installed
    result = CliRunner().invoke(
        app, ["package", str(exported("textbook_resnet18").path), "-o", str(out), "--labels", str(labels_file), "--json",
              *both],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    return out, json.loads(result.stdout)


@pytest.fixture(scope="session")
def int8_bundle(exported, tmp_path_factory):
    """The same model quantized with 8-bit weights (x86-vnni: it needs x64quantprecision on AVX2), packaged."""
    from edgekit.package import package
    from edgekit.quantize import quantize

    folder = tmp_path_factory.mktemp("int8")
    q = quantize(exported("textbook_resnet18").path, target="x86-vnni", output=folder / "r18.int8.onnx")
    return package(q.path, output=folder / "r18.int8.bundle")


@pytest.fixture(scope="session")
def int8_7bit_bundle(exported, tmp_path_factory):
    """The same model with 7-bit weights (x86-avx2: exact on every x86 CPU, no session option), packaged."""
    from edgekit.package import package
    from edgekit.quantize import quantize

    folder = tmp_path_factory.mktemp("int8-7bit")
    q = quantize(exported("textbook_resnet18").path, target="x86-avx2", output=folder / "r18.avx2.int8.onnx")
    return package(q.path, output=folder / "r18.avx2.int8.bundle")


def test_fp32_bundle_passes_on_a_device_without_torch_or_edgekit(fp32_bundle, tmp_path):
    folder, result = fp32_bundle
    proc = run_on_device(folder / "check.py", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[-1] == "PASS"
    assert any(line.startswith("onnx ") and line.rstrip().endswith("PASS") for line in lines)
    assert any(line.startswith("ort ") and line.rstrip().endswith("PASS") for line in lines)
    listed = 6 + len(BUNDLE_SCRIPTS)  # the models, manifest-listed data and reports, check.py and its modules
    assert f"checksums: {listed}/{listed} files match the manifest" in proc.stdout
    # the guard is real: the same bootstrap cannot import edgekit or torch
    probe = tmp_path / "probe.py"
    probe.write_text("import edgekit\n")
    assert run_on_device(probe, cwd=tmp_path).returncode != 0
    probe.write_text("import torch\n")
    assert "not installed on the device" in run_on_device(probe, cwd=tmp_path).stderr
    # the CLI's JSON: contents, sizes, the overhead and the packaging-time check
    names = {f["name"] for f in result["files"]}
    assert names == {Path(result["source"]).name, Path(result["source"]).stem + ".ort",
                     "manifest.json", "golden.npz", "README.txt",
                     "mobile_usability.txt", "required_operators.config", *BUNDLE_SCRIPTS}
    assert result["check"]["passed"] and {r["format"] for r in result["check"]["rows"]} == {"onnx", "ort"}
    assert 0 < result["overhead_fraction"] < 0.10 and result["overhead_budget"] == 0.10
    assert result["golden_samples"] == 8


def test_manifest_describes_the_model_for_the_device(fp32_bundle, labels_file):
    folder, _ = fp32_bundle
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["inputs"] == [{"name": "input", "shape": [1, 3, 64, 64], "dtype": "float32"}]
    assert manifest["outputs"][0]["shape"] == [1, 10]
    assert manifest["classes"] == {"count": 10, "labels": labels_file.read_text().split()}
    assert manifest["precision"] == "fp32" and manifest["recipe"] is None and manifest["session_options"] == {}
    gates = {k: v for k, v in manifest["gates"].items() if k != "source"}
    assert gates == DEFAULT_TOLERANCES["fp32"].to_dict()
    pre = manifest["preprocessing"]
    assert pre["crop"] == 64 and "centre crop 64" in pre["describe"]
    assert set(manifest["files"]) == {p.name for p in folder.iterdir()} - {"manifest.json"}
    assert {"edgekit", "torch", "onnxruntime"} <= set(manifest["versions"])
    mobile = manifest["mobile_usability"]
    assert mobile["available"] and set(mobile["eps"]) == {"NNAPI", "CoreML NeuralNetwork", "CoreML MLProgram"}
    assert all(e["partitions"] >= 0 and e["suitability"] in ("YES", "MAYBE", "NO") for e in mobile["eps"].values())
    assert "NNAPI" in (folder / "mobile_usability.txt").read_text()
    ops = (folder / "required_operators.config").read_text()
    assert "Conv" in ops and "/tmp" not in ops
    # golden data: uint8 pixels, normalised by check.py's own function, reference outputs beside them
    with np.load(folder / "golden.npz") as golden:
        assert golden["images"].dtype == np.uint8 and golden["images"].shape == (8, 3, 64, 64)
        assert golden["outputs"].shape == (8, 10) and golden["outputs"].dtype == np.float32
    assert len((folder / "README.txt").read_text().splitlines()) <= 12


def test_int8_bundle_passes_and_applies_the_session_options_a_cpu_without_vnni_needs(int8_bundle, tmp_path):
    folder = int8_bundle.folder
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["precision"] == "int8" and manifest["recipe"]["target"] == "x86-vnni"
    assert manifest["session_options"] == {"x86 without VNNI": {"session.x64quantprecision": "1"}}
    assert manifest["gates"]["min_sqnr_db"] == DEFAULT_TOLERANCES["int8"].min_sqnr_db
    avx2 = run_on_device(folder / "check.py", "--cpu-flags", "avx2 fma", "--json", cwd=tmp_path)
    assert avx2.returncode == 0, avx2.stdout + avx2.stderr
    report = json.loads(avx2.stdout)
    assert report["session_options"] == {"session.x64quantprecision": "1"}
    assert any("x86 without VNNI" in n and "x64quantprecision=1" in n for n in report["notes"])
    assert all(r["status"] == "PASS" and r["session_options"] for r in report["rows"])
    vnni = json.loads(run_on_device(folder / "check.py", "--cpu-flags", "avx2 avx512_vnni", "--json", cwd=tmp_path).stdout)
    assert vnni["session_options"] == {} and vnni["passed"]


def test_ort_format_loads_and_matches_the_onnx(int8_7bit_bundle, fp32_bundle):
    # Formats that need no per-CPU session option: the .ort is the .onnx's graph, bit for bit in its outputs
    # on this CPU (whichever kind it is: 7-bit weights do not saturate anywhere).
    from edgekit.package import check_bundle

    for folder in (int8_7bit_bundle.folder, fp32_bundle[0]):
        ort_file = next(folder.glob("*.ort"))
        assert ort_file.read_bytes()[4:8] == b"ORTM"  # the ORT format's flatbuffer identifier
        check = check_bundle(folder)
        assert check.passed and check.exit_code == 0
        rows = {r["format"]: r for r in check.rows}
        assert rows["ort"]["status"] == rows["onnx"]["status"] == "PASS"
        assert rows["ort"]["vs_onnx_max_abs"] <= 1e-4  # within FORMAT_NOISE of the outputs' peak, or check fails
    assert check.precision == "fp32" and rows["ort"]["metrics"]["max_abs"] <= 1e-4


def test_an_8_bit_bundle_holds_no_ort_and_says_why(int8_bundle):
    # Its .onnx needs session.x64quantprecision=1 on AVX2 CPUs, which an .ort (optimised on the packaging
    # machine) cannot honour: measured on an AVX2 CPU, such an .ort read 11.5 dB against the .onnx's 22.4 dB.
    folder = int8_bundle.folder
    manifest = json.loads((folder / "manifest.json").read_text())
    assert list(folder.glob("*.ort")) == [] and manifest["model"]["ort_file"] is None
    assert "x86 without VNNI" in manifest["ort_format"]["left_out"] and "use the .onnx" in manifest["ort_format"]["left_out"]
    assert "required_operators.config" not in manifest["files"]
    assert any(n.startswith("no .ort:") for n in int8_bundle.notes)
    assert "No .ort:" in (folder / "README.txt").read_text()


def test_an_8_bit_bundle_checked_on_an_avx2_cpu_passes_with_its_session_option(int8_bundle, avx2, tmp_path):
    # check.py as an AVX2 CPU without VNNI runs it (natively, or emulated on a VNNI host). The device's
    # /proc/cpuinfo is not emulated, so its flags are given; the arithmetic is the AVX2 CPU's own.
    folder = int8_bundle.folder
    flags = ("--cpu-flags", "avx2 fma")
    ok = run_on_device(folder / "check.py", *flags, "--json", cwd=tmp_path, device=avx2)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    report = json.loads(ok.stdout)
    assert report["session_options"] == {"session.x64quantprecision": "1"}
    assert [r["format"] for r in report["rows"]] == ["onnx"]  # every format in the bundle, and only the .onnx
    assert any(n.startswith("no .ort in this bundle") for n in report["notes"])
    # the same CPU without the manifest's option saturates: the option is what makes the file right there
    raw = json.loads(run_on_device(folder / "check.py", *flags, "--json", "--no-session-options", cwd=tmp_path,
                                   device=avx2).stdout)
    exact_db, default_db = report["rows"][0]["metrics"]["sqnr_db"], raw["rows"][0]["metrics"]["sqnr_db"]
    assert exact_db - default_db > 3, (exact_db, default_db)


def test_an_ort_that_computes_differently_from_the_onnx_fails(int8_bundle, avx2, tmp_path):
    # The bundle issue 18 found: an 8-bit file's .ort beside its .onnx. On an AVX2 CPU the .onnx gets
    # x64quantprecision=1 and the .ort cannot; check.py must FAIL it, whatever the loose random-weight gates say.
    from edgekit.package.ort_tools import convert_to_ort

    bundle = clone(int8_bundle.folder, tmp_path / "b", copy=("manifest.json",))
    manifest = json.loads((bundle / "manifest.json").read_text())
    onnx_name = manifest["model"]["file"]
    work = tmp_path / "convert"
    work.mkdir()
    ort_tmp, _config = convert_to_ort([bundle / onnx_name], work, arm=False)
    ort_name = onnx_name[: -len(".onnx")] + ".ort"
    shutil.copyfile(ort_tmp, bundle / ort_name)
    manifest["model"]["ort_file"] = ort_name
    manifest["files"][ort_name] = {"sha256": bundle_metrics.sha256_file(bundle / ort_name), "bytes": 0, "model": True}
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    proc = run_on_device(bundle / "check.py", "--cpu-flags", "avx2 fma", "--json", cwd=tmp_path, device=avx2)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    rows = {r["format"]: r for r in json.loads(proc.stdout)["rows"]}
    assert rows["onnx"]["status"] == "PASS" and rows["ort"]["status"] == "FAIL"
    assert any("computes" in f and "away from the .onnx" in f for f in rows["ort"]["failures"])


def test_a_tampered_weight_fails_naming_the_checksum(int8_bundle, tmp_path):
    src = int8_bundle.folder
    onnx_name = next(p.name for p in src.glob("*.onnx"))
    bundle = clone(src, tmp_path / "b", copy=(onnx_name,))
    model = onnx.load(str(bundle / onnx_name))
    weight = max(model.graph.initializer, key=lambda t: len(t.raw_data)).raw_data
    data = bytearray((bundle / onnx_name).read_bytes())
    at = data.find(weight) + len(weight) // 2
    data[at] ^= 0x5A
    (bundle / onnx_name).write_bytes(bytes(data))
    proc = run_on_device(bundle / "check.py", cwd=tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert f"sha256 mismatch: {onnx_name}" in proc.stdout
    assert proc.stdout.splitlines()[-1].startswith("FAIL")


def test_a_tampered_manifest_checksum_fails_with_the_reason(int8_bundle, tmp_path):
    bundle = clone(int8_bundle.folder, tmp_path / "b", copy=("manifest.json",))
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["files"]["golden.npz"]["sha256"] = "0" * 64
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    proc = run_on_device(bundle / "check.py", cwd=tmp_path)
    assert proc.returncode == 1
    assert "sha256 mismatch: golden.npz" in proc.stdout and "the manifest says 0000000000000000" in proc.stdout
    # the models themselves still pass: the table says which check failed (one format: the .onnx)
    assert sum(line.rstrip().endswith("PASS") for line in proc.stdout.splitlines()) == 1


def test_a_broken_bundle_is_exit_2(int8_bundle, tmp_path):
    from edgekit.package import check_bundle

    bundle = clone(int8_bundle.folder, tmp_path / "b")
    (bundle / "golden.npz").unlink()
    proc = run_on_device(bundle / "check.py", cwd=tmp_path)
    assert proc.returncode == 2 and "golden.npz is listed in the manifest but missing" in proc.stderr
    with pytest.raises(BadInput, match="broken bundle"):
        check_bundle(bundle)
    (bundle / "manifest.json").unlink()
    assert run_on_device(bundle / "check.py", cwd=tmp_path).returncode == 2


def test_image_mode_prints_the_top5_with_labels(fp32_bundle, tmp_path):
    folder, _ = fp32_bundle
    proc = run_on_device(folder / "check.py", "--image", CALIBRATION / "chelsea.jpg", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    ranked = [line for line in proc.stdout.splitlines() if line[:2] in {f"{i}." for i in range(1, 6)}]
    assert len(ranked) == 5 and all("label-" in line for line in ranked)
    assert "centre crop 64" in proc.stdout
    # the same top-1 as the model on the golden tensor edgekit made from this photo (same pixels, same steps)
    data = json.loads(run_on_device(folder / "check.py", "--image", CALIBRATION / "chelsea.jpg", "--json",
                                    cwd=tmp_path).stdout)
    manifest = json.loads((folder / "manifest.json").read_text())
    with np.load(folder / "golden.npz") as golden:
        row = manifest["golden"]["images"].index("chelsea.jpg")
        assert data["top5"][0]["class"] == int(np.argmax(golden["outputs"][row]))


def test_bundle_metrics_are_edgekits_metric_core(fp32_bundle):
    folder, _ = fp32_bundle
    for name in BUNDLE_SCRIPTS:  # check.py and every device-side module it imports: edgekit's own bytes
        assert (folder / name).read_bytes() == script_path(name).read_bytes(), name
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((6, 10))
    cand = ref + rng.standard_normal(ref.shape) * 0.05
    tol = DEFAULT_TOLERANCES["int8"]
    m = compare_outputs(ref, cand, "logits", tol)
    core = bundle_metrics.output_metrics(ref, cand, tol.atol, tol.rtol)
    assert {k: getattr(m, k) for k in core} == core
    assert m.failures == bundle_metrics.gate_failures(core, tol.to_dict())


def test_bad_input_is_exit_2_and_leaves_nothing(cli, exported, tmp_path):
    text = tmp_path / "model.txt"
    text.write_text("not a model")
    out = tmp_path / "out"
    result = cli("package", text, "-o", out / "b")
    assert result.exit_code == 2 and "not an .onnx file" in result.stderr
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x00\x01garbage" * 10)
    assert cli("package", garbage, "-o", out / "b").exit_code == 2
    labels = tmp_path / "labels.txt"
    labels.write_text("cat\ndog\n")
    result = cli("package", exported("textbook_resnet18").path, "-o", out / "b", "--labels", labels)
    assert result.exit_code == 2 and "2 labels but the model has 10 classes" in result.stderr
    for runtimes, message in (("ort,tflite", "unknown runtime 'tflite'"), ("openvino", "always checked in ONNX Runtime")):
        result = cli("package", exported("textbook_resnet18").path, "-o", out / "b", "--runtimes", runtimes)
        if HAS_OPENVINO or runtimes != "openvino":  # without OpenVINO, naming it is exit 3 before anything else
            assert result.exit_code == 2 and message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert files_in(out) == []
    # an existing folder that is not a bundle is never replaced
    (out / "mine").mkdir(parents=True)
    (out / "mine" / "notes.txt").write_text("keep me")
    result = cli("package", exported("textbook_resnet18").path, "-o", out / "mine")
    assert result.exit_code == 2 and "not an edgekit bundle" in result.stderr
    assert files_in(out / "mine") == ["notes.txt"] and files_in(out) == ["mine"]


def test_a_failure_midway_leaves_nothing_and_keeps_the_old_bundle(int8_7bit_bundle, tmp_path, monkeypatch):
    import edgekit.package as package_module
    import edgekit.package.ort_format as ort_format

    source = next(int8_7bit_bundle.folder.glob("*.onnx"))  # a file whose bundle holds an .ort
    dest = clone(int8_7bit_bundle.folder, tmp_path / "old.bundle")
    before = files_in(dest)

    def broken(*_args, **_kwargs):
        raise CheckFailed("converting to the ORT format failed: simulated")

    monkeypatch.setattr(ort_format, "convert_to_ort", broken)
    with pytest.raises(CheckFailed, match="simulated"):
        package_module.package(source, output=dest)
    assert files_in(tmp_path) == ["old.bundle"] and files_in(dest) == before


def test_golden_count_is_cut_to_the_overhead_budget():
    from edgekit.package import golden_within_budget

    # 10 MB of model files, 40 KB of scripts and manifest, 8 photos of 150 KB: 1.24 MB > 1 MB
    assert golden_within_budget(8, 8 * 150_000, 40_000, 10_000_000, 0.10) == 6
    assert golden_within_budget(8, 8 * 100_000, 40_000, 10_000_000, 0.10) == 8
    assert golden_within_budget(8, 8 * 150_000, 2_000_000, 10_000_000, 0.10) == 1  # never fewer than one


def test_the_table_lists_contents_sizes_and_the_overhead(int8_bundle, capsys):
    from edgekit.cli.package_cmd import render_package

    render_package(int8_bundle)
    out = capsys.readouterr().out
    for name in ("r18.int8.onnx", "golden.npz", "manifest.json", "check.py"):
        assert name in out
    assert "r18.int8.ort" not in out
    assert f"{int8_bundle.overhead_fraction:.1%} of the model files" in out
    assert "session.x64quantprecision=1" in out and "NNAPI" in out and "PASS" in out


def test_manifest_records_which_runtimes_passed(fp32_bundle):
    folder, _result = fp32_bundle
    runtimes = json.loads((folder / "manifest.json").read_text())["runtimes"]
    assert runtimes["onnxruntime"]["passed"] is True
    openvino = runtimes["openvino"]
    if openvino["available"]:
        assert openvino["passed"] is True and openvino["executed"] and openvino["sqnr_db"] > 30
    else:
        assert "pip install" in openvino["reason"]


def test_verify_bundle_runs_its_check_inside_the_device(cli, int8_bundle, avx2, tmp_path):
    # `edgekit verify BUNDLE/ --device x86-avx2`: the bundle's own check.py on that CPU's arithmetic
    res = cli("verify", int8_bundle.folder, "--device", "x86-avx2", "--json")
    assert res.exit_code == 0, res.stdout + res.stderr
    result = json.loads(res.stdout)
    assert result["session_options"] == {"session.x64quantprecision": "1"} and result["passed"]
    assert result["cpu"]["device"] == "x86-avx2" and result["cpu"]["device_mode"] == avx2.mode


def test_check_py_inside_an_emulated_arm64_board(cli, int8_7bit_bundle, arm64, tmp_path):
    # The ARM64 board runs the bundle as it would on a Raspberry Pi 5: its own Python, numpy and onnxruntime
    # for aarch64, under qemu-aarch64 -cpu cortex-a76. ARM accumulates exactly, and no x86 option applies.
    res = cli("verify", int8_7bit_bundle.folder, "--device", "arm64-a76", "--json")
    assert res.exit_code == 0, res.stdout + res.stderr
    result = json.loads(res.stdout)
    assert result["cpu"]["machine"] == "aarch64" and result["session_options"] == {} and result["passed"]
    rows = {r["format"]: r for r in result["rows"]}
    assert set(rows) == {"onnx", "ort"} and rows["ort"]["vs_onnx_max_abs"] <= 1e-4


# --- the bundle as untrusted input (issue 22): check.py trusts nothing it has not verified --------------


def _rewrite_manifest(bundle: Path, change) -> None:
    manifest = json.loads((bundle / "manifest.json").read_text())
    change(manifest)
    (bundle / "manifest.json").write_text(json.dumps(manifest))


def test_edited_weights_and_an_edited_metrics_py_still_fail(int8_7bit_bundle, tmp_path):
    # metrics.py once computed every checksum: edited to agree with edited weights, it passed them. check.py
    # now hashes with hashlib itself and imports metrics.py only when its bytes match the manifest.
    bundle = clone(int8_7bit_bundle.folder, tmp_path / "b", copy=("metrics.py",))
    with open(bundle / "metrics.py", "a") as f:
        f.write("\ndef sha256_file(path):\n    return 'forged'\n")
    proc = run_on_device(bundle / "check.py", cwd=tmp_path, device=None)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert proc.stdout.startswith("FAIL: sha256 mismatch: metrics.py") and "not imported" in proc.stdout
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("victim", ["onnx", "ort", "golden.npz"])
def test_each_tampered_file_is_caught_by_check_py_and_by_verify(cli, int8_7bit_bundle, tmp_path, victim):
    src = int8_7bit_bundle.folder
    name = next(p.name for p in src.glob(f"*.{victim}")) if victim in ("onnx", "ort") else victim
    bundle = clone(src, tmp_path / "b", copy=(name,))
    data = bytearray((bundle / name).read_bytes())
    data[len(data) // 2] ^= 0x5A
    (bundle / name).write_bytes(bytes(data))
    proc = run_on_device(bundle / "check.py", cwd=tmp_path)
    assert proc.returncode in (1, 2), proc.stdout + proc.stderr
    assert f"sha256 mismatch: {name}" in proc.stdout or "golden" in proc.stderr
    res = cli("verify", bundle)
    assert res.exit_code in (1, 2) and "Traceback" not in res.stderr


def test_a_loosened_manifest_is_caught_only_by_its_pinned_sha256(cli, int8_7bit_bundle, tmp_path):
    pinned = int8_7bit_bundle.manifest_sha256
    assert pinned == bundle_metrics.sha256_file(int8_7bit_bundle.folder / "manifest.json")
    ok = run_on_device(int8_7bit_bundle.folder / "check.py", "--expect-manifest", pinned, cwd=tmp_path)
    assert ok.returncode == 0 and f"manifest sha256 {pinned}" in ok.stdout
    bundle = clone(int8_7bit_bundle.folder, tmp_path / "b", copy=("manifest.json",))
    _rewrite_manifest(bundle, lambda m: m["gates"].update(min_sqnr_db=0.0, min_top1_agreement=0.0))
    assert run_on_device(bundle / "check.py", cwd=tmp_path).returncode == 0  # a check inside cannot vouch for itself
    proc = run_on_device(bundle / "check.py", "--expect-manifest", pinned, cwd=tmp_path)
    assert proc.returncode == 1 and proc.stdout.startswith("FAIL: manifest sha256 is")
    res = cli("verify", bundle, "--expect-manifest", pinned)
    assert res.exit_code == 1 and "not the expected" in res.stderr


@pytest.mark.parametrize("change, message", [
    (lambda m: m["gates"].update(min_sqnr_db="ten"), "gate min_sqnr_db is 'ten'"),
    (lambda m: m["gates"].pop("atol"), "gates have no 'atol'"),
    (lambda m: m["preprocessing"].update(std=[0.0, 1.0, 1.0]), "preprocessing std"),
    (lambda m: m["preprocessing"].update(crop=10**9), "preprocessing crop"),
    (lambda m: m["model"].update(file="../outside.onnx"), "not among its checksummed files"),
    (lambda m: m["files"].update({"../outside.onnx": {"sha256": "0" * 64}}), "not a plain file name"),
    (lambda m: m.update(check_runtimes="openvino"), "check_runtimes is 'openvino'"),
])
def test_a_mistyped_or_escaping_manifest_is_a_broken_bundle(int8_7bit_bundle, tmp_path, change, message):
    bundle = clone(int8_7bit_bundle.folder, tmp_path / "b", copy=("manifest.json",))
    _rewrite_manifest(bundle, change)
    proc = run_on_device(bundle / "check.py", cwd=tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_symlinks_fifos_and_oversize_arrays_are_refused_without_hanging(int8_7bit_bundle, tmp_path):
    outside = tmp_path / "outside.npz"
    shutil.copyfile(int8_7bit_bundle.folder / "golden.npz", outside)
    bundle = clone(int8_7bit_bundle.folder, tmp_path / "b")
    (bundle / "golden.npz").unlink()
    (bundle / "golden.npz").symlink_to(outside)
    proc = run_on_device(bundle / "check.py", cwd=tmp_path)
    assert proc.returncode == 2 and "golden.npz" in proc.stderr and "symlink" in proc.stderr
    fifo = clone(int8_7bit_bundle.folder, tmp_path / "f")
    (fifo / "manifest.json").unlink()
    os.mkfifo(fifo / "manifest.json")
    proc = run_on_device(fifo / "check.py", cwd=tmp_path)  # subprocess timeout: a hang fails the test
    assert proc.returncode == 2 and "not a regular file" in proc.stderr
    # a golden array whose header declares 4 TB: refused from the header, nothing allocated
    big = clone(int8_7bit_bundle.folder, tmp_path / "g", copy=("manifest.json",))
    (big / "golden.npz").unlink()
    import io
    import zipfile

    header = io.BytesIO()
    np.lib.format.write_array_header_2_0(header, {"descr": "<f4", "fortran_order": False, "shape": (10**6, 10**6)})
    with zipfile.ZipFile(big / "golden.npz", "w") as archive:
        archive.writestr("images.npy", header.getvalue() + b"\0" * 64)
    _rewrite_manifest(big, lambda m: m["files"]["golden.npz"].update(sha256=bundle_metrics.sha256_file(big / "golden.npz")))
    proc = run_on_device(big / "check.py", cwd=tmp_path)
    assert proc.returncode == 2 and "declares shape (1000000, 1000000)" in proc.stderr


def test_image_mode_refuses_a_decompression_bomb_and_a_fifo(fp32_bundle, tmp_path):
    from PIL import Image

    folder, _ = fp32_bundle
    bomb = tmp_path / "bomb.png"
    Image.new("L", (9000, 8000)).save(bomb)  # 72 MP of zeros: a few KB on disk
    proc = run_on_device(folder / "check.py", "--image", bomb, cwd=tmp_path)
    assert proc.returncode == 2 and "decompression bomb" in proc.stderr and "Traceback" not in proc.stderr
    os.mkfifo(tmp_path / "pipe.jpg")
    proc = run_on_device(folder / "check.py", "--image", tmp_path / "pipe.jpg", cwd=tmp_path)
    assert proc.returncode == 2 and "not a regular file" in proc.stderr


def test_verify_bundle_applies_the_gates_it_is_given_and_refuses_the_rest(cli, int8_7bit_bundle):
    res = cli("verify", int8_7bit_bundle.folder, "--min-sqnr", "100")
    assert res.exit_code == 1 and "SQNR" in res.stderr
    res = cli("verify", int8_7bit_bundle.folder, "--dataset", CALIBRATION)
    assert res.exit_code == 2 and "--dataset does not apply to a bundle" in res.stderr


def test_a_tampered_bundle_fails_inside_the_arm64_board(cli, int8_7bit_bundle, arm64, tmp_path):
    name = next(p.name for p in int8_7bit_bundle.folder.glob("*.onnx"))
    bundle = clone(int8_7bit_bundle.folder, tmp_path / "b", copy=(name,))
    data = bytearray((bundle / name).read_bytes())
    data[len(data) // 2] ^= 0x5A
    (bundle / name).write_bytes(bytes(data))
    res = cli("verify", bundle, "--device", "arm64-a53", "--json")
    assert res.exit_code == 1 and "sha256 mismatch" in res.stderr + res.stdout


def _on_board(python: Path, *args, cwd: Path) -> subprocess.CompletedProcess:
    """A bundle's check.py run by a board's own Python (-I: not even the script's folder is on sys.path)."""
    return subprocess.run([str(python), "-I", *map(str, args)], capture_output=True, text=True, cwd=cwd,
                          env=device_env(), timeout=600)


def test_a_bundle_packaged_for_ort_and_openvino_passes_in_both(cli, fp32_bundle, tmp_path):
    # `package --runtimes ort,openvino` (issue 32): the bundle's check.py runs the .onnx in OpenVINO too, with the
    # same golden outputs and gates; the manifest says what it was packaged for and each runtime's latency there
    if not HAS_OPENVINO:
        pytest.skip("OpenVINO is an optional extra (pip install 'edgekit[openvino]'); the bundle holds ORT only")
    folder, result = fp32_bundle
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["check_runtimes"] == ["ort", "openvino"]
    assert all(manifest["runtimes"][k]["latency_ms_p50"] > 0 for k in ("onnxruntime", "openvino"))
    assert {r["runtime"] for r in result["check"]["rows"] if r["status"] == "PASS"} == {"ort", "openvino"}
    res = cli("verify", folder, "--json")  # edgekit's own check of the bundle runs the same rows
    assert res.exit_code == 0, res.stdout + res.stderr
    checked = json.loads(res.stdout)
    assert [(r["runtime"], r["format"], r["status"]) for r in checked["rows"] if r["runtime"] == "openvino"] == [
        ("openvino", "onnx", "PASS")]
    assert not [n for n in checked["notes"] if "not this edgekit's" in n]  # the bundle's device side is edgekit's own
    older = clone(folder, tmp_path / "older", copy=("report.py", "manifest.json"))  # as another edgekit would ship it
    with open(older / "report.py", "a") as f:
        f.write("\n# another edgekit\n")
    _rewrite_manifest(older, lambda m: m["files"]["report.py"].update(sha256=bundle_metrics.sha256_file(older / "report.py")))
    notes = json.loads(cli("verify", older, "--json").stdout)["notes"]
    assert any("not this edgekit's" in n and "report.py differ" in n for n in notes), notes
    if not OPENVINO_BOX.exists():
        pytest.skip(f"no board with numpy, onnxruntime and openvino only at {OPENVINO_BOX}: scripts/emulators.sh makes it")
    board = _on_board(OPENVINO_BOX, folder / "check.py", "--json", cwd=tmp_path)
    assert board.returncode == 0, board.stdout + board.stderr
    report = json.loads(board.stdout)
    assert {(r["runtime"], r["status"]) for r in report["rows"]} == {("ort", "PASS"), ("openvino", "PASS")}
    openvino = [r for r in report["rows"] if r["runtime"] == "openvino"][0]
    assert openvino["metrics"]["sqnr_db"] > 60 and openvino["provider"] == "OpenVINO runtime"
    if not ORT_BOX.exists():
        pytest.skip(f"no board with numpy and onnxruntime only at {ORT_BOX}: scripts/emulators.sh makes it")
    plain = _on_board(ORT_BOX, folder / "check.py", cwd=tmp_path)  # no openvino here: said, not failed
    assert plain.returncode == 0 and "note: openvino not installed here: skipped" in plain.stdout, plain.stdout + plain.stderr
    asked = _on_board(ORT_BOX, folder / "check.py", "--runtime", "openvino", cwd=tmp_path)
    assert asked.returncode == 3 and "UNAVAILABLE: onnx on OpenVINO runtime: openvino not installed here" in asked.stdout
    assert "Traceback" not in asked.stderr
