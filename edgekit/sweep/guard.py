"""What a sweep refuses before its first write: an output folder that is, is inside, or holds one of its inputs
(compared by resolved path and by (device, inode), so a symlink, a `..` or a bind mount is seen through), a worker
count out of range, and a temp folder it cannot write (Ray and the exports need one)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from edgekit.core.errors import BadInput, EnvironmentUnavailable
from edgekit.core.files import resolved, shown_path

MAX_WORKERS = 1024


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_dev, info.st_ino


def _chain(path: Path) -> list[tuple[Path, tuple[int, int] | None]]:
    """`path` and each of its ancestors, with their (device, inode) where they exist."""
    return [(p, _identity(p)) for p in (path, *path.parents)]


def refuse_output_on_inputs(out: Path, inputs: list[tuple[str, Path]], may_hold: tuple[Path, ...] = ()) -> None:
    """BadInput when the sweep's output folder `out` is one of `inputs` (what, path), lies inside one, or holds
    one (except the paths in `may_hold`: the sweep file a re-run reads from the folder it wrote)."""
    target = resolved(out, "-o")
    out_chain = _chain(target)
    out_id = out_chain[0][1]
    allowed = {resolved(p, "sweep file") for p in may_hold}
    for what, path in inputs:
        source = resolved(path, what)
        source_id = _identity(source)
        shown = f"{what} {shown_path(path)}"
        if source == target or (source_id is not None and source_id == out_id):
            raise BadInput(f"-o {shown_path(out)} is the {shown}: the sweep would write its exports, jobs and results "
                           "into its own input; nothing was written", hint="choose another -o")
        if any(p == source or (source_id is not None and i == source_id) for p, i in out_chain[1:]):
            raise BadInput(f"-o {shown_path(out)} is inside the {shown}: the sweep would write into its own input; "
                           "nothing was written", hint="choose an -o outside it")
        if source in allowed:
            continue
        if any(p == target or (out_id is not None and i == out_id) for p, i in _chain(source)[1:]):
            raise BadInput(f"-o {shown_path(out)} holds the {shown}: the sweep's files could replace it; nothing was "
                           "written", hint="choose an -o that holds none of the sweep's inputs")


def check_workers(workers: int | None) -> None:
    if workers is not None and not 1 <= workers <= MAX_WORKERS:
        raise BadInput(f"--workers must be 1 to {MAX_WORKERS}, got {workers}; nothing was written")


def check_temp_folder() -> None:
    """The temp folder Ray's session files and the staged exports go to can be written; else exit 3 saying so."""
    where = os.environ.get("TMPDIR") or tempfile.gettempdir()
    try:
        probe = tempfile.mkdtemp(prefix=".edgekit-probe-", dir=os.environ.get("TMPDIR") or None)
        os.rmdir(probe)
    except OSError as exc:
        raise EnvironmentUnavailable(f"the temp folder {shown_path(where)} cannot be written ({exc.strerror or exc}): "
                                     "Ray and the sweep's exports need one", hint="set TMPDIR to a writable folder") from None
    home = os.environ.get("HOME")
    if home and os.path.exists(home) and not os.path.isdir(home):
        raise EnvironmentUnavailable(f"HOME {shown_path(home)} is not a folder: Ray and edgekit's cache live under it",
                                     hint="set HOME to your home folder")
