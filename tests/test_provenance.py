"""provenance.py: library versions and this CPU, with fakeable flags."""

from __future__ import annotations

from edgekit.core.provenance import CpuInfo, library_versions, this_cpu


def test_cpu_kinds():
    assert CpuInfo("x86_64", "m", frozenset({"avx2", "avx512_vnni"})).kind() == "x86 with VNNI"
    zen3 = CpuInfo("x86_64", "m", frozenset({"avx2", "fma"}))
    assert zen3.kind() == "x86 AVX2 without VNNI" and zen3.int8_saturates
    assert not CpuInfo("aarch64", "m", frozenset({"asimddp"})).int8_saturates


def test_faked_flags_are_said(monkeypatch):
    monkeypatch.setenv("EDGEKIT_FAKE_CPU_FLAGS", "avx2 fma")
    cpu = this_cpu()
    assert cpu.faked and not cpu.has_vnni and "faked" in cpu.model and cpu.to_dict()["faked"]


def test_real_cpu_is_read_from_proc_cpuinfo(monkeypatch):
    monkeypatch.delenv("EDGEKIT_FAKE_CPU_FLAGS", raising=False)
    monkeypatch.delenv("EDGEKIT_FAKE_CPU_MACHINE", raising=False)
    cpu = this_cpu()
    assert not cpu.faked and cpu.machine


def test_library_versions_name_the_pinned_libraries():
    versions = library_versions()
    assert versions["torch"].startswith("2.14.1") and versions["torchvision"].startswith("0.29.1")
    assert {"edgekit", "onnx", "onnxruntime", "onnxsim"} <= set(versions)


def test_library_versions_read_torch_without_importing_it_and_say_what_it_says():
    """The versions a file records are the packages' own (torch's build suffix included), read without importing
    torch, torchvision or onnxsim (a quantize of an ONNX file runs none of them)."""
    import subprocess
    import sys

    code = ("import sys, json; from edgekit.core.provenance import library_versions; v = library_versions(); "
            "print(json.dumps([v, sorted(m for m in ('torch', 'torchvision', 'onnxsim') if m in sys.modules)]))")
    import json

    versions, imported = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                                   check=True).stdout)
    assert imported == []
    import onnxsim
    import torch
    import torchvision

    assert versions["torch"] == torch.__version__ and versions["torchvision"] == torchvision.__version__
    assert versions["onnxsim"] == onnxsim.__version__
    assert versions == library_versions()  # the same once they are imported


def test_a_damaged_version_module_is_an_error_never_a_guess(tmp_path, monkeypatch):
    import pytest

    from edgekit.core import provenance

    fake = tmp_path / "fakepkg"
    fake.mkdir()
    (fake / "__init__.py").write_text("")
    (fake / "version.py").write_text("git_version = 'x'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(provenance._VERSION_FILES, "fakepkg", ("version.py", "__version__"))
    with pytest.raises(RuntimeError, match="states no __version__"):
        provenance._stated_version("fakepkg")
    (fake / "version.py").write_text("__version__ = '1.2.3+build'\n")
    assert provenance._stated_version("fakepkg") == "1.2.3+build"
