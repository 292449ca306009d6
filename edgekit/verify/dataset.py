"""Top-1 accuracy on a labelled ImageFolder tree: PyTorch's and the ONNX file's on each provider."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from edgekit.calibration import decode_image, pick_samples, scan_folder
from edgekit.errors import BadInput
from edgekit.preprocessing import Preprocessing
from edgekit.runners import batch_sizes, run_session, run_torch
from edgekit.verify.results import DatasetAccuracy, ProviderAccuracy

DATASET_CHUNK = 64  # --dataset images are decoded and run this many at a time


def scan_dataset(folder: Path) -> tuple[list[str], list[tuple[Path, int]], list[str]]:
    """(class names, (file, label) pairs, classes without images) of an ImageFolder-style tree:
    one sub-folder per class, labels are the indices of the sorted folder names (torchvision's rule)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise BadInput(
            f"--dataset {folder} is not a folder" + ("" if folder.exists() else " (it does not exist)"),
            hint="one sub-folder of images per class, as torchvision's ImageFolder",
        )
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise BadInput(
            f"--dataset {folder} has no class sub-folders", hint="one sub-folder of images per class, as ImageFolder"
        )
    samples: list[tuple[Path, int]] = []
    empty: list[str] = []
    for label, name in enumerate(classes):
        files, _others = scan_folder(folder / name)
        if not files:
            empty.append(name)
        samples += [(f, label) for f in files]
    return classes, samples, empty


def check_dataset(folder: Path, num_classes: int | None) -> tuple[list[str], list[tuple[Path, int]], list[str]]:
    """scan_dataset, and BadInput when the folder cannot be scored against a `num_classes` model."""
    classes, samples, empty = scan_dataset(folder)
    if num_classes is not None and len(classes) > num_classes:
        raise BadInput(
            f"--dataset {folder} has {len(classes)} classes but the model has {num_classes} outputs",
            hint="point to a folder with at most as many class sub-folders as the model has classes",
        )
    if not samples:
        raise BadInput(f"--dataset {folder}: its {len(classes)} class folders hold no images")
    return classes, samples, empty


def measure_dataset(
    folder: Path,
    model,
    sessions: list,
    preprocessing: Preprocessing,
    num_classes: int,
    max_drop: float | None,
    samples: int | None,
    seed: int,
    on_stage: Callable[[str], None],
) -> DatasetAccuracy:
    """Top-1 of PyTorch and of each session on a labelled folder, decoded and run in chunks."""
    classes, pairs, empty = check_dataset(folder, num_classes)
    label_of = dict(pairs)
    chosen = pick_samples([p for p, _ in pairs], samples, seed)
    notes = []
    if empty:
        notes.append(f"class folders without images: {', '.join(empty[:5])}")
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
    for start in range(0, len(chosen), DATASET_CHUNK):
        on_stage(f"dataset {min(start + DATASET_CHUNK, len(chosen))}/{len(chosen)}")
        arrays, labels = [], []
        for path in chosen[start : start + DATASET_CHUNK]:
            try:
                arrays.append(decode_image(path, preprocessing))
                labels.append(label_of[path])
            except ValueError as exc:
                skipped.append((path, str(exc)))
        if not arrays:
            continue
        x = np.stack(arrays).astype(np.float32)
        y = np.asarray(labels)
        torch_pred = run_torch(model, x).argmax(axis=1)
        torch_correct += int((torch_pred == y).sum())
        for i, session in enumerate(sessions):
            pred = run_session(session, x, batch_sizes(session)[-1])[0].reshape(len(x), -1).argmax(axis=1)
            correct[i] += int((pred == y).sum())
            agree[i] += int((pred == torch_pred).sum())
        used += len(x)
    if used == 0:
        raise BadInput(f"--dataset {folder}: none of its {len(chosen)} images could be decoded")
    reference_top1 = 100.0 * torch_correct / used
    return DatasetAccuracy(
        folder=Path(folder),
        classes=classes,
        samples=used,
        torch_correct=torch_correct,
        providers=[
            ProviderAccuracy(s.requested, s.ran_on, correct[i], agree[i], used, reference_top1)
            for i, s in enumerate(sessions)
        ],
        max_drop=max_drop,
        skipped=skipped,
        notes=notes,
    )
