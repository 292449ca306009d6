"""Ceilings for every size edgekit reads from something it does not control: a file's metadata or
graph, a command-line option, a folder. Each is far above any real use and far below what would
exhaust the machine, so a typo or a hostile file is one clear BadInput line, not a MemoryError or
a swapping machine. Check before allocating: `check_tensor_budget` needs only the shape.
"""

from __future__ import annotations

import math
from numbers import Integral
from typing import Iterable

from edgekit.core.errors import BadInput

# Largest image side: 4096 px is past any classifier's training size; one 3x4096x4096 float32 sample is 192 MiB.
MAX_INPUT_SIZE = 4096
# Largest class count: above ImageNet-21k (21,843) with room; a float32 logits row is then 400 kB.
MAX_CLASSES = 100_000
# Largest batch: the dynamo exporter's dynamic batch axis is declared with max 1024 (export.py).
MAX_BATCH = 1024
# Calibration or evaluation samples: twice ImageNet's 50,000 validation images; past this, run time is the problem.
MAX_SAMPLES = 100_000
# Seeded random inputs are all held in memory at once and add no coverage past a few hundred.
MAX_RANDOM_INPUTS = 10_000
# Seeds: numpy's and torch's take 0..2^32-1.
MAX_SEED = 2**32 - 1
# An accuracy budget, top-1 points: from 0 (no drop at all) to 100 (any drop); one bound for quantize, verify and the
# sweep, read by their options and the CLI.
MAX_DROP_POINTS = 100.0
# One tensor edgekit allocates from a size it was given: 2 GiB, protobuf's own ceiling for a message.
MAX_TENSOR_BYTES = 2 * 1024**3
# Files listed in one image folder before sampling: the listing itself is held in memory.
MAX_IMAGES_IN_FOLDER = 1_000_000
# Characters of the JSON metadata object: export writes ~1 kB, quantize ~10 kB with a long --exclude list.
MAX_METADATA_CHARS = 4 * 1024**2
# ONNX opsets edgekit reads and writes: 7 is the oldest onnxruntime runs, 30 leaves room for new releases.
MIN_OPSET, MAX_OPSET = 7, 30
# Any one axis of a classifier's input or output: the largest legitimate one is its class count.
MAX_DIM = MAX_CLASSES

_DTYPE_NAMES = {1: "8-bit", 2: "float16", 4: "float32", 8: "float64"}


def human_bytes(n: int) -> str:
    """Bytes as a short decimal figure ('60.2 GB'); 2 GiB and friends are named exactly."""
    if n == MAX_TENSOR_BYTES:
        return "2 GiB"
    if n >= 10**18:  # exabytes and beyond: only the order of magnitude means anything (and floats overflow)
        return f"about 2^{n.bit_length() - 1} bytes"
    for unit, scale in (("PB", 10**15), ("TB", 10**12), ("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n} bytes"


def _int_text(n: int) -> str:
    try:
        return str(n)
    except ValueError:  # past Python's 4300-digit str() limit
        return f"a {n.bit_length()}-bit number"


def _value_text(value) -> str:
    text = _int_text(int(value)) if isinstance(value, Integral) and not isinstance(value, bool) else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _dim_text(dims: tuple) -> str:
    parts = [_value_text(d) for d in dims]
    return "(" + ", ".join(parts) + ("," if len(parts) == 1 else "") + ")"


def check_count(value, what: str, limit: int, *, minimum: int = 1) -> int:
    """An integer count in [minimum, limit], e.g. `check_count(samples, "--samples", MAX_SAMPLES)`; else BadInput."""
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise BadInput(f"{what} must be a whole number, got {_value_text(value)}")
    value = int(value)
    if value < minimum:
        raise BadInput(f"{what} must be at least {minimum}, got {_value_text(value)}")
    if value > limit:
        raise BadInput(f"{what} {_value_text(value)} is over edgekit's limit of {limit:,}", hint=f"use {limit:,} or fewer")
    return value


def check_dims(dims: Iterable, what: str, *, bound: int = MAX_DIM) -> tuple[int, ...]:
    """Dimensions read from a graph or a file: each a positive int no larger than `bound`; else BadInput.

    Returns them as a tuple of ints. A dynamic dimension (None or a name) is refused: resolve it first.
    """
    dims = tuple(dims)
    for i, d in enumerate(dims):
        if isinstance(d, bool) or not isinstance(d, Integral):
            raise BadInput(
                f"{what} {_short(dims)}: dimension {i} is {_value_text(d)}, not a fixed size",
                hint="edgekit needs a static size here",
            )
        if d < 1:
            raise BadInput(f"{what} {_short(dims)}: dimension {i} is {_int_text(int(d))}; sizes must be at least 1")
        if d > bound:
            raise BadInput(
                f"{what} {_short(dims)}: dimension {i} is {_int_text(int(d))}, over edgekit's limit of {bound:,}",
                hint="is the file damaged?",
            )
    return tuple(int(d) for d in dims)


def check_tensor_budget(shape: Iterable, dtype_bytes: int, what: str, *, hint: str | None = None) -> int:
    """Refuse, before anything is allocated, a tensor of `shape` x `dtype_bytes` over MAX_TENSOR_BYTES.

    `what` names where the size came from (an option and its value, a file): with
    `what="--random-inputs"` and shape (100000, 3, 224, 224) the error reads
    "--random-inputs 100000 x (3, 224, 224) float32 is 60.2 GB, over edgekit's 2 GiB limit for one
    tensor". Returns the byte count. Exact integer arithmetic: no overflow, whatever the dims.
    """
    dims = check_dims(shape, what, bound=math.inf)  # validity only; the byte budget is the bound here
    if isinstance(dtype_bytes, bool) or not isinstance(dtype_bytes, Integral) or dtype_bytes < 1:
        raise ValueError(f"dtype_bytes must be a positive int, got {dtype_bytes!r}")  # a caller bug, not input
    total = math.prod(dims) * int(dtype_bytes)
    if total > MAX_TENSOR_BYTES:
        dtype = _DTYPE_NAMES.get(int(dtype_bytes), f"{dtype_bytes}-byte")
        shape_text = f"{_int_text(dims[0])} x {_dim_text(dims[1:])}" if len(dims) > 1 else _dim_text(dims)
        raise BadInput(
            f"{what} {shape_text} {dtype} is {human_bytes(total)}, over edgekit's {human_bytes(MAX_TENSOR_BYTES)} "
            "limit for one tensor",
            hint=hint or "ask for fewer samples or a smaller input size",
        )
    return total


def _short(dims: tuple) -> str:
    text = _dim_text(dims)
    return text if len(text) <= 80 else text[:77] + "..."
