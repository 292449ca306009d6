"""What a device is (runtimes.devices: the host and the emulated CPUs; runtimes.ssh: the user's own boards): the
Device and DeviceStatus types, the device timeout, and the bounded read of a device's small files. The floor below
devices.py, boards.py and ssh.py, so that none of them imports another in a circle."""

from __future__ import annotations

import os
import platform
from dataclasses import asdict, dataclass, field
from pathlib import Path

from edgekit.core.provenance import CpuInfo, this_cpu

# QEMU's user-mode emulator passes the host's /proc/cpuinfo through to an x86 guest: the emulated process
# cannot read its own flags there, so edgekit states them (the device's CPUID is what ORT really reads).
HASWELL_FLAGS = frozenset({"sse4_1", "sse4_2", "avx", "avx2", "fma", "f16c", "bmi1", "bmi2", "popcnt", "movbe"})


@dataclass(frozen=True)
class Device:
    """A CPU that int8 files are judged on: its architecture, its QEMU model and the flags its kernels see."""

    name: str
    arch: str  # x86_64 | aarch64
    qemu_cpu: str | None  # None: the host itself
    flags: frozenset[str]
    model: str
    about: str

    def cpu(self) -> CpuInfo:
        """The device as edgekit's CPU facts (what the target judgement reads)."""
        if self.qemu_cpu is None:
            return this_cpu()
        return CpuInfo(self.arch, self.model, self.flags)

    @property
    def emulator(self) -> str:
        return "qemu-x86_64" if self.arch == "x86_64" else "qemu-aarch64"


DEVICES: dict[str, Device] = {
    "host": Device("host", platform.machine(), None, frozenset(), "this machine's CPU", "this machine, natively"),
    "x86-avx2": Device(
        "x86-avx2", "x86_64", "Haswell-noTSX", HASWELL_FLAGS, "Intel Haswell (QEMU -cpu Haswell-noTSX)",
        "x86-64 with AVX2 and FMA, no AVX-512, no VNNI (AMD Zen 1-3, Intel Haswell to Comet Lake): "
        "ORT's u8s8 kernels sum pairs in int16 here",
    ),
    "arm64-a53": Device(
        "arm64-a53", "aarch64", "cortex-a53", frozenset({"asimd"}), "Arm Cortex-A53 (QEMU -cpu cortex-a53)",
        "ARMv8.0 without the dot-product extension (Raspberry Pi 3, many SoCs)",
    ),
    "arm64-a76": Device(
        "arm64-a76", "aarch64", "cortex-a76", frozenset({"asimd", "asimddp"}), "Arm Cortex-A76 (QEMU -cpu cortex-a76)",
        "ARMv8.2 with sdot/udot (Raspberry Pi 5, Jetson Orin class)",
    ),
}


MAX_FACTS_BYTES = 64 << 10  # device.json is ~100 bytes


def read_device_file(path: Path, limit: int = MAX_FACTS_BYTES) -> bytes | None:
    """A device file's bytes, read as images are: a regular file (a FIFO or device is refused without blocking) of
    at most `limit` bytes; None when it is absent, not regular, too large or unreadable (the device is then not
    set up, and `edgekit devices` says so)."""
    from edgekit.core.files import open_regular

    try:
        with open_regular(path, "device file") as f:
            data = f.read(limit + 1)
    except (OSError, ValueError):
        return None
    return data if len(data) <= limit else None


DEVICE_TIMEOUT_S = 180.0  # a device worker that does not answer is given up after this (--device-timeout)
_device_timeout: list[float] = []


def set_device_timeout(seconds: float | None) -> None:
    """How long an (emulated) device may take to answer one request: `seconds`, or None for the default."""
    _device_timeout[:] = [] if seconds is None else [float(seconds)]


def device_timeout() -> float:
    return _device_timeout[0] if _device_timeout else DEVICE_TIMEOUT_S


@dataclass
class DeviceStatus:
    """Whether a device can run here, how, and what is missing."""

    name: str
    about: str
    mode: str  # native | emulated | unavailable
    ready: bool
    command: list[str] = field(default_factory=list)  # the launcher before `python script args`
    python: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)

    def argv(self, script: Path, *args) -> list[str]:
        """How to run a numpy + onnxruntime script on this device: its launcher, its Python, the script."""
        return [*self.command, str(self.python), str(script), *map(str, args)]

    def environ(self) -> dict[str, str]:
        """The script's environment: this process's, less Python's and edgekit's own variables, plus the device's."""
        kept = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "EDGEKIT_"))}
        return {**kept, **self.env, "OMP_NUM_THREADS": "1"}

    def to_dict(self) -> dict:
        return asdict(self)
