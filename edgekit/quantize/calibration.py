"""Calibration sets: calibration and held-out tensors from an image folder or a tensor file, through
the model's preprocessing."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from edgekit.core import limits
from edgekit.core.files import open_regular, shown_path
from edgekit.core.errors import BadInput, one_line
from edgekit.data.preprocessing import Preprocessing, to_rgb

from edgekit.data.images import DEFAULT_CALIBRATION_DIR, load_image_folder, scan_image_folder  # noqa: F401
from edgekit.data.tensors import load_tensor_file


def augmented_samples(
    files: list[Path], preprocessing: Preprocessing, count: int, seed: int = 0
) -> np.ndarray:
    """`count` seeded random-resized crops (50-100 % of the area) and horizontal flips of `files`."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        path = files[i % len(files)]
        try:
            handle = open_regular(path)
        except (OSError, ValueError) as exc:  # it decoded a moment ago: it changed under us
            raise BadInput(f"{shown_path(path)} changed while edgekit was reading it: {one_line(exc)}") from None
        with handle, Image.open(handle) as image:
            image = to_rgb(image)
            w, h = image.size
            area = rng.uniform(0.5, 1.0) * w * h
            aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
            cw = int(min(w, round(np.sqrt(area * aspect))))
            ch = int(min(h, round(np.sqrt(area / aspect))))
            left = int(rng.integers(0, w - cw + 1))
            top = int(rng.integers(0, h - ch + 1))
            crop = image.crop((left, top, left + cw, top + ch))
            if rng.random() < 0.5:
                crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            out.append(preprocessing.apply(crop))
    return np.stack(out).astype(np.float32)


@dataclass
class CalibrationSet:
    """Preprocessed calibration tensors, held-out tensors for the accuracy proxy, and their provenance."""

    tensors: np.ndarray
    holdout: np.ndarray
    source: str
    kind: str  # images | tensors
    sha256: str
    description: str
    holdout_description: str
    warnings: list[str] = field(default_factory=list)

    def to_metadata(self) -> dict:
        return {
            "source": self.source,
            "kind": self.kind,
            "samples": int(len(self.tensors)),
            "sha256": self.sha256,
            "holdout_samples": int(len(self.holdout)),
        }


HOLDOUT_FRACTION = 0.25
MIN_HOLDOUT_SAMPLES = 32  # held-out photos are topped up with seeded crops/flips of themselves to this many


def build_calibration_set(
    source: Path,
    preprocessing: Preprocessing,
    samples: int,
    seed: int = 0,
    augment: bool = False,
    on_progress: Callable[[int, int], None] | None = None,
) -> CalibrationSet:
    """Calibration and held-out tensors from an image folder or a .npz/.npy file.

    A quarter of the images (at least one) is held out for the accuracy proxy and never used
    for calibration. Fewer images than `samples` is said, and filled with seeded crops and flips
    only when `augment` asks for it.
    """
    source = Path(source)
    samples = limits.check_count(samples, "--samples", limits.MAX_SAMPLES)
    chw = preprocessing.chw
    limits.check_tensor_budget((samples, *chw), 4, "--samples", hint="ask for fewer samples")
    notes: list[str] = []
    if source.is_file() or source.suffix in (".npz", ".npy"):
        return _from_tensor_file(source, chw, samples, seed, notes)
    return _from_image_folder(source, preprocessing, samples, seed, augment, on_progress, notes)


def _from_tensor_file(source: Path, chw, samples: int, seed: int, notes: list[str]) -> CalibrationSet:
    """The calibration set of a .npz/.npy file: its last quarter held out, the rest picked down to SAMPLES."""
    shown = shown_path(source)
    tensors = load_tensor_file(source, chw)
    if len(tensors) < 2:
        raise BadInput(f"{shown} holds {len(tensors)} sample; at least 2 are needed (calibration + held-out)")
    n_hold = max(1, int(round(len(tensors) * HOLDOUT_FRACTION)))
    calib, hold = tensors[:-n_hold], tensors[-n_hold:]
    if len(calib) > samples:
        calib = calib[np.sort(np.random.default_rng(seed).choice(len(calib), samples, replace=False))]
    elif len(calib) < samples:
        notes.append(f"{shown} has {len(calib)} calibration samples, fewer than the {samples} asked; using {len(calib)}")
    from edgekit.core.files import sha256_file

    return CalibrationSet(
        calib, hold, str(source), "tensors", sha256_file(source),
        f"{len(calib)} tensors from {shown}", f"the last {len(hold)} tensors of {shown}", notes,
    )


def _from_image_folder(source: Path, preprocessing: Preprocessing, samples: int, seed: int, augment: bool,
                       on_progress, notes: list[str]) -> CalibrationSet:
    """The calibration set of an image folder: a seeded quarter held out (topped up with crops/flips of itself to
    MIN_HOLDOUT_SAMPLES), the rest picked down to SAMPLES or, with AUGMENT, filled up to it."""
    shown = shown_path(source)
    scan = scan_image_folder(source)
    if scan.others:
        notes.append(f"{len(scan.others)} file(s) in {shown} are not images and were ignored")
    if scan.skipped_note():
        notes.append(scan.skipped_note())
    want = int(np.ceil(samples / (1 - HOLDOUT_FRACTION))) + 1
    loaded = load_image_folder(source, preprocessing, samples=want, seed=seed, on_progress=on_progress, scan=scan)
    notes.extend(loaded.notes)
    for path, reason in loaded.corrupt:
        notes.append(f"skipped {shown_path(path)}: {reason}")
    usable = loaded.files
    if len(usable) < 2:
        raise BadInput(
            f"{shown} has {len(usable)} usable image(s); at least 2 are needed (calibration + held-out)",
            hint="add images or pass a bigger folder with --calibration",
        )
    order = np.random.default_rng(seed).permutation(len(usable))
    n_hold = max(1, int(round(len(usable) * HOLDOUT_FRACTION)))
    hold_idx, calib_idx = sorted(order[:n_hold]), sorted(order[n_hold:])
    calib, calib_files = _pick_calibration(loaded.tensors[calib_idx], [usable[i] for i in calib_idx], preprocessing,
                                           samples, seed, augment, f"{shown} has", n_hold, notes)
    hold_files = [usable[i] for i in hold_idx]
    hold = loaded.tensors[hold_idx]
    extra_hold = max(0, MIN_HOLDOUT_SAMPLES - len(hold))
    if extra_hold:
        hold = np.concatenate([hold, augmented_samples(hold_files, preprocessing, extra_hold, seed + 2)])
    digest = hashlib.sha256(json.dumps(preprocessing.to_dict(), sort_keys=True).encode())
    digest.update(np.ascontiguousarray(calib).tobytes())
    return CalibrationSet(
        calib, hold, str(source), "images", digest.hexdigest(),
        f"{len(calib)} samples from {len(calib_files)} images in {shown}",
        f"{len(hold_files)} held-out images in {shown}" + (f" + {extra_hold} seeded crops/flips of them" if extra_hold else ""),
        notes,
    )


def _pick_calibration(calib, calib_files, preprocessing, samples: int, seed: int, augment: bool, owner: str,
                      n_hold: int, notes: list[str]):
    """The calibration tensors (and their files) picked down to SAMPLES, or filled up to it with seeded crops and
    flips when AUGMENT asks; fewer than asked is said."""
    if len(calib) > samples:
        pick = np.sort(np.random.default_rng(seed + 1).choice(len(calib), samples, replace=False))
        return calib[pick], [calib_files[i] for i in pick]
    if len(calib) < samples:
        if augment:
            extra = augmented_samples(calib_files, preprocessing, samples - len(calib), seed)
            notes.append(
                f"{len(calib)} calibration images for {samples} samples: added {len(extra)} seeded crops/flips (--augment)"
            )
            return np.concatenate([calib, extra]), calib_files
        notes.append(
            f"{owner} {len(calib)} calibration images (after holding out {n_hold}), fewer than the "
            f"{samples} asked; using {len(calib)} (--augment adds seeded crops and flips)"
        )
    return calib, calib_files
