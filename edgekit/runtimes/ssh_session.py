"""An ONNX Runtime session on the user's own board: edgekit's worker (ondevice/ort_worker.py) started over SSH,
with the same interface and protocol as an emulated device's session (runtimes/emulated.py). The worker and the
model cross on the ssh channel's stdin by exact byte counts into a private temp folder on the board, which the
remote shell removes when the worker ends (also when the connection drops or the host is interrupted)."""

from __future__ import annotations

import subprocess
import tempfile
import threading
from pathlib import Path

from edgekit.core.errors import CheckFailed, EnvironmentUnavailable, one_line
from edgekit.runtimes.device_kinds import DeviceStatus, device_timeout
from edgekit.runtimes.worker_session import WORKER, WorkerSession, _LoadFailed
from edgekit.runtimes.ssh import Board, cpu_line, probe, remote_command, ssh_failure

MAX_MODEL_BYTES = 2 << 30  # a model sent to a board is one file of at most 2 GiB (ONNX's protobuf limit)


class SshSession(WorkerSession):
    """A CPU session of a model on a board over SSH; close() ends the worker and with it the remote folder."""

    def __init__(self, board: Board, model: Path | bytes, session_config: dict[str, str] | None, optimization: str):
        self.device = board.name
        self.board = board
        self.facts = probe(board)
        self._emulator = "ssh"
        self._private = None
        worker = WORKER.read_bytes()
        data = _model_bytes(model)
        self._stderr = tempfile.TemporaryFile()
        argv = [*board.ssh(), remote_command(board, (len(worker), len(data)), session_config or {}, optimization)]
        try:
            self._proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr)
        except OSError as exc:
            raise EnvironmentUnavailable(f"board {board.name}: cannot start ssh: {one_line(exc)}") from None
        self._lock = threading.Lock()
        try:
            # written from a thread: a board that stops reading (a full disk) must not block the host forever
            sender = threading.Thread(target=self._send, args=(worker + data,), daemon=True)
            sender.start()
        except BaseException:
            self.close()
            raise
        self._greet(timeout=device_timeout())

    def _send(self, data: bytes) -> None:
        try:
            self._proc.stdin.write(data)
            self._proc.stdin.flush()
        except (OSError, ValueError):  # the board stopped reading: _answer says why (exit 3)
            pass

    def _what(self) -> str:
        return f"the board {self.device} ({self.board.url})"

    def _why(self, code: int, log: list[str]) -> str:
        text = "\n".join(log)
        ssh = ssh_failure(self.board, text, code)
        if ssh is not None:
            return ssh
        said = [line for line in log if line.startswith("edgekit: ")]
        if said:
            return said[-1][len("edgekit: "):][:300]
        if code > 128:
            return f"the worker was killed by signal {code - 128}" + (f" ({log[-1][:200]})" if log else "")
        return (log[-1][:300] if log else f"the worker ended with exit code {code}")

    def cpu_line(self) -> str:
        return cpu_line(self.facts)


def _model_bytes(model: Path | bytes) -> bytes:
    if isinstance(model, bytes):
        return model
    path = Path(model)
    size = path.stat().st_size
    if size > MAX_MODEL_BYTES:
        raise CheckFailed(f"{path.name} is {size / 1e9:.1f} GB: more than a board session takes (2 GiB)")
    return path.read_bytes()


def ssh_session(status: DeviceStatus, model: Path | bytes, session_config: dict[str, str] | None,
                optimization: str = "all") -> SshSession:
    """A session of `model` on the board `status` names; a model the board's onnxruntime cannot load is
    CheckFailed naming the board (the file's problem on that CPU, exit 1)."""
    from edgekit.runtimes.boards import board_of

    board = board_of(status.name)
    try:
        return SshSession(board, model, session_config, optimization)
    except _LoadFailed as exc:
        name = "the model" if isinstance(model, bytes) else Path(model).name
        raise CheckFailed(f"ONNX Runtime on the board {status.name} cannot load {name}: {exc}") from None
