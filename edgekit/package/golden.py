"""A bundle's golden data: photos as uint8 crops (the device's own steps, edgekit.ondevice.preprocess, which
edgekit's Preprocessing.apply runs too), the PyTorch fp32
reference outputs the device compares against, how many photos fit the overhead budget, and golden.npz."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgekit.core.errors import BadInput, EnvironmentUnavailable, one_line
from edgekit.data.images import open_image, pick_samples
from edgekit.ondevice.preprocess import crop_uint8, normalize
from edgekit.data.preprocessing import Preprocessing

DEFAULT_GOLDEN = 8
MAX_GOLDEN = 256
GOLDEN_FILE = "golden.npz"


def golden_within_budget(n: int, golden_bytes: int, other_bytes: int, model_bytes: int, budget: float) -> int:
    """How many of `n` golden photos (`golden_bytes` in all) fit beside `other_bytes` of manifest and scripts
    within `budget` x the model files' bytes; at least one."""
    if golden_bytes + other_bytes <= budget * model_bytes:
        return n
    per_photo = max(1.0, golden_bytes / n)
    return max(1, min(n, int((budget * model_bytes - other_bytes) // per_photo)))


def golden_inputs(photos: list[Path], photo_dir: Path, pre: Preprocessing, want: int,
                  notes: list[str]) -> tuple[np.ndarray, list[str], np.ndarray]:
    """Up to `want` of the photos as (uint8 pixels, names, the normalised model inputs); skipped photos and
    a shortfall are added to `notes`."""
    pixels, names, skipped = _golden_pixels(pick_samples(photos, None), pre, want)
    notes += skipped
    if len(pixels) < want:
        notes.append(f"{photo_dir} has {len(pixels)} usable photos; the golden data holds {len(pixels)}, not {want}")
    return pixels, names, normalize(pixels, pre.mean, pre.std)


def _golden_pixels(files: list[Path], pre: Preprocessing, want: int) -> tuple[np.ndarray, list[str], list[str]]:
    """Up to `want` photos as uint8 (C, H, W) crops (check.py's crop_uint8, which Preprocessing.apply runs too);
    (pixels, names, notes on skipped files)."""
    from PIL import UnidentifiedImageError

    pre_dict = pre.to_dict()
    pixels, names, notes = [], [], []
    for path in files:
        if len(pixels) >= want:
            break
        try:
            with open_image(path) as image:  # a regular file, a decompression bomb refused before decoding
                crop = crop_uint8(image, pre_dict)
        except ValueError as exc:
            notes.append(f"skipped {path.name}: {one_line(exc, 300)}")
            continue
        except (UnidentifiedImageError, OSError, SyntaxError) as exc:
            notes.append(f"skipped {path.name}: cannot decode ({one_line(exc, 200)})")
            continue
        pixels.append(crop)
        names.append(path.name)
    if not pixels:
        raise BadInput("no usable photos for the golden inputs", hint="pass --images DIR with jpg/png photos")
    return np.stack(pixels), names, notes


def reference_outputs(reference, inputs: np.ndarray) -> np.ndarray:
    """The reference's fp32 outputs on the golden inputs (edgekit.reference: PyTorch, or ONNX Runtime on the fp32
    parent or the original file); NaN/Inf there is a failed check, nothing to compare against."""
    from edgekit.reference.runner import check_finite

    try:
        outputs = reference.run(inputs)
    except ImportError as exc:
        raise EnvironmentUnavailable(f"the PyTorch reference needs torch: {one_line(exc)}") from None
    check_finite(outputs, "golden", reference)
    return np.asarray(outputs, np.float32)


def write_golden(path: Path, pixels, outputs, ort_outputs, names) -> None:
    with open(path, "wb") as f:
        np.savez_compressed(
            f, images=np.ascontiguousarray(pixels, dtype=np.uint8), outputs=np.asarray(outputs, np.float32),
            ort_outputs=np.asarray(ort_outputs, np.float32), names=np.array(names),
        )
