"""Deployment devices (edgekit/runtimes): which run here and how, the emulated ORT session, and the errors."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from edgekit.core.errors import BadInput, CheckFailed, EnvironmentUnavailable


def _tiny_model(path):
    """y = x @ W + b: small enough that an emulated CPU starts it in a second."""
    w = helper.make_tensor("w", TensorProto.FLOAT, [4, 3], np.arange(12, dtype=np.float32).tolist())
    b = helper.make_tensor("b", TensorProto.FLOAT, [3], [0.5, -1.0, 2.0])
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w", "b"], ["y"])], "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 3])], [w, b],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))
    return path


def test_the_emulated_session_computes_what_this_machine_computes(avx2, tmp_path):
    from edgekit.runtimes.ort import create_session
    from edgekit.runtimes.runners import run_session

    model = _tiny_model(tmp_path / "tiny.onnx")
    x = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    here = run_session(create_session(model, "cpu"), x, 2)[0]
    session = create_session(model, "cpu", device="x86-avx2")
    assert session.device == ("x86-avx2" if avx2.mode == "emulated" else None)
    assert [i.name for i in session.session.get_inputs()] == ["x"] and session.session.get_inputs()[0].shape == [None, 4]
    there = run_session(session, x, 2)[0]
    np.testing.assert_allclose(there, here, rtol=1e-6, atol=1e-6)  # fp32 Gemm: the same to rounding
    with pytest.raises(BadInput, match="expects"):  # the host checks shapes before anything crosses over
        session.run({"x": np.zeros((1, 5), np.float32)})


def test_a_file_the_device_cannot_load_names_the_device(avx2, tmp_path):
    from edgekit.runtimes.runners import run_onnx

    if avx2.mode != "emulated":
        pytest.skip("this host is an AVX2 CPU without VNNI: x86-avx2 runs natively, nothing is emulated")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not an onnx file")
    with pytest.raises(CheckFailed, match="on the device x86-avx2 cannot load bad.onnx"):
        run_onnx(bad, np.zeros((1, 4), np.float32), 1, device="x86-avx2")


def test_unknown_device_is_exit_2_and_a_missing_emulator_exit_3(cli, tmp_path, monkeypatch):
    import edgekit.runtimes.devices as devices

    res = cli("verify", _tiny_model(tmp_path / "t.onnx"), "--device", "x86-avx3")
    assert res.exit_code == 2 and "unknown device 'x86-avx3'" in res.stderr and "x86-avx2" in res.stderr
    monkeypatch.setattr(devices, "find_emulator", lambda arch: None)
    monkeypatch.setattr(devices, "_host_is", lambda device: device.qemu_cpu is None)
    with pytest.raises(EnvironmentUnavailable, match="qemu-x86_64 .*apt-get install qemu-user-static"):
        devices.ready_device("x86-avx2")
    res = cli("quantize", tmp_path / "t.onnx", "--device", "x86-avx2")
    assert res.exit_code == 3 and "device x86-avx2 cannot run here" in res.stderr


def test_an_avx2_host_is_its_own_x86_avx2_device_and_faked_flags_never_are(monkeypatch):
    import edgekit.runtimes.devices as devices
    from edgekit.core.provenance import CpuInfo

    zen3 = CpuInfo("x86_64", "AMD EPYC (Zen 3)", frozenset({"avx2", "fma"}))
    monkeypatch.setattr(devices, "this_cpu", lambda: zen3)
    assert devices.device_status("x86-avx2").mode == "native"
    faked = CpuInfo("x86_64", "faked", frozenset({"avx2", "fma"}), faked=True)
    monkeypatch.setattr(devices, "this_cpu", lambda: faked)
    assert devices.device_status("x86-avx2").mode != "native"  # faked flags change decisions, not arithmetic
    assert devices.get_device("x86-avx2").cpu().int8_saturates and not devices.get_device("x86-avx2").cpu().faked


def test_devices_command_lists_each_device_with_what_it_needs(cli):
    res = cli("devices", "--json")
    assert res.exit_code == 0, res.stderr
    devices = {d["name"]: d for d in json.loads(res.stdout)["devices"]}
    assert set(devices) == {"host", "x86-avx2", "arm64-a53", "arm64-a76"}
    assert devices["host"]["ready"] and devices["host"]["mode"] == "native"
    for d in devices.values():
        assert d["ready"] == (not d["missing"]) and d["mode"] in ("native", "emulated", "unavailable")


def test_an_arm64_file_is_judged_on_the_boards_own_kernels(cli, exported, arm64, calibration_npz, tmp_path):
    # An arm64-recipe file verified by ONNX Runtime for aarch64 inside an emulated Cortex-A76: the table and
    # the report name the device, and its CPU facts are the board's (no x86 session option applies there).
    from edgekit.quantize import quantize

    fp32 = exported("textbook_resnet18", 32).path
    # (the photos as tensors: calibrated from a .npz the file meets its budget with no fallback search, and the
    # board runs 4 inputs, not 12 photos, through each emulated session)
    int8 = quantize(fp32, target="arm64", calibration=calibration_npz(32), output=tmp_path / "a.int8.onnx").path
    inputs = calibration_npz(32, 4)
    res = cli("verify", int8, "--device", "arm64-a76", "--inputs", inputs, "--random-inputs", "0",
              "--report", tmp_path / "a.json")
    assert res.exit_code == 0, res.stderr
    report = json.loads((tmp_path / "a.json").read_text())
    assert {c["device"] for c in report["comparisons"]} == {"arm64-a76"}
    assert report["int8_saturation"] is None and all(c["kernels"] == "default" for c in report["comparisons"])
    # per-layer error with the deployed int8 run on the board's kernels (the float runs stay on this machine)
    res = cli("verify", int8, "--device", "arm64-a76", "--layers", "--parent", fp32, "--inputs", inputs,
              "--random-inputs", "0", "--report", tmp_path / "l.json")
    assert res.exit_code == 0, res.stderr
    layers = json.loads((tmp_path / "l.json").read_text())["layers"]
    assert layers["activations"] and any("arm64-a76" in n for n in layers["notes"])


def test_arm64_setup_says_when_qemu_is_too_old_for_the_onnxruntime_asked(monkeypatch):
    # QEMU 7.2 (Debian bookworm) segfaults importing onnxruntime >= 1.28 for aarch64: said, never hit
    import edgekit.runtimes.sysroot as sysroot

    monkeypatch.setattr(sysroot.shutil, "which", lambda tool: f"/usr/bin/{tool}")
    monkeypatch.setattr(sysroot, "find_emulator", lambda arch, minimum=None: None if minimum else "/usr/bin/qemu-aarch64-static")
    monkeypatch.setattr(sysroot, "qemu_version", lambda path: "7.2.22")
    with pytest.raises(EnvironmentUnavailable, match="QEMU 7.2.22, which crashes importing onnxruntime >= 1.28.*backports"):
        sysroot.check_tools("1.31.1")
    assert sysroot.check_tools("1.26.0") == "/usr/bin/qemu-aarch64-static"  # older onnxruntime imports fine there
    with pytest.raises(BadInput, match="not a version number"):
        sysroot.setup_arm64("latest")


def test_the_debian_mirror_comes_from_apt_sources(tmp_path):
    from edgekit.runtimes.sysroot import debian_mirror

    (tmp_path / "a.sources").write_text("Types: deb\nURIs: http://mirror.example/debian-security\nSuites: x\n")
    (tmp_path / "b.sources").write_text("Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm\n")
    assert debian_mirror((tmp_path,)) == "http://mirror.example/debian"
    with pytest.raises(EnvironmentUnavailable, match="no Debian mirror"):
        debian_mirror((tmp_path / "none",))


def test_an_emulated_process_that_dies_is_exit_3_naming_the_device(cli, exported, tmp_path, monkeypatch):
    # a crash inside the emulator (here the launcher kills itself with SIGSEGV) is the environment, not the file
    import sys

    import edgekit.runtimes.devices as devices

    crash = devices.DeviceStatus("x86-avx2", "test", "emulated", True,
                                 [sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)"],
                                 sys.executable)
    monkeypatch.setattr(devices, "device_status", lambda name: crash)
    res = cli("verify", exported("textbook_resnet18", 32).path, "--device", "x86-avx2", "--random-inputs", "0")
    assert res.exit_code == 3, res.stderr
    assert "the emulated device x86-avx2" in res.stderr and "killed by SIGSEGV" in res.stderr


def test_an_arm64_device_not_set_up_is_exit_3_and_bench_refuses_devices(cli, exported, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEKIT_DEVICES_DIR", str(tmp_path / "no-devices"))
    res = cli("verify", exported("textbook_resnet18", 32).path, "--device", "arm64-a53")
    assert res.exit_code == 3 and "edgekit devices setup arm64" in res.stderr
    res = cli("bench", exported("textbook_resnet18", 32).path, "--device", "x86-avx2")
    assert res.exit_code == 2 and "an emulated CPU's speed says nothing" in res.stderr


def test_without_device_a_set_up_device_is_named_never_used(cli, exported, arm64, calibration_npz, tmp_path):
    from edgekit.quantize import quantize

    int8 = quantize(exported("textbook_resnet18", 32).path, target="arm64", calibration=calibration_npz(32),
                    output=tmp_path / "a.int8.onnx")
    assert any("--device arm64-a76 judges it" in n for n in int8.notes)
    res = cli("verify", int8.path, "--random-inputs", "0", "--report", tmp_path / "v.json")
    report = json.loads((tmp_path / "v.json").read_text())
    assert any("--device arm64-a76 judges it" in n for n in report["notes"])
    assert {c["device"] for c in report["comparisons"]} == {"host"} and res.exit_code == 0
