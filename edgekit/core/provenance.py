"""Where a result came from: library versions and the facts of this machine (CPU model and flags).

The CPU's flags decide how ONNX Runtime computes int8 (docs/field-notes.md, "Int8 across CPUs"), so they
are read in one place, and can be faked for tests with EDGEKIT_FAKE_CPU_FLAGS (every report that
depends on them says when they were faked).
"""

from __future__ import annotations

import os
import platform
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

# the flags and their reading are the device check's own (edgekit/ondevice/cpu.py): one copy, host and board
from edgekit.ondevice.cpu import FAKE_CPU_FLAGS_ENV, VNNI_FLAGS, fake_flags, read_cpuinfo

FAKE_CPU_MACHINE_ENV = "EDGEKIT_FAKE_CPU_MACHINE"  # e.g. "aarch64"
INT8_FLAGS = frozenset({"avx2", "fma", "avx512f", "avx512bw", *VNNI_FLAGS, "asimddp"})


@dataclass(frozen=True)
class CpuInfo:
    """The CPU as far as int8 kernels care: architecture, model name and feature flags."""

    machine: str  # x86_64 | aarch64 | ...
    model: str
    flags: frozenset[str]
    faked: bool = False

    @property
    def is_x86(self) -> bool:
        return self.machine.lower() in ("x86_64", "amd64", "i686", "x86")

    @property
    def is_arm64(self) -> bool:
        return self.machine.lower() in ("aarch64", "arm64")

    @property
    def has_vnni(self) -> bool:
        """int8 dot products accumulate in int32 (AVX512-VNNI, AVX-VNNI, AMX)."""
        return bool(self.flags & VNNI_FLAGS)

    @property
    def int8_saturates(self) -> bool:
        """x86 without VNNI: ORT's u8s8 AVX2 kernel sums pairs of products in int16 and can saturate."""
        return self.is_x86 and not self.has_vnni

    def kind(self) -> str:
        """A few words for reports: 'x86 with VNNI', 'x86 AVX2 without VNNI', 'arm64'."""
        if self.is_x86:
            if self.has_vnni:
                return "x86 with VNNI"
            return "x86 AVX2 without VNNI" if "avx2" in self.flags else "x86 without AVX2"
        return self.machine

    def to_dict(self) -> dict:
        data = asdict(self)
        data["flags"] = sorted(self.flags & INT8_FLAGS)
        data["kind"] = self.kind()
        return data


def _read_cpuinfo(path: Path = Path("/proc/cpuinfo")) -> tuple[str, set[str]]:
    model, flags, _known = read_cpuinfo(path)
    return model, flags


def this_cpu(cpuinfo: Path = Path("/proc/cpuinfo")) -> CpuInfo:
    """This machine's CPU, or the one EDGEKIT_FAKE_CPU_FLAGS / EDGEKIT_FAKE_CPU_MACHINE describe."""
    model, flags = _read_cpuinfo(cpuinfo)
    machine = platform.machine()
    faked = fake_flags()
    fake_machine = os.environ.get(FAKE_CPU_MACHINE_ENV)
    if faked is None and fake_machine is None:
        return CpuInfo(machine, model, frozenset(flags))
    return CpuInfo(
        fake_machine or machine,
        f"{model} (faked: {FAKE_CPU_FLAGS_ENV}={os.environ.get(FAKE_CPU_FLAGS_ENV)!r})",
        frozenset(faked if faked is not None else flags),
        faked=True,
    )


# A library's version as its own package states it (torch's "2.14.1+cu130", with the build; onnxsim's "v0.8.1"), read
# from its version module as text: importing torch, torchvision and onnxsim only to read a string took 3-5 s of every
# quantize, import, convert and package of an ONNX file, none of which runs them.
_VERSION_FILES = {"torch": ("version.py", "__version__"), "torchvision": ("version.py", "__version__"),
                  "onnxsim": ("version.py", "version")}
MAX_VERSION_FILE_BYTES = 64 * 1024


def _stated_version(package: str) -> str:
    """PACKAGE's version from its version module, parsed (never executed) without importing the package; the
    package's own `__version__` when it is already imported. "not installed" when it is absent; an unreadable
    version module raises (a recorded version is never guessed)."""
    import ast
    import importlib.util

    loaded = getattr(sys.modules.get(package), "__version__", None)
    if isinstance(loaded, str):
        return loaded
    filename, variable = _VERSION_FILES[package]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return "not installed"
    path = Path(next(iter(spec.submodule_search_locations))) / filename
    with path.open("rb") as f:
        text = f.read(MAX_VERSION_FILE_BYTES + 1)
    if len(text) > MAX_VERSION_FILE_BYTES:
        raise RuntimeError(f"{path} is over {MAX_VERSION_FILE_BYTES} bytes: not a version module")
    for node in ast.parse(text, filename=str(path)).body:
        if (isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == variable for t in node.targets)
                and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)):
            return node.value.value
    raise RuntimeError(f"{path} states no {variable}: the {package} installation is damaged")


def library_versions() -> dict[str, str]:
    """Versions of the libraries that shape a file (recorded in its metadata): onnx and onnxruntime as imported,
    torch, torchvision and onnxsim as their version modules state them (_stated_version), with no import."""
    import onnx
    import onnxruntime

    import edgekit

    return {
        "edgekit": edgekit.__version__,
        "torch": _stated_version("torch"),
        "torchvision": _stated_version("torchvision"),
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "onnxsim": _stated_version("onnxsim"),
    }


def cuda_device_available() -> bool:
    """True when this process can see a CUDA device (asked of torch, which ships the CUDA runtime)."""
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:
        return False


def run_environment() -> dict:
    """library_versions plus where a measurement ran: Python, platform, CPU, ORT providers, GPU."""
    import onnxruntime as ort

    info = dict(library_versions())
    info["python"] = sys.version.split()[0]
    info["platform"] = platform.platform()
    info["cpu"] = this_cpu().to_dict()
    info["cores"] = os.cpu_count()
    info["ort_available_providers"] = ort.get_available_providers()
    if cuda_device_available():
        import torch

        info["cuda_device"] = torch.cuda.get_device_name(0)
        info["torch_cuda"] = torch.version.cuda
    return info
