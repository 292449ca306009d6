"""Real inputs for checks and calibration: image folders and .npz/.npy tensors, preprocessed
exactly as the model's metadata says (resize, centre crop, mean/std, RGB, NCHW)."""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from edgekit.errors import BadInput, one_line
from edgekit.preprocessing import IMAGENET_MEAN, IMAGENET_STD, Preprocessing, to_rgb  # noqa: F401  (re-exported)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
DEFAULT_CALIBRATION_DIR = Path(__file__).resolve().parent.parent / "calibration"
CACHE_DIR_ENV = "EDGEKIT_CACHE_DIR"


@dataclass
class ImageSet:
    """Preprocessed images from a folder, with what was passed over and why."""

    tensors: np.ndarray  # (N, 3, crop, crop) float32
    files: list[Path]
    corrupt: list[tuple[Path, str]] = field(default_factory=list)
    not_images: list[Path] = field(default_factory=list)
    source: Path | None = None
    sha256: str = ""
    from_cache: bool = False

    def __len__(self) -> int:
        return len(self.files)


def scan_folder(folder: Path) -> tuple[list[Path], list[Path]]:
    """(image files, other files) under `folder`, recursively, sorted for determinism."""
    folder = Path(folder)
    if not folder.exists():
        raise BadInput(f"image folder {folder} does not exist", hint="check the path")
    if not folder.is_dir():
        raise BadInput(f"{folder} is not a folder of images", hint="name a folder, or a .npz/.npy of tensors")
    images, others = [], []
    for root, _dirs, names in os.walk(folder):
        for name in names:
            path = Path(root) / name
            if name.startswith(".") or name.upper().startswith(("README", "LICENSE")):
                continue  # hidden files and a folder's own documentation are not data
            (images if path.suffix.lower() in IMAGE_SUFFIXES else others).append(path)
    return sorted(images), sorted(others)


def decode_image(path: Path, preprocessing: Preprocessing) -> np.ndarray:
    """Decode and preprocess one image; raises ValueError with the reason when it cannot."""
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                # JPEG can decode at a reduced scale: much faster for huge photos, same result after resize.
                side = preprocessing.resize or preprocessing.crop
                image.draft("RGB", (side, side))
                image.load()
                return preprocessing.apply(image)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ValueError(f"cannot decode: {one_line(exc)}") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ValueError(f"too large to decode safely ({exc})") from None


def pick_samples(files: list[Path], samples: int | None, seed: int = 0) -> list[Path]:
    """`samples` files chosen deterministically (seeded), in sorted order; all when there are fewer."""
    if samples is None or samples >= len(files):
        return list(files)
    rng = np.random.default_rng(seed)
    chosen = sorted(rng.choice(len(files), size=samples, replace=False))
    return [files[i] for i in chosen]


def _cache_dir() -> Path:
    return Path(os.environ.get(CACHE_DIR_ENV) or Path.home() / ".cache" / "edgekit")


def _content_key(files: list[Path], preprocessing: Preprocessing) -> str:
    digest = hashlib.sha256(json.dumps(preprocessing.to_dict(), sort_keys=True).encode())
    for path in files:
        digest.update(str(Path(path).resolve()).encode())  # the paths are part of the cached result
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def load_image_folder(
    folder: Path,
    preprocessing: Preprocessing,
    samples: int | None = None,
    seed: int = 0,
    use_cache: bool = True,
    on_progress: Callable[[int, int], None] | None = None,
) -> ImageSet:
    """Decode the images of a folder through `preprocessing`; corrupt files are skipped and named.

    Zero usable images is BadInput naming the folder and what was found there.
    """
    images, others = scan_folder(folder)
    chosen = pick_samples(images, samples, seed)
    key = _content_key(chosen, preprocessing)
    cache_file = _cache_dir() / f"images-{key}.npz"
    if use_cache and cache_file.is_file():
        try:
            with np.load(cache_file, allow_pickle=False) as cached:
                kept = [Path(p) for p in cached["files"].tolist()]
                corrupt = [(Path(p), r) for p, r in cached["corrupt"].tolist()] if cached["corrupt"].size else []
                tensors = cached["tensors"]
            return ImageSet(tensors, kept, corrupt, others, Path(folder), key, from_cache=True)
        except (OSError, KeyError, ValueError):
            pass  # a damaged cache entry is rebuilt below
    arrays, kept, corrupt = [], [], []
    for i, path in enumerate(chosen):
        try:
            arrays.append(decode_image(path, preprocessing))
            kept.append(path)
        except ValueError as exc:
            corrupt.append((path, str(exc)))
        if on_progress:
            on_progress(i + 1, len(chosen))
    if not arrays:
        found = f"{len(images)} image file(s), {len(corrupt)} of them unreadable, {len(others)} other file(s)"
        raise BadInput(
            f"no usable images in {folder}: found {found}",
            hint=f"point to a folder of {'/'.join(sorted(s[1:] for s in IMAGE_SUFFIXES))} images",
        )
    tensors = np.stack(arrays).astype(np.float32)
    result = ImageSet(tensors, kept, corrupt, others, Path(folder), key)
    if use_cache:
        _write_cache(cache_file, result)
    return result


def _write_cache(cache_file: Path, images: ImageSet) -> None:
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_suffix(f".{os.getpid()}.tmp.npz")
        np.savez(
            tmp,
            tensors=images.tensors,
            files=np.array([str(p) for p in images.files]),
            corrupt=np.array([(str(p), r) for p, r in images.corrupt]).reshape(-1, 2),
        )
        os.replace(tmp, cache_file)
    except OSError:
        pass  # caching is an optimisation; a read-only home must not fail the command


def load_tensor_file(path: Path, expected_chw: tuple[int, int, int]) -> np.ndarray:
    """Preprocessed tensors from .npy or .npz (one array, or the one named `input`): (N, C, H, W) float."""
    from edgekit.artifact import check_readable_file

    path = check_readable_file(Path(path), "tensor file")
    try:
        loaded = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise BadInput(f"{path} is not a readable .npy/.npz file: {exc}") from None
    if isinstance(loaded, np.lib.npyio.NpzFile):
        with loaded:
            names = list(loaded.files)
            if not names:
                raise BadInput(f"{path} holds no arrays")
            name = "input" if "input" in names else names[0]
            if len(names) > 1 and "input" not in names:
                raise BadInput(f"{path} holds several arrays ({', '.join(names)}); name the inputs one `input`")
            array = loaded[name]
    else:
        array = loaded
    if not np.issubdtype(array.dtype, np.floating):
        raise BadInput(f"{path}: tensors must be floating point (preprocessed), got dtype {array.dtype}")
    if array.ndim == 3:
        array = array[None]
    if array.ndim != 4 or tuple(array.shape[1:]) != tuple(expected_chw):
        raise BadInput(
            f"{path}: tensors have shape {tuple(array.shape)}, the model expects (N, {', '.join(map(str, expected_chw))})"
        )
    if array.shape[0] == 0:
        raise BadInput(f"{path} holds zero samples")
    if not np.isfinite(array).all():
        raise BadInput(f"{path} holds NaN or Inf values")
    return np.ascontiguousarray(array.astype(np.float32))


def seeded_random_inputs(count: int, chw: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    """Standard-normal inputs (the scale of normalised images), reproducible from `seed`."""
    return np.random.default_rng(seed).standard_normal((count, *chw)).astype(np.float32)


def batches(array: np.ndarray, batch: int) -> Iterable[np.ndarray]:
    """Split (N, ...) into batches of exactly `batch`; the last one is padded by repeating samples."""
    for start in range(0, len(array), batch):
        chunk = array[start : start + batch]
        if len(chunk) < batch:
            pad = np.resize(array, (batch - len(chunk), *array.shape[1:]))
            chunk = np.concatenate([chunk, pad])
        yield chunk


def augmented_samples(
    files: list[Path], preprocessing: Preprocessing, count: int, seed: int = 0
) -> np.ndarray:
    """`count` seeded random-resized crops (50-100 % of the area) and horizontal flips of `files`."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        path = files[i % len(files)]
        with Image.open(path) as image:
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
    if samples < 1:
        raise BadInput(f"--samples must be at least 1, got {samples}")
    chw = preprocessing.chw
    notes: list[str] = []
    if source.is_file() or source.suffix in (".npz", ".npy"):
        tensors = load_tensor_file(source, chw)
        if len(tensors) < 2:
            raise BadInput(f"{source} holds {len(tensors)} sample; at least 2 are needed (calibration + held-out)")
        n_hold = max(1, int(round(len(tensors) * HOLDOUT_FRACTION)))
        calib, hold = tensors[:-n_hold], tensors[-n_hold:]
        if len(calib) > samples:
            calib = calib[np.sort(np.random.default_rng(seed).choice(len(calib), samples, replace=False))]
        elif len(calib) < samples:
            notes.append(f"{source} has {len(calib)} calibration samples, fewer than the {samples} asked; using {len(calib)}")
        from edgekit.artifact import sha256_file

        return CalibrationSet(
            calib, hold, str(source), "tensors", sha256_file(source),
            f"{len(calib)} tensors from {source}", f"the last {len(hold)} tensors of {source}", notes,
        )

    images, others = scan_folder(source)
    if others:
        notes.append(f"{len(others)} file(s) in {source} are not images and were ignored")
    want = int(np.ceil(samples / (1 - HOLDOUT_FRACTION))) + 1
    loaded = load_image_folder(source, preprocessing, samples=want, seed=seed, on_progress=on_progress)
    for path, reason in loaded.corrupt:
        notes.append(f"skipped {path}: {reason}")
    usable = loaded.files
    if len(usable) < 2:
        raise BadInput(
            f"{source} has {len(usable)} usable image(s); at least 2 are needed (calibration + held-out)",
            hint="add images or pass a bigger folder with --calibration",
        )
    order = np.random.default_rng(seed).permutation(len(usable))
    n_hold = max(1, int(round(len(usable) * HOLDOUT_FRACTION)))
    hold_idx, calib_idx = sorted(order[:n_hold]), sorted(order[n_hold:])
    calib_files = [usable[i] for i in calib_idx]
    calib = loaded.tensors[calib_idx]
    if len(calib) > samples:
        pick = np.sort(np.random.default_rng(seed + 1).choice(len(calib), samples, replace=False))
        calib, calib_files = calib[pick], [calib_files[i] for i in pick]
    elif len(calib) < samples:
        if augment:
            extra = augmented_samples(calib_files, preprocessing, samples - len(calib), seed)
            notes.append(
                f"{len(calib)} calibration images for {samples} samples: added {len(extra)} seeded crops/flips (--augment)"
            )
            calib = np.concatenate([calib, extra])
        else:
            notes.append(
                f"{source} has {len(calib)} calibration images (after holding out {n_hold}), fewer than the "
                f"{samples} asked; using {len(calib)} (--augment adds seeded crops and flips)"
            )
    hold_files = [usable[i] for i in hold_idx]
    hold = loaded.tensors[hold_idx]
    extra_hold = max(0, MIN_HOLDOUT_SAMPLES - len(hold))
    if extra_hold:
        hold = np.concatenate([hold, augmented_samples(hold_files, preprocessing, extra_hold, seed + 2)])
    digest = hashlib.sha256(json.dumps(preprocessing.to_dict(), sort_keys=True).encode())
    digest.update(np.ascontiguousarray(calib).tobytes())
    return CalibrationSet(
        calib, hold, str(source), "images", digest.hexdigest(),
        f"{len(calib)} samples from {len(calib_files)} images in {source}",
        f"{len(hold_files)} held-out images in {source}" + (f" + {extra_hold} seeded crops/flips of them" if extra_hold else ""),
        notes,
    )
