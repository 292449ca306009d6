"""`--device ssh://user@host` and named boards, against a REAL OpenSSH server (Debian's openssh-server) on
127.0.0.1 (loopback only) with a generated host key and user key, a known_hosts file and an ssh_config file given
as EDGEKIT_SSH_CONFIG. The "x86 box" is a bare venv with only numpy + onnxruntime (scripts/emulators.sh makes it
under ~/.cache/edgekit/ssh-box); the "fake ARM board" is the arm64 sysroot's Python under qemu-aarch64, whose
outputs must be bit-identical to --device arm64-a76. No mocks: where sshd is missing or cannot start, the lane
skips with the reason. Faults: each one line, exit 3, nothing left on either side."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.ssh

SSHD = "/usr/sbin/sshd"
BOX = Path(os.environ.get("EDGEKIT_SSH_BOX") or Path.home() / ".cache" / "edgekit" / "ssh-box")
EDGEKIT = [sys.executable, "-m", "edgekit"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Sshd:
    """One sshd -D on 127.0.0.1:port, its keys and files in `root`; the client side's known_hosts and ssh_config."""

    def __init__(self, root: Path):
        self.root = root
        self.port = _free_port()
        self.proc: subprocess.Popen | None = None
        keygen = ["ssh-keygen", "-q", "-t", "ed25519", "-N", ""]
        subprocess.run([*keygen, "-f", str(root / "host_key")], check=True)
        subprocess.run([*keygen, "-f", str(root / "id_ed25519")], check=True)
        shutil.copy(root / "id_ed25519.pub", root / "authorized_keys")
        host_pub = (root / "host_key.pub").read_text().split()
        self.known_hosts = f"[127.0.0.1]:{self.port} {host_pub[0]} {host_pub[1]}\n"
        (root / "known_hosts").write_text(self.known_hosts)
        (root / "sshd_config").write_text(
            f"Port {self.port}\nListenAddress 127.0.0.1\nHostKey {root / 'host_key'}\nPidFile {root / 'sshd.pid'}\n"
            f"AuthorizedKeysFile {root / 'authorized_keys'}\nPermitRootLogin prohibit-password\n"
            "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n"
            "PrintMotd no\nMaxStartups 50\nAcceptEnv TMPDIR\n")
        self.config = root / "ssh_config"
        self.write_client_config()

    def write_client_config(self, identity: str | None = None, tmpdir: str | None = None) -> None:
        identity = identity or str(self.root / "id_ed25519")
        self.config.write_text(
            f"Host 127.0.0.1\n  IdentityFile {identity}\n  IdentitiesOnly yes\n"
            f"  UserKnownHostsFile {self.root / 'known_hosts'}\n  GlobalKnownHostsFile /dev/null\n"
            "  PreferredAuthentications publickey\n" + (f"  SetEnv TMPDIR={tmpdir}\n" if tmpdir else ""))

    def start(self) -> None:
        os.makedirs("/run/sshd", exist_ok=True)  # sshd's privilege-separation folder
        self.proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(self.root / "sshd_config")],
                                     stdout=subprocess.DEVNULL, stderr=open(self.root / "sshd.log", "wb"))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError((self.root / "sshd.log").read_text()[-300:])
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.05)
        raise RuntimeError("sshd did not listen in 10 s")

    def children(self) -> list[int]:
        """The per-connection sshd processes this sshd started (and their children), by walking /proc."""
        parents: dict[int, int] = {}
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    stat = (entry / "stat").read_text()
                    parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
                except (OSError, ValueError, IndexError):
                    pass
        found, todo = [], [self.proc.pid]
        while todo:
            pid = todo.pop()
            kids = [p for p, pp in parents.items() if pp == pid]
            found += kids
            todo += kids
        return found

    def kill(self) -> None:
        """sshd and every connection it serves, killed (the 'connection dropped' fault): the sshd processes only,
        so the board's own shell sees its channel close as it would on a network fault."""
        if self.proc is None:
            return
        kids = []
        for pid in self.children():
            try:
                if Path(f"/proc/{pid}/comm").read_text().strip().startswith("sshd"):
                    kids.append(pid)
            except OSError:
                pass
        for pid in [self.proc.pid, *kids]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait()
        self.proc = None

    def url(self, user: str = "root") -> str:
        return f"ssh://{user}@127.0.0.1:{self.port}"


def _why_not() -> str | None:
    if not Path(SSHD).is_file() or not shutil.which("ssh") or not shutil.which("ssh-keygen"):
        return "openssh-server/openssh-client are not installed (scripts/emulators.sh installs them as root)"
    if os.geteuid() != 0:
        return "the test sshd logs in as root with a generated key; run the ssh lane as root"
    return None


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    why = _why_not()
    if why:
        pytest.skip(why)
    server = Sshd(tmp_path_factory.mktemp("sshd"))
    try:
        server.start()
    except RuntimeError as exc:
        pytest.skip(f"sshd cannot start here: {exc}")
    yield server
    server.kill()


@pytest.fixture(scope="module")
def box():
    python = BOX / "bin" / "python"
    if not python.is_file():
        pytest.skip(f"the x86 box's venv {BOX} is not there (scripts/emulators.sh makes it: numpy + onnxruntime)")
    return python


@pytest.fixture
def env(sshd, tmp_path):
    """The CLI's environment: the test's ssh_config and a private XDG_CONFIG_HOME for devices.toml."""
    return {**os.environ, "EDGEKIT_SSH_CONFIG": str(sshd.config), "XDG_CONFIG_HOME": str(tmp_path / "config")}


def edgekit(args, env, timeout=240) -> subprocess.CompletedProcess:
    return subprocess.run([*EDGEKIT, *map(str, args)], capture_output=True, text=True, cwd=ROOT, env=env,
                          timeout=timeout)


def remote_leftovers() -> list[str]:
    """edgekit's private folders left in the board's temp folder (the board is this machine's /tmp)."""
    return sorted(p.name for p in Path(os.environ.get("TMPDIR") or "/tmp").glob("tmp.*")
                  if (p / "ort_worker.py").exists() or (p / "model.onnx").exists())


def one_line_exit3(res: subprocess.CompletedProcess) -> str:
    assert res.returncode == 3, (res.returncode, res.stdout[-500:], res.stderr[-1000:])
    assert "Traceback" not in res.stderr
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, res.stderr
    return lines[0]


def remote_python(folder: Path, name: str, body: str) -> Path:
    """A 'python' on the board: a shell script (the board and this machine share a filesystem here)."""
    path = folder / name
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(0o755)
    return path


@pytest.fixture(scope="module")
def int8_file(exported, calibration_npz, tmp_path_factory):
    """A small int8 ResNet (32 px) with the arm64 recipe: a file meant for an ARM board (the session's export;
    calibrated from a .npz of the photos, it meets its budget without a fallback search)."""
    from edgekit.quantize import quantize

    folder = tmp_path_factory.mktemp("ssh-models")
    fp32 = exported("textbook_resnet18", 32).path
    return quantize(fp32, target="arm64", calibration=calibration_npz(32), output=folder / "r.int8.onnx").path


def test_a_named_board_is_added_listed_verified_on_and_removed(sshd, box, env, int8_file, tmp_path):
    res = edgekit(["devices", "add", "box", sshd.url(), "--python", box, "--ssh-config", sshd.config], env)
    assert res.returncode == 0, res.stderr
    stored = Path(env["XDG_CONFIG_HOME"]) / "edgekit" / "devices.toml"
    assert "[boards.box]" in stored.read_text() and not [p for p in stored.parent.iterdir() if p.suffix == ".tmp"]
    env = {**env, "EDGEKIT_SSH_CONFIG": ""}  # the stored --ssh-config is what reaches the test's sshd now
    res = edgekit(["devices", "--json"], env)
    assert res.returncode == 0, res.stderr
    boards = {d["name"]: d for d in json.loads(res.stdout)["devices"] if d["mode"] == "ssh"}
    assert boards["box"]["ready"] and "onnxruntime 1.31.1" in boards["box"]["about"]
    assert "x86_64" in boards["box"]["about"] and "cores" in boards["box"]["about"]

    res = edgekit(["verify", int8_file, "--device", "box", "--random-inputs", "0", "--report", tmp_path / "v.json"], env)
    assert res.returncode == 0, res.stderr
    report = json.loads((tmp_path / "v.json").read_text())
    assert {c["device"] for c in report["comparisons"]} == {"box"}
    board_note = [n for n in report["notes"] if n.startswith("judged on the board box")]
    assert board_note and "onnxruntime 1.31.1" in board_note[0] and "cores" in board_note[0]
    assert any("the file's recipe is arm64; this board's CPU calls for x86" in n for n in report["notes"])
    assert remote_leftovers() == []

    # bench: real timings, taken on the board's own clock; the table and the JSON name the board's CPU
    res = edgekit(["bench", int8_file, "--device", "box", "--runs", "3", "--warmup", "1", "--interval", "20"], env)
    assert res.returncode == 0, res.stderr
    assert "board box:" in res.stdout and "x86_64" in res.stdout and "p50 every 20 ms" in res.stdout
    res = edgekit(["bench", int8_file, "--device", "box", "--runs", "3", "--json"], env)
    result = json.loads(res.stdout)
    assert result["board"]["onnxruntime"] == "1.31.1" and result["board"]["cores"] >= 1
    assert len(result["timings"][0]["samples_ms"]) == 3 and result["timings"][0]["p50_ms"] > 0
    res = edgekit(["bench", int8_file, "--device", "box", "--torch"], env)
    assert res.returncode == 2 and "--torch" in res.stderr and "Traceback" not in res.stderr
    assert remote_leftovers() == []

    assert edgekit(["devices", "remove", "box"], env).returncode == 0
    res = edgekit(["verify", int8_file, "--device", "box"], env)
    assert res.returncode == 2 and "unknown device 'box'" in res.stderr


def test_bad_board_names_and_addresses_are_refused(sshd, env):
    for args, said in ((["devices", "add", "x86-avx2", sshd.url()], "cannot name a board"),
                       (["devices", "add", "pi", "ssh://pi:secret@pi5.local"], "a password in the address is refused"),
                       (["devices", "add", "pi", "ssh://-oProxyCommand=x"], "not a host name"),
                       (["devices", "remove", "nothere"], "no board named")):
        res = edgekit(args, env)
        assert res.returncode == 2 and said in res.stderr and "Traceback" not in res.stderr, res.stderr
    assert not (Path(env["XDG_CONFIG_HOME"]) / "edgekit" / "devices.toml").exists()


def test_ssh_faults_are_one_line_exit_3(sshd, box, env, int8_file, tmp_path):
    url = sshd.url()
    # a board whose python has neither numpy nor onnxruntime: the exact pip line
    bare = remote_python(tmp_path, "bare", f'exec {sys.executable} -S -I "$@"')
    edgekit(["devices", "add", "bare", url, "--python", bare], env)
    line = one_line_exit3(edgekit(["verify", int8_file, "--device", "bare"], env))
    assert f"{bare} -m pip install numpy onnxruntime==" in line
    # a python that is garbage
    garbage = remote_python(tmp_path, "garbage", "echo 'not a python'; exit 1")
    edgekit(["devices", "add", "garbage", url, "--python", garbage], env)
    assert "cannot run" in one_line_exit3(edgekit(["verify", int8_file, "--device", "garbage"], env))
    # a worker that dies on the board
    dying = remote_python(tmp_path, "dying", f'case "$1" in ort_worker.py) kill -KILL $$;; esac\nexec {box} "$@"')
    edgekit(["devices", "add", "dying", url, "--python", dying], env)
    assert "killed by signal 9" in one_line_exit3(edgekit(["verify", int8_file, "--device", "dying",
                                                           "--random-inputs", "0"], env))
    # a worker that does not answer: given up after --device-timeout
    slow = remote_python(tmp_path, "slow", f'case "$1" in ort_worker.py) sleep 4;; esac\nexec {box} "$@"')
    edgekit(["devices", "add", "slow", url, "--python", slow], env)
    assert "no answer in 1 s" in one_line_exit3(edgekit(["verify", int8_file, "--device", "slow", "--random-inputs",
                                                         "0", "--device-timeout", "1"], env))
    # unreachable
    assert "unreachable" in one_line_exit3(edgekit(["verify", int8_file, "--device", "ssh://root@127.0.0.1:1"], env))
    # no key the board accepts
    sshd.write_client_config(identity=str(tmp_path / "absent_key"))
    try:
        assert "refused the key" in one_line_exit3(edgekit(["verify", int8_file, "--device", url], env))
    finally:
        sshd.write_client_config()
    # a changed host key: refused, never accepted
    other = tmp_path / "other"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    kind, key = (tmp_path / "other.pub").read_text().split()[:2]
    (sshd.root / "known_hosts").write_text(f"[127.0.0.1]:{sshd.port} {kind} {key}\n")
    try:
        assert "host key" in one_line_exit3(edgekit(["verify", int8_file, "--device", url], env))
    finally:
        (sshd.root / "known_hosts").write_text(sshd.known_hosts)
    # the slow worker's remote shell ends when it finds its stdin closed (its sleep 4 over): waited for, not slept
    deadline = time.monotonic() + 60
    while remote_leftovers() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert remote_leftovers() == []


def test_a_connection_dropped_mid_run_is_exit_3_and_nothing_is_left(sshd, box, env, int8_file, tmp_path):
    marker = tmp_path / "started"
    wait = remote_python(tmp_path, "wait", f'case "$1" in ort_worker.py) touch {marker}; sleep 3;; esac\n'
                                           f'exec {box} "$@"')
    edgekit(["devices", "add", "wait", sshd.url(), "--python", wait], env)
    proc = subprocess.Popen([*EDGEKIT, "verify", str(int8_file), "--device", "wait", "--random-inputs", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env)
    try:
        deadline = time.monotonic() + 120
        while not marker.exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.1)
        assert marker.exists(), proc.communicate()[1] if proc.poll() is not None else "the worker never started"
        sshd.kill()  # sshd and every connection it serves
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
        sshd.start()
    res = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    assert "the board wait" in one_line_exit3(res)
    deadline = time.monotonic() + 30  # the board's shell removes its folder once the worker finds the channel gone
    while remote_leftovers() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert remote_leftovers() == []


def test_the_fake_arm_board_computes_bit_identically_to_the_emulated_a76(sshd, arm64, int8_file, tmp_path,
                                                                         monkeypatch):
    # the arm64 sysroot's Python under qemu-aarch64, reached over SSH: the same kernels as --device arm64-a76
    from edgekit.runtimes.ort import create_session

    env = " ".join(f"{k}={v}" for k, v in arm64.env.items())
    python = remote_python(tmp_path, "arm-python", f'{env} exec {" ".join(arm64.command)} {arm64.python} "$@"')
    monkeypatch.setenv("EDGEKIT_SSH_CONFIG", str(sshd.config))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    from edgekit.runtimes.boards import add

    add("fakepi", sshd.url(), python=str(python))
    x = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
    outs = {}
    for device in ("arm64-a76", "fakepi"):
        session = create_session(int8_file, "cpu", device=device)
        outs[device] = session.session.run(None, {session.session.get_inputs()[0].name: x})[0]
        session.session.close()
    assert np.array_equal(outs["arm64-a76"], outs["fakepi"])
    from edgekit.runtimes.devices import get_device

    assert get_device("fakepi").arch == "aarch64"


def test_a_full_disk_on_the_board_is_exit_3_and_its_folder_is_removed(sshd, box, env, int8_file, tmp_path):
    # the board's temp folder on a 2 MB tmpfs (the model is ~11 MB): the write fails there, said in one line
    small = tmp_path / "small"
    small.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(small)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.decode().strip()[:120]}")
    try:
        sshd.write_client_config(tmpdir=str(small))
        edgekit(["devices", "add", "full", sshd.url(), "--python", box], env)
        line = one_line_exit3(edgekit(["verify", int8_file, "--device", "full", "--random-inputs", "0"], env))
        assert "cannot write the model" in line and "100%" in line
        assert not [p for p in small.iterdir() if p.name.startswith("tmp.")]
    finally:
        sshd.write_client_config()
        subprocess.run(["umount", str(small)], capture_output=True)
