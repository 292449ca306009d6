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
import signal
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgekit.core.errors import CheckFailed, EnvironmentUnavailable, one_line
from edgekit.ondevice import script_path
from edgekit.runtimes.devices import DeviceStatus, device_timeout, emulator_log, qemu_version

WORKER = script_path("ort_worker.py")
# How long the worker may take to start (an emulated CPU initialises a large graph slowly) and to answer one
# batch: runtimes.devices.device_timeout(), 3 minutes unless --device-timeout says otherwise.


@dataclass(frozen=True)
class _Value:
    """What onnxruntime's NodeArg tells edgekit: name, shape (None for a dynamic axis), type."""

    name: str
    shape: list
    type: str


class EmulatedSession:
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
        try:
            hello = self._answer()
        except BaseException:
            self.close()
            raise
        if not hello.get("ok"):
            self.close()
            raise _LoadFailed(hello.get("error") or "the worker said nothing")
        self._inputs = [_Value(v["name"], v["shape"], v["type"]) for v in hello["inputs"]]
        self._outputs = [_Value(v["name"], v["shape"], v["type"]) for v in hello["outputs"]]
        self._providers = list(hello["providers"])
        self.onnxruntime = hello.get("onnxruntime")

    def _answer(self, timeout: float | None = None) -> dict:
        """The worker's next answer; its death (a signal, an exit), silence past `timeout` (default: the device
        timeout) or an answer that is not one is exit 3, naming the device, the emulator and why."""
        timeout = device_timeout() if timeout is None else timeout
        timed_out = threading.Event()

        def kill():
            timed_out.set()
            self._proc.kill()

        timer = threading.Timer(timeout, kill)
        timer.start()
        try:
            line = self._proc.stdout.readline()
        finally:
            timer.cancel()
        if not line:
            code = self._proc.wait()
            self._stderr.seek(0)
            log = emulator_log(self._stderr.read().decode(errors="replace"))
            if timed_out.is_set():
                why = f"no answer in {timeout:.0f} s, stopped (--device-timeout SECONDS gives a slow board longer)"
            elif code < 0:
                why = f"killed by {signal.Signals(-code).name}" + (f" ({log[-1][:200]})" if log else "")
            else:
                why = log[-1][:300] if log else f"exit code {code}"
            raise EnvironmentUnavailable(f"the emulated device {self.device} ({self._emulator}) stopped: {why}",
                                         hint="edgekit devices says what it needs; nothing was written")
        try:
            answer = json.loads(line)
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            self._proc.kill()
            raise EnvironmentUnavailable(f"the emulated device {self.device} ({self._emulator}) answered "
                                         f"{line[:60]!r}, not its protocol", hint="edgekit devices says what it needs")
        return answer

    def get_inputs(self) -> list[_Value]:
        return list(self._inputs)

    def get_outputs(self) -> list[_Value]:
        return list(self._outputs)

    def get_providers(self) -> list[str]:
        return list(self._providers)

    def end_profiling(self) -> str:
        return ""

    def run(self, output_names, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        from edgekit.ondevice.ort_worker import npy_bytes, read_npy

        arrays = [npy_bytes(a) for a in feeds.values()]
        with self._lock:
            pipe = self._proc.stdin
            try:
                pipe.write((json.dumps({"run": list(feeds), "bytes": [len(a) for a in arrays]}) + "\n").encode())
                for data in arrays:
                    pipe.write(data)
                pipe.flush()
            except (OSError, ValueError):  # the worker is gone: _answer says how it ended (exit 3)
                pass
            answer = self._answer()
            if not answer.get("ok"):
                raise RuntimeError(answer.get("error"))
            outputs = [read_npy(self._proc.stdout, size) for size in answer["bytes"]]
        if output_names:
            index = {v.name: i for i, v in enumerate(self._outputs)}
            return [outputs[index[n]] for n in output_names]
        return outputs

    def _remove_private(self) -> None:
        private = getattr(self, "_private", None)
        if private:
            shutil.rmtree(private, ignore_errors=True)
            self._private = None

    def close(self) -> None:
        proc = getattr(self, "_proc", None)
        if proc is None or proc.poll() is not None:
            self._remove_private()
            return
        with contextlib.suppress(OSError, ValueError):
            proc.stdin.write(b"\n")
            proc.stdin.close()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        self._remove_private()

    def __del__(self):
        with contextlib.suppress(Exception):
            self.close()


class _LoadFailed(Exception):
    """The device's onnxruntime refused the file (the caller knows which file and what that means)."""


def emulated_session(status: DeviceStatus, model: Path | bytes, session_config: dict[str, str] | None,
                     optimization: str = "all") -> EmulatedSession:
    """A session of `model` on the device `status` describes; a model the device's onnxruntime cannot load is
    CheckFailed naming the device (the file's problem on that CPU, exit 1)."""
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
