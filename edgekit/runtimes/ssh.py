"""The user's own board as a device: `--device ssh://user@host[:port]` or a name stored with `edgekit devices add`.
The same worker as an emulated device (ondevice/ort_worker.py: .npy tensors over a pipe, nothing pickled), started
over the system's OpenSSH client instead of QEMU: BatchMode, host keys checked strictly (unknown or changed keys are
refused, never accepted), EDGEKIT_SSH_CONFIG (or a stored board's ssh_config) passed as `ssh -F`. On the board, the
worker and the model go to a private `mktemp -d` folder that the remote shell removes when the worker ends, also
when the connection drops. Every remote word is quoted (shlex.quote). Unlike emulation, a board's timings are real.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from urllib.parse import urlsplit

from edgekit.core.errors import BadInput, EnvironmentUnavailable
from edgekit.runtimes.device_kinds import DeviceStatus

SSH_CONFIG_ENV = "EDGEKIT_SSH_CONFIG"
PROBE_TIMEOUT_S = 60
INT8_FLAGS = ("asimddp", "asimddot", "i8mm", "avx512_vnni", "avx_vnni", "amx_int8")
MIN_PYTHON = (3, 8)
_probed: dict[tuple, dict] = {}

# What edgekit asks the board first: printed as one JSON line by the board's own Python (nothing of edgekit).
PROBE = r"""
import json, os, platform, sys
facts = {"machine": platform.machine(), "python": "%d.%d.%d" % sys.version_info[:3], "cores": os.cpu_count(),
         "model": "", "flags": []}
try:
    with open("/proc/cpuinfo") as f:
        for line in f:
            key, _, value = line.partition(":")
            key, value = key.strip().lower(), value.strip()
            if key in ("model name", "hardware", "cpu model") and not facts["model"]:
                facts["model"] = value
            elif key in ("flags", "features") and not facts["flags"]:
                facts["flags"] = value.split()
            elif key == "cpu part" and not facts["model"]:
                facts["model"] = "Arm CPU part " + value
except OSError:
    pass
for name in ("numpy", "onnxruntime"):
    try:
        facts[name] = __import__(name).__version__
    except Exception as exc:
        facts[name] = None
        facts[name + "_error"] = str(exc).splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
print("EDGEKIT-PROBE " + json.dumps(facts))
"""


@dataclass(frozen=True)
class Board:
    """A board edgekit reaches over SSH: as the user named it, where, and with which Python and ssh_config."""

    name: str
    url: str
    user: str | None
    host: str
    port: int | None
    python: str = "python3"
    ssh_config: str | None = None

    def ssh(self, connect_timeout: int = 15) -> list[str]:
        """The OpenSSH client's argv up to the remote command: strict host keys, no prompts."""
        exe = shutil.which("ssh")
        if exe is None:
            raise EnvironmentUnavailable("the OpenSSH client (ssh) is not on PATH",
                                         hint="Debian/Ubuntu: apt-get install openssh-client")
        argv = [exe]
        if self.ssh_config:
            argv += ["-F", self.ssh_config]
        for option in ("BatchMode=yes", "StrictHostKeyChecking=yes", f"ConnectTimeout={connect_timeout}",
                       "ServerAliveInterval=5", "ServerAliveCountMax=3", "LogLevel=ERROR"):
            argv += ["-o", option]
        if self.port:
            argv += ["-p", str(self.port)]
        if self.user:
            argv += ["-l", self.user]
        return [*argv, "--", self.host]


_WORD = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")


def parse_url(url: str, name: str | None = None, python: str | None = None, ssh_config: str | None = None) -> Board:
    """ssh://user@host[:port] as a Board; a password, a path, an option-like host or user is BadInput."""
    text = str(url).strip()
    parts = urlsplit(text)
    where = f"--device {text}"
    if parts.scheme != "ssh":
        raise BadInput(f"{where}: not an ssh:// address", hint="write ssh://user@host or ssh://user@host:port")
    if parts.password is not None:
        raise BadInput(f"{where}: a password in the address is refused",
                       hint="use a key: ssh-copy-id user@host, then ssh://user@host")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise BadInput(f"{where}: an ssh address names a user, a host and a port only",
                       hint="write ssh://user@host or ssh://user@host:port")
    try:
        port = parts.port
    except ValueError:
        raise BadInput(f"{where}: the port is not a number from 1 to 65535", hint="write ssh://user@host:2222") from None
    host, user = parts.hostname, parts.username
    if not host or not (_WORD.match(host) or re.match(r"^[0-9a-fA-F:]+$", host)):
        raise BadInput(f"{where}: {host or 'no host'!r} is not a host name", hint="write ssh://user@host")
    if user is not None and not _WORD.match(user):
        raise BadInput(f"{where}: {user!r} is not a user name", hint="write ssh://user@host")
    if port == 0:
        raise BadInput(f"{where}: the port is not a number from 1 to 65535", hint="write ssh://user@host:2222")
    config = ssh_config if ssh_config is not None else os.environ.get(SSH_CONFIG_ENV) or None
    return Board(name or text, text, user, host, port, python or "python3", config)


def ssh_failure(board: Board, log: str, code: int | None) -> str | None:
    """Why ssh itself failed (exit 255 and its stderr), in one phrase; None where ssh says nothing known."""
    text = log.lower()
    if "remote host identification has changed" in text:
        return "its host key has CHANGED since it was recorded in known_hosts; refused (check the board, then " \
               "remove the old key with ssh-keygen -R)"
    if "host key verification failed" in text or "no ed25519 host key is known" in text or "host key is known" in text:
        return f"its host key is not in known_hosts; refused (connect once with ssh {board.host} to check and " \
               "record it)"
    if "permission denied" in text:
        return "it refused the key (Permission denied): install your public key on the board (ssh-copy-id)"
    if "could not resolve hostname" in text or "name or service not known" in text:
        return "the host name does not resolve"
    if "connection refused" in text or "timed out" in text or "no route to host" in text or "network is unreachable" in text:
        return "unreachable (" + _last(log) + ")"
    if "connection closed" in text or "broken pipe" in text or "connection reset" in text or "timeout, server" in text:
        return "the connection dropped (" + _last(log) + ")"
    if "can't open user config" in text or "bad configuration" in text or "no such file" in text and "config" in text:
        return "ssh cannot use its config file (" + _last(log) + f"; {SSH_CONFIG_ENV})"
    if code == 255:
        return "the connection to the board failed or dropped (ssh exit 255: " + _last(log) + ")"
    return None


def _last(log: str) -> str:
    lines = [line.strip() for line in log.splitlines() if line.strip()]
    return (lines[-1] if lines else "no message")[:200]


def probe(board: Board, timeout: float = PROBE_TIMEOUT_S, connect_timeout: int = 15) -> dict:
    """What the board says about itself (machine, CPU model, flags, cores, python/numpy/onnxruntime), once per
    process; EnvironmentUnavailable (exit 3) where it cannot be reached or its Python cannot run."""
    key = (board.url, board.python, board.ssh_config)
    if key in _probed:
        return _probed[key]
    command = f"{shlex.quote(board.python)} -c {shlex.quote(PROBE)}"
    argv = [*board.ssh(connect_timeout), command]
    try:
        done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise EnvironmentUnavailable(f"board {board.name}: no answer in {timeout:.0f} s") from None
    out, err = done.stdout.decode(errors="replace"), done.stderr.decode(errors="replace")
    if done.returncode == 255:
        raise EnvironmentUnavailable(f"board {board.name}: {ssh_failure(board, err, 255)}")
    lines = [line for line in out.splitlines() if line.startswith("EDGEKIT-PROBE ")]
    try:
        facts = json.loads(lines[-1][len("EDGEKIT-PROBE "):]) if lines else None
    except ValueError:
        facts = None
    if not isinstance(facts, dict):
        said = _last(err or out)
        raise EnvironmentUnavailable(f"board {board.name}: its Python {board.python!r} cannot run ({said})",
                                     hint=f"install Python >= 3.8 with: apt-get install python3 python3-pip, or name "
                                          f"another with edgekit devices add NAME {board.url} --python PATH")
    _probed[key] = facts
    return facts


def pip_line(board: Board, facts: dict) -> str:
    """The exact line that installs what the board lacks (onnxruntime at this machine's version)."""
    import onnxruntime

    wanted = [n for n in ("numpy", "onnxruntime") if not facts.get(n)]
    pins = {"onnxruntime": f"onnxruntime=={onnxruntime.__version__.split('+')[0]}", "numpy": "numpy"}
    return f"{board.python} -m pip install {' '.join(pins[n] for n in wanted)}"


def missing(board: Board, facts: dict) -> list[str]:
    """What the board lacks to run edgekit's worker (empty: ready)."""
    out = []
    python = tuple(int(p) for p in re.findall(r"\d+", str(facts.get("python")))[:2])
    if python < MIN_PYTHON:
        out.append(f"Python >= 3.8 (the board's {board.python} is {facts.get('python')})")
    if not facts.get("numpy") or not facts.get("onnxruntime"):
        lacking = [n for n in ("numpy", "onnxruntime") if not facts.get(n)]
        out.append(f"{' and '.join(lacking)} in {board.python} (on the board: {pip_line(board, facts)})")
    return out


def cpu_line(facts: dict) -> str:
    int8 = [f for f in INT8_FLAGS if f in set(facts.get("flags") or ())]
    return (f"{facts.get('model') or 'unknown CPU'} ({facts.get('machine')}, {facts.get('cores')} cores, int8: "
            f"{', '.join(int8) or 'no dot-product extension'})")


def board_status(board: Board, connect_timeout: int = 15) -> DeviceStatus:
    """A DeviceStatus for a board (mode "ssh"); unreachable or unusable is ready=False with the reason."""
    try:
        facts = probe(board, connect_timeout=connect_timeout)
    except EnvironmentUnavailable as exc:
        return DeviceStatus(board.name, board.url, "ssh", False, [], board.python, {},
                            [str(exc).removeprefix(f"board {board.name}: ")])
    lacking = missing(board, facts)
    about = (f"{board.url}: {cpu_line(facts)}, Python {facts.get('python')}, numpy {facts.get('numpy') or '-'}, "
             f"onnxruntime {facts.get('onnxruntime') or '-'}")
    return DeviceStatus(board.name, about, "ssh", not lacking, [], board.python, {}, lacking)


def board_device(board: Board):
    """The board as a runtimes.devices.Device: its own machine, CPU model and flags (asked once)."""
    from edgekit.runtimes.device_kinds import Device

    facts = probe(board)
    flags = set(facts.get("flags") or ())
    if "asimddot" in flags:  # the dot-product flag's names differ by kernel; edgekit's judgement reads asimddp
        flags.add("asimddp")
    return Device(board.name, str(facts.get("machine")), "ssh", frozenset(flags),
                  str(facts.get("model") or "unknown CPU"), f"{board.url}: {cpu_line(facts)}")


def remote_command(board: Board, sizes: tuple[int, int], config: dict, optimization: str) -> str:
    """The shell line the board runs: a private temp folder removed on exit, worker and model read from stdin by
    exact byte counts, then edgekit's worker. A write that fails (a full disk) says so and exits 91."""
    q = shlex.quote
    worker_size, model_size = sizes
    return (
        "umask 077; d=$(mktemp -d) || { echo 'edgekit: mktemp -d failed on the board' >&2; exit 90; }; "
        "trap 'rm -rf \"$d\"' EXIT; trap 'exit 129' HUP INT TERM PIPE; "
        f"head -c {int(worker_size)} > \"$d/ort_worker.py\" && head -c {int(model_size)} > \"$d/model.onnx\" "
        "|| { echo \"edgekit: cannot write the model to $d on the board: $(df -h \"$d\" 2>/dev/null | tail -1)\" >&2; "
        "exit 91; }; "
        f"[ \"$(wc -c < \"$d/model.onnx\")\" -eq {int(model_size)} ] || "
        "{ echo 'edgekit: the model arrived short (disk full or connection dropped)' >&2; exit 91; }; "
        f"cd \"$d\" && {q(board.python)} ort_worker.py model.onnx {q(json.dumps(config or {}))} {q(optimization)}"
    )


