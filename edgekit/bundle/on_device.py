"""`edgekit verify BUNDLE/ --device D`: a bundle's checks on an (emulated) device, trusting nothing in the bundle.

QEMU's user-mode emulator is no sandbox: the emulated process shares this machine's file system and user, so code
from a bundle must never run there. This check therefore:

1. copies the manifest and every file it lists into a private folder (mode 0700) on this machine, each read once
   as a regular file that is not a symlink, of bounded size, hashed while it is copied, and compares each file with
   the manifest (and the manifest with --expect-manifest) before anything runs;
2. refuses to go on when any file does not match (a FAIL naming it; nothing is started);
3. runs edgekit's own checks (edgekit.ondevice.check from the installed package, with edgekit's metric core) on
   the private copies, the models loaded by edgekit's own ort_worker.py inside the device (runtimes.emulated
   copies it into a private folder too). The bundle's check.py and its modules are checksummed, never run.

The bundle's own check.py is for the user on the board itself.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from edgekit.core.errors import BadInput, EnvironmentUnavailable

MAX_FILE_BYTES = 8 << 30  # one model file (an .onnx under protobuf's 2 GiB, external data, an .ort): far above any bundle
_CHUNK = 1 << 20


def copy_checked(src: Path, dst: Path, what: str, limit: int = MAX_FILE_BYTES) -> str:
    """Copy one bundle file to `dst` (created new, 0600) and return the sha256 of exactly the bytes copied. A
    symlink, FIFO, device or socket is refused without blocking, an oversize file before it is read."""
    from edgekit.ondevice import check as bundle_check

    digest = hashlib.sha256()
    with bundle_check.open_regular(src, what, limit, follow_symlinks=False,
                                   missing=f"{what} is listed in the manifest but missing from {src.parent}",
                                   refused=f"{what} cannot be opened as a regular file, not a symlink") as f:
        out = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
        copied = 0
        with os.fdopen(out, "wb") as g:
            for chunk in iter(lambda: f.read(_CHUNK), b""):
                copied += len(chunk)
                if copied > limit:
                    raise bundle_check.BrokenBundle(f"{what} grew past {limit} bytes while it was read")
                digest.update(chunk)
                g.write(chunk)
    return digest.hexdigest()


class _DeviceSessions:
    """check.py's session factory for the device: edgekit's create_session on `device`. The device failing to
    run at all (its emulator or Python broken, a worker that never answers) is not the file's failure: it is kept
    and raised after the checks as exit 3, not turned into a FAIL row."""

    def __init__(self, device: str):
        self.device = device
        self.broken: EnvironmentUnavailable | None = None

    def __call__(self, path: Path, provider: str, config: dict):
        from edgekit.ondevice.sessions import PROVIDERS, ProviderNotStarted
        from edgekit.runtimes.ort import create_session

        if self.broken is not None:
            raise ProviderNotStarted(str(self.broken))
        if provider != PROVIDERS["cpu"]:
            raise ProviderNotStarted(f"the device {self.device} runs the CPU provider only")
        try:
            session = create_session(Path(path), "cpu", session_config=config or None, device=self.device).session
        except EnvironmentUnavailable as exc:
            self.broken = exc
            raise ProviderNotStarted(str(exc)) from None
        return _Watched(session, self)


class _Watched:
    """A device session whose run() keeps the device's own failure (exit 3) apart from the file's."""

    def __init__(self, session, owner: _DeviceSessions):
        self._session, self._owner = session, owner

    def __getattr__(self, name):
        return getattr(self._session, name)

    def run(self, *args, **kwargs):
        try:
            return self._session.run(*args, **kwargs)
        except EnvironmentUnavailable as exc:
            self._owner.broken = self._owner.broken or exc
            raise


def device_cpu(device: str, mode: str) -> dict:
    """The device as check.py describes a CPU: edgekit states its flags (QEMU shows a guest the host's cpuinfo)."""
    from edgekit.runtimes.devices import get_device

    spec = get_device(device)
    return {"machine": spec.arch, "model": spec.model, "flags": sorted(spec.flags), "flags_known": True,
            "faked": False, "device": device, "device_mode": mode}


def check_on_device(folder: Path, device: str, apply_session_options: bool = True,
                    expect_manifest: str | None = None) -> dict:
    """The checks of the bundle in `folder` with the models run on `device`, as check.py's result dict (its
    "bundle" is `folder`). BrokenBundle / Tampered propagate (the caller maps them); a device that cannot run is
    EnvironmentUnavailable (exit 3)."""
    from edgekit.ondevice import bundle_files
    from edgekit.ondevice import check as bundle_check
    from edgekit.ondevice.sessions import PROVIDERS
    from edgekit.runtimes.devices import ready_device

    folder = Path(folder)
    if not folder.is_dir():
        raise BadInput(f"bundle {folder} is not a folder", hint="give the folder `edgekit package` wrote")
    try:
        private = Path(tempfile.mkdtemp(prefix="edgekit-device-check-"))  # 0700: no other user sees or swaps the copies
    except OSError as exc:
        raise EnvironmentUnavailable(f"no private temp folder for the device check: {exc.strerror or exc}",
                                     hint="set TMPDIR to a writable folder") from None
    try:
        copy = private / "bundle"
        copy.mkdir(mode=0o700)
        if not (folder / bundle_check.MANIFEST).exists() and not (folder / bundle_check.MANIFEST).is_symlink():
            raise bundle_check.BrokenBundle(f"{folder / bundle_check.MANIFEST} does not exist: is {folder} an edgekit bundle?")
        try:
            copy_checked(folder / bundle_check.MANIFEST, copy / bundle_check.MANIFEST, "manifest.json",
                         bundle_check.MAX_MANIFEST_BYTES)
            manifest = bundle_files.read_manifest(copy, expect_manifest)  # --expect-manifest: Tampered before anything
            checksums = []
            for name, entry in sorted(manifest["files"].items()):
                actual = copy_checked(folder / name, copy / name, name)
                expected = entry["sha256"]
                ok = actual == expected
                checksums.append({"file": name, "ok": ok, "expected": expected, "actual": actual, "reason": None if ok
                                  else f"sha256 mismatch: {name} is {actual[:16]}..., the manifest says {expected[:16]}..."})
        except OSError as exc:  # the temp folder full, or a read error: not the bundle's verdict
            raise EnvironmentUnavailable(f"cannot copy bundle {folder} for the device check: {exc.strerror or exc}",
                                         hint="free space in the temp folder (TMPDIR)") from None
        status = ready_device(device)
        cpu = device_cpu(device, status.mode)
        unlisted = sorted(p.name for p in folder.iterdir() if p.name != bundle_check.MANIFEST
                          and p.name not in manifest["files"] and not p.name.startswith("."))
        notes = [f"not in the manifest, so not checked or copied: {', '.join(unlisted)}"] if unlisted else []
        notes.append("run by edgekit's own checks on checked copies; the bundle's check.py is for the board itself")
        if "openvino" in (manifest.get("check_runtimes") or []):
            notes.append(f"the device {device} runs ONNX Runtime only: OpenVINO is checked by check.py on the board, "
                         "or by edgekit verify BUNDLE/ on this machine")
        bad = [c for c in checksums if not c["ok"]]
        if bad:  # nothing from a bundle that does not match its manifest is run, not even its model
            return {
                "bundle": str(folder), "manifest_sha256": manifest["_sha256"], "model": manifest["model"].get("name"),
                "precision": manifest.get("precision"), "gates": manifest["gates"], "checksums": checksums,
                "cpu": cpu, "session_options": {}, "rows": [], "golden_samples": 0, "passed": False,
                "exit_code": bundle_check.EXIT_FAILED, "notes": notes + ["no model was run: files differ from the manifest"],
                "reasons": [c["reason"] for c in bad],
            }
        sessions = _DeviceSessions(device)
        result = bundle_check.run_checks(copy, [PROVIDERS["cpu"]], cpu, make_session=sessions, runtimes=["ort"],
                                         apply_session_options=apply_session_options,
                                         expect_manifest=manifest["_sha256"])
        if sessions.broken is not None:
            raise sessions.broken
        from edgekit.bundle import scripts_notes

        result["bundle"] = str(folder)
        result["notes"] = ([n for n in result["notes"] if not n.startswith("not in the manifest")] + notes
                           + scripts_notes(checksums))
        return result
    finally:
        shutil.rmtree(private, ignore_errors=True)
