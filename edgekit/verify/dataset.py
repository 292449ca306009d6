"""Top-1 accuracy on labelled data: the reference's and the ONNX file's on each provider. The data is an
ImageFolder tree (one sub-folder per class) or an .npz of preprocessed tensors with their labels."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import numpy as np

from edgekit.core import limits
from edgekit.core.files import shown_path
from edgekit.data.images import decode_chunks, pick_samples, scan_image_folder, skipped_note
from edgekit.core.errors import BadInput
from edgekit.data.preprocessing import Preprocessing
from edgekit.runtimes.runners import top1
from edgekit.verify.results import DatasetAccuracy, ProviderAccuracy

DATASET_CHUNK = 64  # --dataset images are decoded and run this many at a time
# The (inputs, labels) key pairs an --dataset .npz may use, in the order they are looked for.
NPZ_KEYS = (("x", "y"), ("inputs", "labels"), ("input", "labels"), ("images", "labels"), ("tensors", "labels"))


def is_npz(path: Path) -> bool:
    return Path(path).suffix.lower() == ".npz"


def _npz_members(path: Path) -> tuple[str, str, list[str]]:
    """(inputs member, labels member, every array name) of a labelled .npz; BadInput naming the keys it wants."""
    import zipfile

    from edgekit.core.files import check_readable_file

    shown = shown_path(path)
    check_readable_file(Path(path), "--dataset file")
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.namelist()
    except (zipfile.BadZipFile, OSError) as exc:
        raise BadInput(f"--dataset {shown} is not a readable .npz ({type(exc).__name__})",
                       hint="save it with np.savez(path, x=inputs, y=labels)") from None
    names = {(m[:-4] if m.endswith(".npy") else m): m for m in members}
    for x, y in NPZ_KEYS:
        if x in names and y in names:
            return names[x], names[y], sorted(names)
    keys = ", ".join(sorted(names)[:8]) or "none"
    raise BadInput(f"--dataset {shown} holds arrays {keys}, not preprocessed inputs with labels",
                   hint="keys " + " or ".join(f"{x}/{y}" for x, y in NPZ_KEYS[:2]) + ": (N, C, H, W) float and (N,) int")


def load_labelled_npz(path: Path, chw: tuple[int, int, int] | None,
                      num_classes: int | None) -> tuple[np.ndarray, np.ndarray]:
    """(inputs (N, C, H, W) float32, labels (N,) int64) from an .npz, read without pickle, every array's size bounded
    by its header before it is read; labels must be whole numbers in [0, num_classes)."""
    import zipfile

    from edgekit.core.files import open_regular
    from edgekit.data.tensors import read_npz_member

    x_name, y_name, _ = _npz_members(path)
    label = f"--dataset {shown_path(path)}"
    try:
        with open_regular(Path(path)) as f, zipfile.ZipFile(f) as archive:
            x = read_npz_member(archive, x_name, label, chw)
            y = read_npz_member(archive, y_name, label)
    except BadInput:
        raise
    except Exception as exc:  # a truncated archive, a bad CRC: the file's fault
        raise BadInput(f"{label} is not a readable .npz ({type(exc).__name__}: {exc})"[:300],
                       hint="save it again with np.savez(path, x=inputs, y=labels)") from None
    if x.ndim == 3:
        x = x[None]
    if y.ndim != 1 or len(y) != len(x):
        raise BadInput(f"{label}: labels {y_name!r} have shape {tuple(y.shape)}, the inputs {x_name!r} {tuple(x.shape)}",
                       hint="one integer label per input: shape (N,)")
    if not np.issubdtype(y.dtype, np.integer):
        raise BadInput(f"{label}: labels {y_name!r} are {y.dtype}, not integers", hint="class indices 0..classes-1")
    if len(y) and (y.min() < 0 or (num_classes is not None and y.max() >= num_classes)):
        raise BadInput(f"{label}: labels run from {int(y.min())} to {int(y.max())}, but the model has {num_classes} "
                       "outputs", hint="class indices 0..classes-1")
    if not np.isfinite(x).all():
        raise BadInput(f"{label}: the inputs {x_name!r} hold NaN or Inf")
    return np.ascontiguousarray(x, dtype=np.float32), y.astype(np.int64)


def scan_dataset(folder: Path) -> tuple[list[str], list[tuple[Path, int]], list[str]]:
    """(class names, (file, label) pairs, classes without images) of an ImageFolder-style tree:
    one sub-folder per class, labels are the indices of the sorted folder names (torchvision's rule)."""
    classes, samples, empty, _skipped = _scan_dataset(folder)
    return classes, samples, empty


def _scan_dataset(folder: Path) -> tuple[list[str], list[tuple[Path, int]], list[str], list[tuple[Path, str]]]:
    """scan_dataset, and the entries skipped because they are not regular files (FIFOs, broken links, ...).

    Only regular files are listed (calibration.scan_image_folder); a class folder may be a symlink
    to a folder. More than limits.MAX_IMAGES_IN_FOLDER files in all is BadInput.
    """
    folder = Path(folder)
    shown = shown_path(folder)
    if not folder.is_dir():
        raise BadInput(
            f"--dataset {shown} is not a folder" + ("" if os.path.lexists(folder) else " (it does not exist)"),
            hint="one sub-folder of images per class, as torchvision's ImageFolder",
        )
    try:
        with os.scandir(folder) as listing:
            entries = sorted(listing, key=lambda e: e.name)
    except OSError as exc:
        raise BadInput(f"--dataset {shown} cannot be listed: {exc.strerror or exc}", hint="check its permissions") from None
    classes: list[str] = []
    skipped: list[tuple[Path, str]] = []
    for entry in entries:
        if entry.name.startswith("."):
            continue
        try:
            if entry.is_dir(follow_symlinks=True):
                classes.append(entry.name)
        except OSError:
            pass
        if entry.is_symlink() and not os.path.exists(entry.path):
            skipped.append((Path(entry.path), "a broken symlink or a symlink loop"))
    if not classes:
        raise BadInput(
            f"--dataset {shown} has no class sub-folders", hint="one sub-folder of images per class, as ImageFolder"
        )
    samples: list[tuple[Path, int]] = []
    empty: list[str] = []
    cap = limits.MAX_IMAGES_IN_FOLDER
    for label, name in enumerate(classes):
        scan = scan_image_folder(folder / name)
        skipped += scan.skipped
        if not scan.images:
            empty.append(name)
        samples += [(f, label) for f in scan.images]
        if len(samples) > cap:
            raise BadInput(
                f"--dataset {shown} holds more than {cap:,} images, over edgekit's limit for one folder",
                hint="point to a smaller copy of it: a sample of each class folder",
            )
    return classes, samples, empty, skipped


def check_dataset(
    folder: Path, num_classes: int | None, samples: int | None = None
) -> tuple[list[str], list[tuple[Path, int]], list[str]]:
    """scan_dataset, and BadInput when the folder cannot be scored against a `num_classes` model
    (or `samples`, the --samples asked, is out of range). An .npz: its keys are checked ([], [], [])."""
    if samples is not None:
        limits.check_count(samples, "--samples", limits.MAX_SAMPLES)
    if is_npz(folder):
        _npz_members(Path(folder))
        return [], [], []
    classes, pairs, empty = scan_dataset(folder)
    _check_scan(folder, num_classes, classes, pairs)
    return classes, pairs, empty


def _check_scan(folder: Path, num_classes: int | None, classes: list[str], pairs: list) -> None:
    shown = shown_path(folder)
    if num_classes is not None and len(classes) > num_classes:
        raise BadInput(
            f"--dataset {shown} has {len(classes)} classes but the model has {num_classes} outputs",
            hint="point to a folder with at most as many class sub-folders as the model has classes",
        )
    if not pairs:
        raise BadInput(f"--dataset {shown}: its {len(classes)} class folders hold no images")


def measure_dataset(
    folder: Path,
    reference: Callable[[np.ndarray], np.ndarray],
    sessions: list,
    preprocessing: Preprocessing,
    num_classes: int,
    max_drop: float | None,
    samples: int | None,
    seed: int,
    on_stage: Callable[[str], None],
) -> DatasetAccuracy:
    """Top-1 of the reference (`reference(x)`: its outputs) and of each session on a labelled folder, decoded and run
    in chunks, or on a labelled .npz."""
    if samples is not None:
        limits.check_count(samples, "--samples", limits.MAX_SAMPLES)
    if is_npz(folder):
        return _measure_npz(Path(folder), reference, sessions, preprocessing, num_classes, max_drop, samples, seed,
                            on_stage)
    classes, pairs, empty, not_regular = _scan_dataset(folder)
    _check_scan(folder, num_classes, classes, pairs)
    label_of = dict(pairs)
    chosen = pick_samples([p for p, _ in pairs], samples, seed)
    notes = []
    if empty:
        notes.append(f"class folders without images: {', '.join(shown_path(e) for e in empty[:5])}")
    if not_regular:
        notes.append(skipped_note(Path(folder), not_regular))
    if len(classes) < num_classes:
        notes.append(
            f"{len(classes)} class folders for a {num_classes}-class model: label i is the i-th folder name in "
            "sorted order (torchvision's ImageFolder rule)"
        )
    skipped: list[tuple[Path, str]] = []
    torch_correct = 0
    correct = [0] * len(sessions)
    agree = [0] * len(sessions)
    used = 0
    for end, decoded, x, failed in decode_chunks(chosen, preprocessing, DATASET_CHUNK):
        on_stage(f"dataset {min(end, len(chosen))}/{len(chosen)}")
        skipped += failed
        if x is None:
            continue
        y = np.asarray([label_of[chosen[i]] for i in decoded])
        torch_pred = reference(x).reshape(len(x), -1).argmax(axis=1)
        torch_correct += int((torch_pred == y).sum())
        for i, session in enumerate(sessions):
            pred = top1(session, x)
            correct[i] += int((pred == y).sum())
            agree[i] += int((pred == torch_pred).sum())
        used += len(x)
    if used == 0:
        raise BadInput(f"--dataset {shown_path(folder)}: none of its {len(chosen)} images could be decoded")
    reference_top1 = 100.0 * torch_correct / used
    return DatasetAccuracy(
        folder=Path(folder),
        classes=classes,
        samples=used,
        torch_correct=torch_correct,
        providers=[
            ProviderAccuracy(s.requested, s.ran_on, correct[i], agree[i], used, reference_top1, s.device)
            for i, s in enumerate(sessions)
        ],
        max_drop=max_drop,
        skipped=skipped,
        notes=notes,
    )


def _measure_npz(path: Path, reference, sessions: list, preprocessing: Preprocessing, num_classes: int,
                 max_drop: float | None, samples: int | None, seed: int, on_stage) -> DatasetAccuracy:
    x, y = load_labelled_npz(path, preprocessing.chw, num_classes)
    if samples is not None and samples < len(x):
        keep = np.sort(np.random.default_rng(seed).choice(len(x), samples, replace=False))
        x, y = x[keep], y[keep]
    ref_correct, correct, agree = 0, [0] * len(sessions), [0] * len(sessions)
    for start in range(0, len(x), DATASET_CHUNK):
        on_stage(f"dataset {min(start + DATASET_CHUNK, len(x))}/{len(x)}")
        xs, ys = x[start:start + DATASET_CHUNK], y[start:start + DATASET_CHUNK]
        ref_pred = reference(xs).reshape(len(xs), -1).argmax(axis=1)
        ref_correct += int((ref_pred == ys).sum())
        for i, session in enumerate(sessions):
            pred = top1(session, xs)
            correct[i] += int((pred == ys).sum())
            agree[i] += int((pred == ref_pred).sum())
    used = len(x)
    classes = [str(c) for c in range(num_classes)]
    reference_top1 = 100.0 * ref_correct / used
    return DatasetAccuracy(
        folder=path, classes=classes, samples=used, torch_correct=ref_correct,
        providers=[ProviderAccuracy(s.requested, s.ran_on, correct[i], agree[i], used, reference_top1, s.device)
                   for i, s in enumerate(sessions)],
        max_drop=max_drop, skipped=[], notes=[f"{used} preprocessed tensors with labels from {shown_path(path)}"],
    )
