"""The host's side of edgekit's device worker (ondevice/ort_worker.py): an ONNX Runtime session in another
process with the interface of onnxruntime.InferenceSession (get_inputs, get_outputs, get_providers, run). Tensors
cross as .npy arrays over the worker's stdin/stdout; nothing is pickled. runtimes/emulated.py starts the worker
under QEMU, runtimes/ssh_session.py on the user's own board over SSH; both share this class."""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import subprocess
import threading
from dataclasses import dataclass

import numpy as np

from edgekit.core.errors import EnvironmentUnavailable
from edgekit.ondevice import script_path
from edgekit.runtimes.device_kinds import device_timeout

WORKER = script_path("ort_worker.py")


@dataclass(frozen=True)
class _Value:
    """What onnxruntime's NodeArg tells edgekit: name, shape (None for a dynamic axis), type."""

    name: str
    shape: list
    type: str


class WorkerSession:
    """A session served by a running worker process (self._proc, its stderr in self._stderr); close() (or garbage
    collection) ends the worker. Subclasses start the process and say what the device is (_what, _why)."""

    device: str

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
            log = self._log(self._stderr.read().decode(errors="replace"))
            if timed_out.is_set():
                why = f"no answer in {timeout:.0f} s, stopped (--device-timeout SECONDS gives a slow board longer)"
            else:
                why = self._why(code, log)
            raise EnvironmentUnavailable(f"{self._what()} stopped: {why}",
                                         hint="edgekit devices says what it needs; nothing was written")
        try:
            answer = json.loads(line)
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            self._proc.kill()
            raise EnvironmentUnavailable(f"{self._what()} answered {line[:60]!r}, not its protocol",
                                         hint="edgekit devices says what it needs")
        return answer

    def _greet(self, timeout: float | None = None) -> None:
        """Read the worker's first answer: the model loaded (its inputs, outputs, providers, ORT version), or
        _LoadFailed with the worker's reason; the session is closed on any failure."""
        try:
            hello = self._answer(timeout=timeout)
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

    def _why(self, code: int, log: list[str]) -> str:
        """Why the worker's process ended, from its exit code and the last line it logged."""
        if code < 0:
            return f"killed by {signal.Signals(-code).name}" + (f" ({log[-1][:200]})" if log else "")
        return log[-1][:300] if log else f"exit code {code}"

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

    def time_runs(self, feeds: dict[str, np.ndarray], runs: int, warmup: int = 1,
                  interval_ms: float | None = None) -> list[float]:
        """Milliseconds of `runs` calls timed by the worker on the device's own clock (see ort_worker.py)."""
        from edgekit.ondevice.ort_worker import npy_bytes

        arrays = [npy_bytes(a) for a in feeds.values()]
        request = {"time": list(feeds), "bytes": [len(a) for a in arrays], "runs": int(runs), "warmup": int(warmup),
                   "interval_ms": interval_ms}
        with self._lock:
            try:
                self._proc.stdin.write((json.dumps(request) + "\n").encode())
                for data in arrays:
                    self._proc.stdin.write(data)
                self._proc.stdin.flush()
            except (OSError, ValueError):
                pass
            answer = self._answer()
        if not answer.get("ok"):
            raise RuntimeError(answer.get("error"))
        return [float(v) for v in answer["ms"]]

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


    def _log(self, text: str) -> list[str]:
        return [line for line in text.splitlines() if line.strip()]

    def _what(self) -> str:
        return f"the device {self.device}"


class _LoadFailed(Exception):
    """The device's onnxruntime refused the file (the caller knows which file and what that means)."""
