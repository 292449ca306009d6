"""An ONNX Runtime session inside an emulated device: the same interface as onnxruntime.InferenceSession
(get_inputs, get_outputs, get_providers, run), served by ort_worker.py in a process that QEMU runs as the
device's CPU. Tensors cross as .npy arrays over the worker's stdin/stdout; nothing is pickled.

Numerics only: the time a run takes under emulation says nothing about the device's speed.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path


from edgekit.core.errors import CheckFailed, EnvironmentUnavailable, one_line
from edgekit.runtimes.devices import DeviceStatus, emulator_log, qemu_version
from edgekit.runtimes.worker_session import WORKER, WorkerSession, _LoadFailed

# How long the worker may take to start (an emulated CPU initialises a large graph slowly) and to answer one
# batch: runtimes.devices.device_timeout(), 3 minutes unless --device-timeout says otherwise.


class EmulatedSession(WorkerSession):
    """A CPU session of `model` on an emulated device; close() (or garbage collection) ends the worker."""

    def __init__(self, status: DeviceStatus, model: Path, session_config: dict[str, str] | None, optimization: str):
        self.device = status.name
        self._emulator = f"{Path(status.command[0]).name} {qemu_version(status.command[0])}" if status.command else "native"
        self._stderr = tempfile.TemporaryFile()
        # edgekit's own worker, copied from the installed package into a private (0700) folder: what runs in the
        # device is exactly the code edgekit ships, never a file beside the model
        try:
            self._private = tempfile.mkdtemp(prefix="edgekit-worker-")
            worker = Path(self._private) / WORKER.name
            shutil.copyfile(WORKER, worker)
        except OSError as exc:
            self._remove_private()
            raise EnvironmentUnavailable(f"device {self.device}: cannot stage edgekit's worker in a private temp "
                                         f"folder: {exc.strerror or exc}", hint="set TMPDIR to a writable folder") from None
        argv = status.argv(worker, Path(model).resolve(), json.dumps(session_config or {}), optimization)
        try:
            self._proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr,
                                          env=status.environ(), cwd=self._private)
        except OSError as exc:
            self._remove_private()
            raise EnvironmentUnavailable(f"device {self.device}: cannot start {argv[0]}: {one_line(exc)}") from None
        self._lock = threading.Lock()
        self._greet()

    def _what(self) -> str:
        return f"the emulated device {self.device} ({self._emulator})"

    def _log(self, text: str) -> list[str]:
        return emulator_log(text)


def emulated_session(status: DeviceStatus, model: Path | bytes, session_config: dict[str, str] | None,
                     optimization: str = "all") -> EmulatedSession:
    """A session of `model` on the device `status` describes; a model the device's onnxruntime cannot load is
    CheckFailed naming the device (the file's problem on that CPU, exit 1)."""
    if status.mode == "ssh":  # the user's own board: the same worker, over SSH (runtimes/ssh_session.py)
        from edgekit.runtimes.ssh_session import ssh_session

        return ssh_session(status, model, session_config, optimization)
    cleanup = None
    if isinstance(model, bytes):
        handle, name = tempfile.mkstemp(suffix=".onnx", prefix="edgekit-device-")
        with os.fdopen(handle, "wb") as f:
            f.write(model)
        model, cleanup = Path(name), name
    try:
        return EmulatedSession(status, Path(model), session_config, optimization)
    except _LoadFailed as exc:
        raise CheckFailed(f"ONNX Runtime on the device {status.name} cannot load {Path(model).name}: {exc}") from None
    finally:
        if cleanup:
            with contextlib.suppress(OSError):
                os.remove(cleanup)
