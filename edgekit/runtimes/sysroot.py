"""`edgekit devices setup arm64`: an aarch64 Python 3.11 with numpy and onnxruntime, for QEMU's user-mode
emulator (docs/field-notes.md, "Seeing another CPU from this one").

Debian's own arm64 python3 comes from `debootstrap --foreign` (download only: no chroot, no binfmt), each
downloaded package unpacked with `dpkg-deb -x`; numpy and onnxruntime for aarch64 from the Python registry
(`pip --platform ... --target`). Built in a staging folder beside its place and renamed into place only when
the emulated Python imports onnxruntime; a failure leaves the previous sysroot, and nothing else.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from edgekit.core.errors import BadInput, CheckFailed, EnvironmentUnavailable
from edgekit.core.files import shown_path
from edgekit.runtimes.devices import DEVICES_DIR_ENV, arm64_root, devices_dir, emulator_log, find_emulator, qemu_version, version_tuple

DEBIAN_SUITE = "bookworm"  # its python3 is 3.11, the version the aarch64 wheels are chosen for
# QEMU 7.2 (bookworm's) segfaults importing onnxruntime >= 1.28 for aarch64; QEMU 10 (bookworm-backports) runs it.
MIN_QEMU_FOR_NEW_ORT = (8, 0)
NEW_ORT = (1, 28)
SETUP_TIMEOUT_S = 1200


@dataclass
class SetupResult:
    root: Path
    onnxruntime: str
    numpy: str
    python: str
    qemu: str
    bytes: int
    seconds: float

    def to_dict(self) -> dict:
        return {**asdict(self), "root": str(self.root)}


def debian_mirror(sources: tuple[Path, ...] = (Path("/etc/apt/sources.list.d"), Path("/etc/apt/sources.list"))) -> str:
    """The Debian mirror this machine's apt uses (debootstrap fetches the arm64 packages from it)."""
    files: list[Path] = []
    for source in sources:
        if source.is_dir():
            files += sorted(source.glob("*.sources")) + sorted(source.glob("*.list"))
        elif source.is_file():
            files.append(source)
    for path in files:
        try:
            text = path.read_text(errors="replace")
        except OSError:
            continue
        for line in text.splitlines():
            match = re.match(r"\s*(?:URIs:|deb)\s+(?:\[[^\]]*\]\s+)?(\S+/debian)/?\s*(?:\S+)?", line)
            if match and "security" not in match.group(1):
                return match.group(1)
    raise EnvironmentUnavailable("no Debian mirror in /etc/apt: the arm64 sysroot needs Debian's packages",
                                 hint="set up apt with a Debian mirror, or build the sysroot on a Debian machine")


def _run(argv: list[str], what: str, timeout: float = SETUP_TIMEOUT_S, env: dict | None = None) -> str:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)
    except FileNotFoundError:
        raise EnvironmentUnavailable(f"{what}: {argv[0]} is not installed") from None
    except subprocess.TimeoutExpired:
        raise EnvironmentUnavailable(f"{what}: {argv[0]} did not finish in {timeout:.0f} s") from None
    if proc.returncode != 0:
        lines = emulator_log(proc.stderr + proc.stdout)
        raise EnvironmentUnavailable(f"{what} failed: {(lines[-1] if lines else f'exit {proc.returncode}')[:300]}")
    return proc.stdout


def check_tools(onnxruntime_version: str) -> str:
    """The emulator to use for aarch64 (QEMU >= 8 for onnxruntime >= 1.28), or EnvironmentUnavailable naming
    what to install. debootstrap and dpkg-deb are checked too."""
    missing = [tool for tool in ("debootstrap", "dpkg-deb") if shutil.which(tool) is None]
    if missing:
        raise EnvironmentUnavailable(f"setting up arm64 needs {' and '.join(missing)}",
                                     hint="Debian: apt-get install debootstrap (dpkg-deb comes with dpkg)")
    emulator = find_emulator("aarch64", minimum=MIN_QEMU_FOR_NEW_ORT if version_tuple(onnxruntime_version) >= NEW_ORT else None)
    if emulator is None:
        found = find_emulator("aarch64")
        if found is not None:
            raise EnvironmentUnavailable(
                f"{found} is QEMU {qemu_version(found)}, which crashes importing onnxruntime >= 1.28 for aarch64 "
                f"(asked for {onnxruntime_version})",
                hint="install QEMU 10 (Debian bookworm: apt-get install -t bookworm-backports qemu-user), or pass "
                "--onnxruntime 1.26.0",
            )
        raise EnvironmentUnavailable("setting up arm64 needs qemu-aarch64",
                                     hint="Debian bookworm: apt-get install -t bookworm-backports qemu-user")
    return emulator


def setup_arm64(onnxruntime_version: str | None = None, numpy_spec: str = "numpy",
                on_stage: Callable[[str], None] | None = None) -> SetupResult:
    """Build (or rebuild) the arm64 sysroot under devices_dir()/arm64, atomically."""
    import time

    import onnxruntime

    stage = on_stage or (lambda _s: None)
    started = time.perf_counter()
    version = onnxruntime_version or onnxruntime.__version__
    if not re.fullmatch(r"\d+\.\d+(\.\d+)?", version):
        raise BadInput(f"--onnxruntime {version!r} is not a version number", hint="e.g. 1.31.1")
    emulator = check_tools(version)
    mirror = debian_mirror()
    final = arm64_root()
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".arm64-staging-", dir=final.parent))
    except OSError as exc:
        raise EnvironmentUnavailable(f"cannot make the devices folder {shown_path(final.parent)}: {exc.strerror or exc}",
                                     hint=f"set {DEVICES_DIR_ENV} to a writable folder with ~1 GB free") from None
    try:
        sysroot, site = staging / "sysroot", staging / "site"
        stage(f"debootstrap: Debian {DEBIAN_SUITE} arm64 python3 (download only)")
        _run(["debootstrap", "--arch=arm64", "--variant=minbase", "--foreign", "--include=python3", DEBIAN_SUITE,
              str(sysroot), mirror], "debootstrap")
        debs = sorted((sysroot / "var" / "cache" / "apt" / "archives").glob("*.deb"))
        if not debs:
            raise CheckFailed("debootstrap downloaded no packages")
        for i, deb in enumerate(debs, 1):
            stage(f"unpacking {i}/{len(debs)}: {deb.name}")
            _run(["dpkg-deb", "-x", str(deb), str(sysroot)], f"dpkg-deb -x {deb.name}")
        for deb in debs:
            deb.unlink()
        python = sysroot / "usr" / "bin" / "python3.11"
        if not python.exists():
            raise CheckFailed(f"the arm64 packages hold no {python.name}; Debian {DEBIAN_SUITE}'s python3 is 3.11")
        stage(f"pip: onnxruntime {version} and numpy for aarch64")
        _run([sys.executable, "-m", "pip", "install", "--disable-pip-version-check", "-q", "--target", str(site),
              "--platform", "manylinux_2_28_aarch64", "--platform", "manylinux2014_aarch64", "--python-version", "3.11",
              "--implementation", "cp", "--only-binary=:all:", f"onnxruntime=={version}", numpy_spec], "pip (aarch64)")
        stage("checking: the emulated Python imports onnxruntime")
        out = _run([emulator, "-cpu", "cortex-a53", "-L", str(sysroot), str(python), "-c",
                    "import numpy, onnxruntime, platform; print(platform.machine(), onnxruntime.__version__, numpy.__version__)"],
                   "the emulated aarch64 Python", timeout=300, env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"})
        words = out.split()
        if len(words) < 3:
            raise EnvironmentUnavailable(f"the emulated aarch64 Python printed {out.strip()[:80]!r}, not its versions")
        machine, ort_version, np_version = words[-3:]
        if machine != "aarch64" or ort_version != version:
            raise CheckFailed(f"the emulated Python reports {machine} with onnxruntime {ort_version}, not aarch64 {version}")
        (staging / "device.json").write_text(json.dumps({"onnxruntime": ort_version, "numpy": np_version,
                                                          "python": "3.11", "debian": DEBIAN_SUITE}))
        size = sum(p.stat().st_size for p in staging.rglob("*") if p.is_file() and not p.is_symlink())
        stage("moving the sysroot into place")
        old = None
        if final.exists():
            old = final.with_name(f".arm64-old-{staging.name}")
            final.rename(old)
        staging.rename(final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except OSError as exc:  # a full disk, a folder made read-only meanwhile: exit 3, the staging folder removed
        shutil.rmtree(staging, ignore_errors=True)
        raise EnvironmentUnavailable(f"setting up arm64 in {shown_path(final.parent)} failed: {exc.strerror or exc}",
                                     hint=f"free space there (~1 GB) or set {DEVICES_DIR_ENV} to another folder") from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return SetupResult(final, ort_version, np_version, "3.11", f"{Path(emulator).name} {qemu_version(emulator)}", size,
                       time.perf_counter() - started)


__all__ = ["setup_arm64", "SetupResult", "debian_mirror", "check_tools", "devices_dir"]
