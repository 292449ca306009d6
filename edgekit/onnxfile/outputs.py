"""How edgekit writes its outputs: never onto one of the running command's inputs (the input registry),
side files (reports, plots, sidecars) atomically, and a bundle folder staged beside its place and swapped in
whole. The .onnx files themselves are staged and saved by artifact.py (StagedOutput), through these.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable

from edgekit.core.errors import BadInput, EdgekitError, EnvironmentUnavailable
from edgekit.core.files import check_name_lengths, shown_path


def short_name(path: Path) -> str:
    """A file name cut for a hidden temp name beside it: any output name the file system takes stays writable."""
    return Path(path).name[:64]


def write_error(path: Path, exc: OSError) -> EdgekitError:
    """A failed write as one line: a full disk is the environment (exit 3), anything else bad output (exit 2)."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return EnvironmentUnavailable(f"cannot write {shown_path(path)}: no space left on the device", hint="free some space; nothing was written")
    return BadInput(f"cannot write {shown_path(path)}: {exc.strerror or exc}", hint="choose another output with -o; nothing was written")


def stage_folder(final: Path) -> Path:
    """A hidden temp folder beside `final` (a bundle folder), with the permissions a normal folder gets."""
    check_name_lengths(Path(final), "output folder")
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        folder = Path(tempfile.mkdtemp(prefix=f".{short_name(final)}.", suffix=".edgekit-tmp", dir=final.parent))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(folder, 0o777 & ~umask)  # mkdtemp's 0700 would follow the bundle to the device
        return folder
    except OSError as exc:
        raise BadInput(f"cannot write to {final.parent}: {exc.strerror or exc}", hint="choose another -o") from None


def commit_folder(staged: Path, final: Path) -> None:
    """Rename the staged folder into place; an old bundle there is moved aside first and removed after."""
    old = None
    refuse_folder_holding_inputs(final)
    # Ctrl-C or SIGTERM between the two renames would leave no bundle at all: both wait until the swap is done
    # (or undone), then act as usual.
    with _signals_held():
        try:
            if final.exists():
                old = Path(tempfile.mkdtemp(prefix=f".{short_name(final)}.", suffix=".edgekit-old", dir=final.parent))
                os.replace(final, old / "bundle")
            os.replace(staged, final)
        except BaseException as exc:
            if old is not None and (old / "bundle").exists() and not final.exists():
                os.replace(old / "bundle", final)
            if isinstance(exc, OSError):
                raise write_error(final, exc) from None
            raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def _signals_held():
    """SIGINT and SIGTERM recorded, not acted on, while the block runs; raised again right after it, to the
    handlers the command had (Python runs signal handlers in the main thread only, so that is where this holds)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []
    previous = {}
    try:
        for signum in (signal.SIGINT, signal.SIGTERM):
            previous[signum] = signal.signal(signum, lambda number, _frame: pending.append(number))
    except (ValueError, OSError):
        pass
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        for signum in pending:
            signal.raise_signal(signum)


# --- outputs never land on inputs ----------------------------------------------------------------
# The inputs of the running command (by resolved path and by (device, inode)): registered as they are read
# (load_onnx, the bundle check), consulted by every writer below. None outside a command (library use).
_INPUTS: dict | None = None


@contextlib.contextmanager
def command_inputs():
    """A command's scope: inputs registered inside it are protected from its outputs, and forgotten after."""
    global _INPUTS
    saved, _INPUTS = _INPUTS, {}
    try:
        yield
    finally:
        _INPUTS = saved


def register_input(path: Path, what: str = "input") -> None:
    """Protect `path` from this command's outputs."""
    if _INPUTS is None:
        return
    path = Path(path)
    _INPUTS[os.path.realpath(path)] = (what, path)
    with contextlib.suppress(OSError):
        info = os.stat(path)
        _INPUTS[(info.st_dev, info.st_ino)] = (what, path)


def refuse_if_input(path: Path, what: str = "output") -> None:
    """BadInput (exit 2, nothing touched) when writing `path` would overwrite one of this command's inputs,
    by resolved path or by inode (a hard link)."""
    if not _INPUTS:
        return
    hit = _INPUTS.get(os.path.realpath(path))
    if hit is None:
        with contextlib.suppress(OSError):
            info = os.stat(path)
            hit = _INPUTS.get((info.st_dev, info.st_ino))
    if hit is not None:
        raise BadInput(f"{what} {shown_path(path)} is the {hit[0]} {shown_path(hit[1])}: writing it would destroy an "
                       "input; nothing was written", hint="choose another output path")


def refuse_folder_holding_inputs(folder: Path, what: str = "output folder") -> None:
    """A folder about to be replaced whole must hold none of this command's inputs."""
    if not _INPUTS or not Path(folder).is_dir():
        return
    for item in Path(folder).iterdir():
        refuse_if_input(item, f"{what} {shown_path(folder)} holds")


def write_atomic(path: Path, write: Callable[[BinaryIO], None]) -> Path:
    """The one writer of edgekit's side files (reports, plots, sidecars): `write(f)` into a temp file in the
    same folder, then os.replace; never onto one of the command's inputs; nothing half-written on failure."""
    path = check_name_lengths(Path(path), "output")
    refuse_if_input(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{short_name(path)}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise BadInput(f"cannot write {shown_path(path)}: {exc.strerror or exc}", hint="choose another path") from None
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise write_error(path, exc) from None
        raise
    return path


def write_text_atomic(path: Path, text: str) -> Path:
    """A text file (a report) through write_atomic; a file name that is not UTF-8 is written as \\xNN, not a crash."""
    return write_atomic(path, lambda f: f.write(shown_path(text).encode("utf-8")))
