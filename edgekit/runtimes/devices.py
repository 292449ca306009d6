"""Deployment CPUs edgekit can compute as, from this machine: the host, and CPUs emulated by QEMU's user-mode
emulator (docs/field-notes.md, "Seeing another CPU from this one"). Emulation gives the device's ONNX Runtime
kernels bit-exactly, never its speed: a device here is for numerics only.

- x86-avx2: `qemu-x86_64 -cpu Haswell-noTSX` runs this machine's own Python and onnxruntime as an AVX2 CPU
  without AVX-512 or VNNI computes them (QEMU's TCG has no AVX-512). On an AVX2-only host it is the host.
- arm64-a53 / arm64-a76: `qemu-aarch64 -cpu cortex-a53|cortex-a76` runs an aarch64 Python with numpy and
  onnxruntime from a sysroot that `edgekit devices setup arm64` builds.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import sys
from pathlib import Path

from edgekit.core.errors import BadInput, EnvironmentUnavailable
from edgekit.core.provenance import CpuInfo, this_cpu
from edgekit.runtimes.device_kinds import (  # noqa: F401  (re-exported: callers ask runtimes.devices)
    DEVICE_TIMEOUT_S, DEVICES, HASWELL_FLAGS, MAX_FACTS_BYTES, Device, DeviceStatus, device_timeout,
    read_device_file, set_device_timeout,
)

DEVICES_DIR_ENV = "EDGEKIT_DEVICES_DIR"


def devices_dir() -> Path:
    """Where device sysroots live (EDGEKIT_DEVICES_DIR, default ~/.cache/edgekit/devices)."""
    return Path(os.environ.get(DEVICES_DIR_ENV) or Path.home() / ".cache" / "edgekit" / "devices")


def arm64_root() -> Path:
    return devices_dir() / "arm64"


def version_tuple(text: str) -> tuple[int, ...]:
    """(major, minor) of a version string ('10.0.2' -> (10, 0)); () when it holds no number."""
    return tuple(int(p) for p in re.findall(r"\d+", str(text))[:2])


def emulator_log(text: str) -> list[str]:
    """The lines of an emulated process's output worth showing: QEMU's TCG feature warnings left out."""
    return [line for line in text.splitlines() if line.strip() and "TCG doesn't support" not in line]


def qemu_version(path: str) -> str:
    """'10.0.2' from `qemu-... --version` ('unknown' when it does not say)."""
    import subprocess

    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    match = re.search(r"version (\d+\.\d+(?:\.\d+)?)", out)
    return match.group(1) if match else "unknown"


def find_emulator(arch: str, minimum: tuple[int, int] | None = None) -> str | None:
    """The user-mode QEMU for an architecture on PATH (the plain build, then the static one), at least `minimum`."""
    base = "qemu-x86_64" if arch == "x86_64" else "qemu-aarch64"
    for name in (base, f"{base}-static"):
        path = shutil.which(name)
        if path and (minimum is None or version_tuple(qemu_version(path)) >= minimum):
            return path
    return None


def arm64_sysroot_facts() -> dict:
    """What `edgekit devices setup arm64` recorded ({} when there is no sysroot, or its facts file is not a small
    regular JSON file)."""
    raw = read_device_file(arm64_root() / "device.json")
    try:
        facts = json.loads(raw) if raw is not None else {}
    except ValueError:
        return {}
    return facts if isinstance(facts, dict) and all(isinstance(facts.get(k), str) for k in ("onnxruntime", "numpy")) else {}


def _host_is(device: Device) -> bool:
    """The host computes as this device does: an x86 host with AVX2 and without VNNI is an x86-avx2 device."""
    host = this_cpu()
    if device.qemu_cpu is None:
        return True
    if device.arch == "x86_64":
        return host.is_x86 and not host.has_vnni and "avx2" in host.flags and not host.faked
    return False  # an ARM host is not a particular Cortex core: emulate it


def device_status(name: str) -> DeviceStatus:
    """How `name` runs here: natively, under QEMU, over SSH (the user's own board), or not (with what to install)."""
    from edgekit.runtimes.boards import board_of, is_board

    if is_board(name):
        from edgekit.runtimes.ssh import board_status

        return board_status(board_of(name))
    device = get_device(name)
    if _host_is(device):
        return DeviceStatus(name, device.about, "native", True, [], sys.executable)
    emulator = find_emulator(device.arch)
    missing = []
    if platform.machine().lower() not in ("x86_64", "amd64"):
        missing.append(f"an x86-64 host (this one is {platform.machine()}); emulation is set up for x86-64 hosts only")
    if emulator is None:
        missing.append(f"{device.emulator} (Debian: apt-get install qemu-user-static)")
    if device.arch == "x86_64":
        command = [emulator or device.emulator, "-cpu", device.qemu_cpu]
        return DeviceStatus(name, device.about, "emulated" if not missing else "unavailable", not missing, command,
                            sys.executable, {}, missing)
    root = arm64_root()
    python = root / "sysroot" / "usr" / "bin" / "python3.11"
    site = root / "site"
    facts = arm64_sysroot_facts()
    if not python.is_file() or not (site / "onnxruntime").is_dir() or not facts:
        missing.append(f"the arm64 sysroot under {root} (run: edgekit devices setup arm64)")
    elif emulator is not None and version_tuple(facts.get("onnxruntime")) >= (1, 28):
        # QEMU 7.2 segfaults importing onnxruntime >= 1.28 for aarch64 (docs/field-notes.md): say so, not crash
        emulator = find_emulator(device.arch, minimum=(8, 0))
        if emulator is None:
            missing.append(f"QEMU >= 8 for onnxruntime {facts.get('onnxruntime')} on aarch64 (Debian bookworm: "
                           "apt-get install -t bookworm-backports qemu-user)")
    command = [emulator or device.emulator, "-cpu", device.qemu_cpu, "-L", str(root / "sysroot")]
    return DeviceStatus(name, device.about, "emulated" if not missing else "unavailable", not missing, command,
                        str(python), {"PYTHONPATH": str(site)}, missing)


TARGET_DEVICES = {"x86-avx2": ("x86-avx2",), "arm64": ("arm64-a53", "arm64-a76")}  # recipes -> CPUs they run on


def suggest_devices(target: str | None) -> str | None:
    """For a file meant for `target`, judged without --device: a sentence naming the emulated devices of that
    target that are set up here (None where there are none). edgekit never picks one silently."""
    ready = [name for name in TARGET_DEVICES.get(str(target), ()) if device_status(name).mode == "emulated"]
    if not ready:
        return None
    return (f"the file is meant for {target}, and {' and '.join(ready)} {'is' if len(ready) == 1 else 'are'} set up "
            f"here: --device {ready[-1]} judges it on that CPU's own ONNX Runtime kernels (emulated, numerics only)")


def device_notes(name: str | None, target: str | None = None) -> list[str]:
    """What a report says of the device a file was judged on: for the user's own board, what it said of itself at
    first contact (machine, CPU, int8 features, cores, Python/numpy/onnxruntime) and whether the file's recipe
    (`target`) is the one for that CPU; nothing for the others."""
    from edgekit.runtimes.boards import board_of, is_board

    if not is_board(name):
        return []
    from edgekit.judge.targets import detect_target
    from edgekit.runtimes.ssh import board_status

    board = board_of(name)
    notes = [f"judged on the board {board.name}: {board_status(board).about} (over SSH, its own ONNX Runtime)"]
    if target:
        best = detect_target(cpu=get_device(name).cpu())
        notes.append(f"the file's recipe ({target}) is the one for this board's CPU" if best == target else
                     f"the file's recipe is {target}; this board's CPU calls for {best} "
                     f"(edgekit quantize --target {best} makes that file)")
    return notes


def get_device(name: str) -> Device:
    """A device by name (an ssh:// address or a stored board: what the board says of itself, asked once); BadInput
    naming the known ones."""
    from edgekit.runtimes.boards import board_of, is_board

    if is_board(name):
        from edgekit.runtimes.ssh import board_device

        return board_device(board_of(name))
    key = str(name).strip().lower()
    if key not in DEVICES:
        raise BadInput(f"unknown device {name!r}", hint=f"use one of {', '.join(DEVICES)}, a board stored with edgekit "
                       "devices add, or ssh://user@host (edgekit devices lists them)")
    return DEVICES[key]


def cpu_of(name: str | None) -> CpuInfo:
    """The CPU whose kernels judge an int8 file: the device's, or this machine's (None or "host")."""
    return get_device(name or "host").cpu()


def ready_device(name: str) -> DeviceStatus:
    """A device that can run here, or EnvironmentUnavailable (exit 3) saying what to install."""
    status = device_status(name)
    if status.mode == "ssh" and not status.ready:
        raise EnvironmentUnavailable(f"board {name}: {'; '.join(status.missing)}")
    if not status.ready:
        raise EnvironmentUnavailable(f"device {name} cannot run here: missing {'; '.join(status.missing)}")
    return status
