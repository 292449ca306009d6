"""Files edgekit reads: checked to be regular, readable, non-empty and what they claim, before they are read;
paths shown so that any name can be printed."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from edgekit.ondevice.metrics import sha256_file  # noqa: F401  (one implementation, shared with the device check)
from edgekit.core.errors import BadInput

_LFS_POINTER = b"version https://git-lfs"


def shown_path(path) -> str:
    """A path as text that can always be printed: bytes that are not UTF-8 (a file name from another
    system) become \\xNN escapes instead of lone surrogates, which no terminal encoding accepts."""
    text = os.fspath(path)
    if isinstance(text, bytes):
        return text.decode("utf-8", "backslashreplace")
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        try:
            return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        except UnicodeEncodeError:
            return text.encode("utf-8", "backslashreplace").decode("utf-8")


_FILE_KINDS = (
    (stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
)


def file_kind(mode: int) -> str:
    """What a non-regular file is, in words (from its st_mode)."""
    return next((name for test, name in _FILE_KINDS if test(mode)), "not a regular file")


def open_regular(path: Path, what: str = "file"):
    """Open a path for reading only if it is a regular file (a symlink to one is fine).

    A FIFO, socket or device is refused without blocking (O_NONBLOCK, then fstat on the open
    descriptor, so nothing can be swapped in between a check and the open); a missing file,
    a dangling or looping symlink is OSError. Returns a binary file object; raises ValueError
    with the reason for a non-regular file.
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOCTTY", 0)
    fd = os.open(path, flags)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise ValueError(f"is {file_kind(mode)}, not a regular file")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def check_readable_file(path: Path, what: str) -> Path:
    """A path that exists, is a regular file, is readable and is not empty; else BadInput naming it."""
    path = Path(path)
    shown = shown_path(path)
    try:
        st = os.stat(path)
    except OSError as exc:
        if os.path.lexists(path):  # a dangling or looping symlink
            raise BadInput(f"{what} {shown} is a broken symlink ({exc.strerror})", hint="point it at a real file") from None
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            raise BadInput(f"{what} {shown} does not exist", hint="check the path") from None
        raise BadInput(f"cannot read {what} {shown}: {exc.strerror or exc}", hint="check its permissions") from None
    if stat.S_ISDIR(st.st_mode):
        raise BadInput(f"{what} {shown} is a directory, not a file", hint="name the file inside it")
    try:
        with open_regular(path, what) as f:
            head = f.read(64)
    except ValueError as exc:
        raise BadInput(f"{what} {shown} {exc}", hint="name a regular file") from None
    except OSError as exc:
        raise BadInput(f"cannot read {what} {shown}: {exc.strerror or exc}", hint="check its permissions") from None
    if not head:
        raise BadInput(f"{what} {shown} is empty (0 bytes)", hint="re-create or re-download it")
    if head.startswith(_LFS_POINTER):
        raise BadInput(
            f"{what} {shown} is a Git LFS pointer, not the file itself", hint="run `git lfs pull` to fetch it"
        )
    return path


def sweep_leftovers(folder, pattern, want_dir: bool, max_age: float) -> list[Path]:
    """Remove what a killed edgekit left in `folder`: entries whose name matches `pattern` (its group
    `pid` is the process that made them), real directories (`want_dir`) or regular files, never a
    symlink, older than `max_age` seconds, whose process no longer runs. Returns what was removed;
    an entry that cannot be read or removed is left alone."""
    import shutil
    import time

    removed: list[Path] = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    now = time.time()
    for entry in entries:
        match = pattern.match(entry.name)
        if not match:
            continue
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        right_kind = stat.S_ISDIR(st.st_mode) if want_dir else stat.S_ISREG(st.st_mode)
        pid = int(match["pid"]) if match["pid"] else None  # an older naming without the pid: age alone decides
        if not right_kind or now - st.st_mtime < max_age or (pid is not None and (pid == os.getpid() or _process_alive(pid))):
            continue
        if want_dir:
            shutil.rmtree(entry.path, ignore_errors=True)
        else:
            try:
                os.remove(entry.path)
            except OSError:
                pass
        if not os.path.lexists(entry.path):
            removed.append(Path(entry.path))
    return removed


def _process_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, OSError):
        return True  # it exists (another user's); or the pid cannot be asked about: keep it
    return True


def resolved(path, what: str = "path") -> Path:
    """`path` resolved (symlinks followed, `..` collapsed); a symlink loop or a name that cannot be followed is
    BadInput naming it, never a RuntimeError from pathlib."""
    try:
        return Path(path).resolve()
    except (RuntimeError, OSError) as exc:  # Python < 3.13: RuntimeError "Symlink loop"; later: OSError ELOOP
        why = "a symlink loop" if isinstance(exc, RuntimeError) or getattr(exc, "errno", None) == errno.ELOOP else (
            getattr(exc, "strerror", None) or str(exc))
        raise BadInput(f"{what} {shown_path(path)} cannot be followed: {why}", hint="name a path without a symlink loop") from None


def read_small_regular(path, limit: int) -> bytes | None:
    """The bytes of a regular file of at most `limit` bytes (a FIFO, device or socket refused without blocking);
    None when it is absent, not a regular file, larger, or unreadable."""
    try:
        with open_regular(Path(path)) as f:
            data = f.read(limit + 1)
    except (OSError, ValueError):
        return None
    return data if len(data) <= limit else None


NAME_MAX = 255  # bytes in one path component: every file system edgekit writes to on Linux


def check_name_lengths(path: Path, what: str = "path") -> Path:
    """`path`, or BadInput (exit 2) naming a component longer than the file system takes, before any OS call
    meets it (Python's stat raises on such a name, where a caller expects True or False)."""
    for part in Path(path).parts:
        size = len(os.fsencode(part))
        if size > NAME_MAX:
            raise BadInput(f"{what} name {shown_path(part[:40])}... is {size} bytes; a file name can have at most {NAME_MAX}",
                           hint="choose a shorter name")
    return Path(path)


CACHE_DIR_ENV = "EDGEKIT_CACHE_DIR"


def cache_dir() -> Path:
    """edgekit's cache (EDGEKIT_CACHE_DIR, default ~/.cache/edgekit): decoded images, model facts."""
    return Path(os.environ.get(CACHE_DIR_ENV) or Path.home() / ".cache" / "edgekit")
