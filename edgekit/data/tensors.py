"""Preprocessed tensors from .npy/.npz files (read without pickle, sizes bounded before allocating),
and seeded random inputs."""

from __future__ import annotations

import math
import zipfile
from pathlib import Path

import numpy as np

from edgekit.core import limits
from edgekit.core.files import open_regular, shown_path
from edgekit.core.errors import BadInput, one_line

# --- .npy / .npz ------------------------------------------------------------------------------------

_NPY_MAGIC = b"\x93NUMPY"


def _npy_header(stream, label: str) -> tuple[tuple, bool, np.dtype]:
    """(shape, fortran_order, dtype) from an .npy header, read without touching the data."""
    fmt = np.lib.format
    try:
        version = fmt.read_magic(stream)
    except ValueError as exc:
        raise BadInput(f"{label} is not a numpy array ({one_line(exc, 120)})") from None
    if version == (1, 0):
        return fmt.read_array_header_1_0(stream)
    if version == (2, 0):
        return fmt.read_array_header_2_0(stream)
    if version == (3, 0) and hasattr(fmt, "_read_array_header"):
        return fmt._read_array_header(stream, version)
    raise BadInput(f"{label} uses .npy format version {version[0]}.{version[1]}, which this numpy cannot read")


def _check_npy_header(shape: tuple, dtype: np.dtype, label: str, expected_chw: tuple[int, ...] | None) -> int:
    """Refuse what must not be loaded, before loading it; returns the data's byte count."""
    if dtype.hasobject:
        raise BadInput(
            f"{label} holds Python objects (dtype {dtype}); refusing to unpickle them",
            hint="save plain float arrays, e.g. np.savez(path, input=float32_array)",
        )
    if expected_chw is not None:
        if not np.issubdtype(dtype, np.floating):
            raise BadInput(f"{label}: tensors must be floating point (preprocessed), got dtype {dtype}")
        chw = tuple(expected_chw)
        if len(shape) not in (len(chw), len(chw) + 1) or tuple(shape[-len(chw):]) != chw:
            raise BadInput(f"{label}: tensors have shape {tuple(shape)}, the model expects (N, {', '.join(map(str, chw))})")
        if len(shape) == len(chw) + 1 and shape[0] == 0:
            raise BadInput(f"{label} holds zero samples")
    if any(d == 0 for d in shape):
        return 0
    # the float32 copy made from it counts too
    return limits.check_tensor_budget(
        shape if shape else (1,), max(dtype.itemsize, 4) if expected_chw is not None else max(dtype.itemsize, 1),
        f"{label}: its header declares", hint="split the tensors into smaller files",
    )


def _read_npy_stream(stream, label: str, expected_chw: tuple[int, ...] | None) -> np.ndarray:
    """An array from an .npy stream: header checked first, then exactly the bytes it declares."""
    shape, fortran, dtype = _npy_header(stream, label)
    _check_npy_header(shape, dtype, label, expected_chw)
    need = math.prod(shape) * dtype.itemsize
    buffer = np.empty(need, dtype=np.uint8)  # writable, and read in place: no second copy
    view, got = memoryview(buffer), 0
    while got < need:
        n = stream.readinto(view[got:])
        if not n:
            break
        got += n
    if got < need:
        raise BadInput(
            f"{label} is truncated: its header declares {tuple(shape)} {dtype} ({need:,} bytes) but {got:,} follow",
            hint="copy or save it again",
        )
    return buffer.view(dtype).reshape(shape, order="F" if fortran else "C")


def read_npz_member(archive: zipfile.ZipFile, member: str, label: str, expected_chw=None) -> np.ndarray:
    where = f"{label} member {member!r}"
    with archive.open(member) as stream:
        if stream.read(len(_NPY_MAGIC)) != _NPY_MAGIC:
            raise BadInput(f"{where} is not a numpy array", hint="an .npz holds arrays saved with np.savez")
        stream.seek(0)
        return _read_npy_stream(stream, where, expected_chw)


def load_tensor_file(path: Path, expected_chw: tuple[int, int, int]) -> np.ndarray:
    """Preprocessed tensors from .npy or .npz (one array, or the one named `input`): (N, C, H, W) float.

    Opened without pickle and read by hand: the .npy header (dtype, shape) is checked against the
    model and limits.MAX_TENSOR_BYTES before any data is read, so object arrays, a huge declared
    shape, a truncated file or archive, or a member that is not an array is one BadInput line.
    """
    from edgekit.core.files import check_readable_file

    path = check_readable_file(Path(path), "tensor file")
    label = shown_path(path)
    try:
        with open_regular(path) as f:
            head = f.read(len(_NPY_MAGIC))
            f.seek(0)
            if head == _NPY_MAGIC:
                array = _read_npy_stream(f, label, expected_chw)
            elif head[:2] == b"PK":
                array = _read_npz(f, label, expected_chw)
            else:
                raise BadInput(
                    f"{label} is neither a .npy nor a .npz file", hint="save the tensors with np.save or np.savez"
                )
    except BadInput:
        raise
    except MemoryError:
        raise BadInput(f"{label} is too large to load into memory", hint="split the tensors into smaller files") from None
    except Exception as exc:  # truncated zip, bad CRC, garbled header, encrypted member, ...: the file's fault
        raise BadInput(
            f"{label} is not a readable .npy/.npz file ({type(exc).__name__}: {one_line(exc, 200)})",
            hint="is it truncated? save it again with np.save or np.savez",
        ) from None
    if array.ndim == 3:
        array = array[None]
    if not np.isfinite(array).all():
        raise BadInput(f"{label} holds NaN or Inf values")
    return np.ascontiguousarray(array.astype(np.float32))


def _read_npz(f, label: str, expected_chw: tuple[int, ...]) -> np.ndarray:
    with zipfile.ZipFile(f) as archive:
        members = archive.namelist()
        if not members:
            raise BadInput(f"{label} holds no arrays")
        arrays = [m[: -len(".npy")] if m.endswith(".npy") else m for m in members]
        if "input" in arrays:
            member = members[arrays.index("input")]
        elif len(members) == 1:
            member = members[0]
        else:
            shown = ", ".join(arrays[:5]) + (f" and {len(arrays) - 5} more" if len(arrays) > 5 else "")
            raise BadInput(f"{label} holds several arrays ({shown}); name the inputs one `input`")
        return read_npz_member(archive, member, label, expected_chw)


def seeded_random_inputs(count: int, chw: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    """Standard-normal inputs (the scale of normalised images), reproducible from `seed`.

    `count` is bounded by limits.MAX_RANDOM_INPUTS and the tensor by MAX_TENSOR_BYTES, both
    checked before anything is allocated.
    """
    count = limits.check_count(count, "--random-inputs", limits.MAX_RANDOM_INPUTS, minimum=0)
    chw = limits.check_dims(chw, "the model's input (C, H, W)", bound=limits.MAX_INPUT_SIZE)
    if count:
        limits.check_tensor_budget((count, *chw), 4, "--random-inputs", hint="ask for fewer random inputs")
    return np.random.default_rng(seed).standard_normal((count, *chw)).astype(np.float32)
