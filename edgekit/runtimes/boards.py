"""The user's named boards: `edgekit devices add NAME ssh://user@host [--python PATH] [--ssh-config FILE]` stores
them in $XDG_CONFIG_HOME/edgekit/devices.toml (default ~/.config), written atomically, read back as a bounded
regular file. A name or an ssh:// address given to --device resolves to a runtimes.ssh.Board here."""

from __future__ import annotations

import json
import os
import re
import tempfile
import tomllib
from pathlib import Path

from edgekit.core.errors import BadInput
from edgekit.runtimes.ssh import Board, parse_url

MAX_BOARDS_BYTES = 256 << 10
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")


def boards_file() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "edgekit" / "devices.toml"


def stored() -> dict[str, dict]:
    """{name: {"url", "python"?, "ssh_config"?}} from devices.toml ({} when there is none); a file that is not a
    small regular TOML file of that shape is BadInput naming it (never silently ignored)."""
    from edgekit.runtimes.device_kinds import read_device_file

    path = boards_file()
    if not path.exists() and not path.is_symlink():
        return {}
    raw = read_device_file(path, MAX_BOARDS_BYTES)
    if raw is None:
        raise BadInput(f"{path} is not a regular file of at most {MAX_BOARDS_BYTES >> 10} KiB",
                       hint="remove it; edgekit devices add writes it again")
    try:
        data = tomllib.loads(raw.decode())
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise BadInput(f"{path} is not valid TOML: {str(exc).splitlines()[0]}",
                       hint="fix it, or remove it and add the boards again") from None
    boards = data.get("boards", {})
    ok = isinstance(boards, dict) and all(
        isinstance(v, dict) and isinstance(v.get("url"), str)
        and all(isinstance(v.get(k, ""), str) for k in ("python", "ssh_config")) for v in boards.values())
    if not ok:
        raise BadInput(f"{path}: [boards.NAME] tables need url = \"ssh://...\" (python, ssh_config: strings)",
                       hint="fix it, or remove it and add the boards again")
    return boards


def is_board(name: str | None) -> bool:
    """`name` is an ssh:// address or a stored board."""
    if not name:
        return False
    text = str(name).strip()
    return text.lower().startswith("ssh://") or text.lower() in stored()


def board_of(name: str) -> Board:
    text = str(name).strip()
    if text.lower().startswith("ssh://"):
        return parse_url(text)
    entry = stored().get(text.lower())
    if entry is None:
        raise BadInput(f"unknown board {name!r}", hint="edgekit devices add NAME ssh://user@host stores one")
    return parse_url(entry["url"], name=text.lower(), python=entry.get("python") or None,
                     ssh_config=entry.get("ssh_config") or None)


def _write(boards: dict[str, dict]) -> Path:
    path = boards_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["# edgekit's boards (edgekit devices add / remove)\n"]
    for name in sorted(boards):
        lines.append(f"\n[boards.{name}]\n")
        for key in ("url", "python", "ssh_config"):
            if boards[name].get(key):
                lines.append(f"{key} = {json.dumps(boards[name][key])}\n")  # a JSON string is a TOML basic string
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=".devices.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w") as f:
            f.write("".join(lines))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def add(name: str, url: str, python: str | None = None, ssh_config: str | None = None) -> Board:
    from edgekit.runtimes.device_kinds import DEVICES

    key = str(name).strip().lower()
    if not _NAME.match(key) or key in DEVICES:
        raise BadInput(f"{name!r} cannot name a board",
                       hint="use lower-case letters, digits, - and _ (up to 32), not host or an emulated device's name")
    if ssh_config is not None:
        config = Path(ssh_config).expanduser()
        if not config.is_file():
            raise BadInput(f"--ssh-config {ssh_config}: no such file", hint="give an ssh_config file (ssh -F)")
        ssh_config = str(config.resolve())
    if python is not None and (not python.strip() or "\n" in python):
        raise BadInput(f"--python {python!r} is not a path", hint="give the board's interpreter, e.g. /usr/bin/python3")
    board = parse_url(url, name=key, python=python, ssh_config=ssh_config or "")
    boards = stored()
    boards[key] = {"url": board.url, **({"python": python} if python else {}),
                   **({"ssh_config": ssh_config} if ssh_config else {})}
    _write(boards)
    return board


def remove(name: str) -> Path:
    key = str(name).strip().lower()
    boards = stored()
    if key not in boards:
        raise BadInput(f"no board named {name!r}", hint="edgekit devices lists the stored boards")
    del boards[key]
    return _write(boards)
