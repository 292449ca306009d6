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
