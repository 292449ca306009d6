"""Digits references: small CNNs trained on real labelled data, for quantization accuracy checks.

No pretrained weights can be downloaded here, so quantization accuracy cannot be measured on
ImageNet. scikit-learn ships 1797 real, labelled 8x8 grayscale digits; this script writes them
as an ImageFolder (train / calib / test, one sub-folder per class 0..9), trains torchvision's
resnet18, resnext50_32x4d and densenet121 on them at 32x32 through edgekit's own preprocessing
(so training sees exactly what a deployed .onnx sees), and saves each as

    <out>/<name>-digits.safetensors   the state_dict (edgekit export --weights ... --input-size 32)
    <out>/<name>-digits.json          test accuracy, epochs, seconds, split sizes, recipe

Usage:

    .venv/bin/python benchmarks/digits.py
    .venv/bin/python benchmarks/digits.py --models resnet18 --epochs 8 --out benchmarks/checkpoints

The test split is held out: it is never used for training, model selection or early stopping
(the calibration split is the validation set printed each epoch). Training runs on one thread.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SPLITS = ("train", "calib", "test")
CLASSES = tuple(str(d) for d in range(10))
INPUT = 32
SEED = 0
DEFAULT_MODELS = ("resnet18", "resnext50_32x4d", "densenet121")
DEFAULT_DATA = ROOT / "benchmarks" / "work" / "digits"
DEFAULT_OUT = ROOT / "benchmarks" / "checkpoints"
MANIFEST = "digits-split.json"


def preprocessing():
    """How the references are trained and must be fed: the 32x32 images as they are (shorter side 32,
    centre crop 32: no rescale, no crop), ImageNet mean/std. Export them with `--resize 32 --crop 32`."""
    from edgekit.data.preprocessing import Preprocessing

    return Preprocessing(resize=INPUT, crop=INPUT)
TEST_FRACTION = 0.15
CALIB_FRACTION = 0.15


# --------------------------------------------------------------------------------------------
# The image folder
# --------------------------------------------------------------------------------------------


def load_digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """sklearn's digits: (1797, 8, 8) float values 0..16 and (1797,) int labels 0..9."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    return np.asarray(digits.images, dtype=np.float64), np.asarray(digits.target, dtype=np.int64)


def split_indices(labels: np.ndarray, seed: int = SEED) -> dict[str, np.ndarray]:
    """Deterministic stratified split of range(len(labels)): ~70% train, 15% calib, 15% test.

    Each split's indices are sorted; the three are disjoint and cover every sample.
    """
    from sklearn.model_selection import train_test_split

    labels = np.asarray(labels)
    everything = np.arange(len(labels))
    rest, test = train_test_split(everything, test_size=TEST_FRACTION, stratify=labels, random_state=seed)
    n_calib = int(round(len(labels) * CALIB_FRACTION))
    train, calib = train_test_split(rest, test_size=n_calib, stratify=labels[rest], random_state=seed)
    return {"train": np.sort(train), "calib": np.sort(calib), "test": np.sort(test)}


def digit_image(pixels: np.ndarray, size: int = INPUT):
    """One 8x8 digit (values 0..16) -> a `size` x `size` 8-bit grayscale PIL image (bilinear)."""
    from PIL import Image

    array = np.clip(np.rint(np.asarray(pixels, dtype=np.float64) * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    image = Image.fromarray(array, mode="L")
    return image if size == array.shape[0] else image.resize((size, size), Image.Resampling.BILINEAR)


def _file_name(index: int) -> str:
    return f"{index:04d}.png"


def _expected_manifest(labels: np.ndarray, splits: dict[str, np.ndarray], size: int, seed: int) -> dict:
    return {
        "source": "sklearn.datasets.load_digits",
        "samples": int(len(labels)),
        "size": int(size),
        "seed": int(seed),
        "layout": "<split>/<digit>/<index>.png, index = position in load_digits()",
        "splits": {
            name: {
                "count": int(len(idx)),
                "per_class": [int((labels[idx] == c).sum()) for c in range(10)],
                "indices": [int(i) for i in idx],
            }
            for name, idx in splits.items()
        },
    }


def _is_complete(root: Path, manifest: dict, labels: np.ndarray) -> bool:
    path = root / MANIFEST
    try:
        if json.loads(path.read_text()) != manifest:
            return False
    except (OSError, ValueError):
        return False
    for name in SPLITS:
        indices = manifest["splits"][name]["indices"]
        wanted = {(str(int(labels[i])), _file_name(i)) for i in indices}
        found = {
            (p.parent.name, p.name) for p in (root / name).glob("*/*") if p.is_file() and not p.name.startswith(".")
        }
        if wanted != found:
            return False
    return True


def _check_replaceable(folder: Path) -> None:
    """Refuse to delete a split folder that holds anything this script would not have written."""
    if not folder.exists():
        return
    for path in folder.rglob("*"):
        rel = path.relative_to(folder).parts
        ours = (len(rel) == 1 and path.is_dir() and rel[0] in CLASSES) or (
            len(rel) == 2 and path.is_file() and rel[0] in CLASSES and rel[1].endswith(".png")
        )
        if not ours:
            raise SystemExit(f"error: {folder} holds {path.name!r}, not written by this script; refusing to replace it")


def write_digits_imagefolder(root: Path, size: int = INPUT, seed: int = SEED) -> dict:
    """Write sklearn's digits as root/{train,calib,test}/<digit>/<index>.png (ImageFolder layout).

    Deterministic (stratified split seeded by `seed`); idempotent: when root already holds
    exactly this split at this size (checked against root/digits-split.json and the files), nothing
    is written. Otherwise the splits are written into a staging folder and moved into place, and
    the manifest is written last, so an interrupted run is redone, never half-trusted.
    Returns {"root", "size", "sizes": {split: count}, "written": bool}.
    """
    root = Path(root)
    images, labels = load_digits_arrays()
    splits = split_indices(labels, seed)
    manifest = _expected_manifest(labels, splits, size, seed)
    sizes = {name: len(idx) for name, idx in splits.items()}
    if _is_complete(root, manifest, labels):
        return {"root": root, "size": size, "sizes": sizes, "written": False}

    for name in SPLITS:
        _check_replaceable(root / name)
    root.mkdir(parents=True, exist_ok=True)
    (root / MANIFEST).unlink(missing_ok=True)
    staging = root / f".staging-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        for name, indices in splits.items():
            for c in CLASSES:
                (staging / name / c).mkdir(parents=True)
            for i in indices:
                digit_image(images[i], size).save(staging / name / str(int(labels[i])) / _file_name(int(i)))
        for name in SPLITS:
            shutil.rmtree(root / name, ignore_errors=True)
            os.replace(staging / name, root / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    tmp = root / f".{MANIFEST}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(manifest, indent=1) + "\n")
    os.replace(tmp, root / MANIFEST)
    return {"root": root, "size": size, "sizes": sizes, "written": True}


def load_split(root: Path, split: str, input_size: int = INPUT):
    """(images (N, 3, S, S) float32 tensor, labels (N,) int64 tensor) through edgekit's preprocessing."""
    import torch

    from edgekit.data.images import load_image_folder
    from edgekit.data.preprocessing import Preprocessing

    recipe = preprocessing() if input_size == INPUT else Preprocessing(resize=input_size, crop=input_size)
    arrays, labels = [], []
    for c in CLASSES:
        images = load_image_folder(Path(root) / split / c, recipe, use_cache=False)
        if images.corrupt:
            raise SystemExit(f"error: unreadable images in {root}/{split}/{c}: {images.corrupt[:3]}")
        arrays.append(images.tensors)
        labels.append(np.full(len(images), int(c), dtype=np.int64))
    return torch.from_numpy(np.concatenate(arrays)), torch.from_numpy(np.concatenate(labels))


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------


@dataclass
class Recipe:
    """How every reference is trained (recorded in its JSON)."""

    epochs: int = 12
    batch: int = 64
    optimizer: str = "AdamW"
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    schedule: str = "linear warmup, then cosine to 0, per step"
    max_shift: int = 3  # random shifts of up to this many pixels (pad with black, crop)
    seed: int = SEED

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class TrainResult:
    model: object
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0


def background_value(mean=None, std=None):
    """A black pixel after edgekit's normalisation, shaped (1, 3, 1, 1)."""
    import torch

    from edgekit.data.preprocessing import IMAGENET_MEAN, IMAGENET_STD

    mean = torch.tensor(mean or IMAGENET_MEAN)
    std = torch.tensor(std or IMAGENET_STD)
    return (-mean / std).view(1, 3, 1, 1)


def random_shift(x, max_shift: int, generator, fill):
    """Shift each image by its own random (dx, dy) in [-max_shift, max_shift], filling with `fill`."""
    import torch
    import torch.nn.functional as F

    if max_shift <= 0:
        return x
    n, _, h, w = x.shape
    padded = F.pad(x - fill, (max_shift,) * 4) + fill
    offsets = torch.randint(0, 2 * max_shift + 1, (n, 2), generator=generator)
    return torch.stack([padded[i, :, dy : dy + h, dx : dx + w] for i, (dy, dx) in enumerate(offsets.tolist())])


def accuracy(model, x, y, batch: int = 256) -> tuple[float, int]:
    """(top-1 accuracy, correct count) of `model` in eval mode."""
    import torch

    model.eval()
    correct = 0
    with torch.no_grad():
        for start in range(0, len(x), batch):
            correct += int((model(x[start : start + batch]).argmax(1) == y[start : start + batch]).sum())
    return correct / len(x), correct


def lr_at(step: int, total: int, warmup: int, peak: float) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * 0.5 * (1.0 + math.cos(math.pi * progress))


def train(model, train_x, train_y, recipe: Recipe, val=None, log=print) -> TrainResult:
    """Train `model` in place (seeded shuffling and augmentation); log one line per epoch."""
    import torch
    import torch.nn.functional as F

    generator = torch.Generator().manual_seed(recipe.seed)
    decay = [p for n, p in model.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]
    if recipe.optimizer == "AdamW":
        optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": recipe.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=recipe.lr,
        )
    elif recipe.optimizer == "SGD":
        optimizer = torch.optim.SGD(
            [{"params": decay, "weight_decay": recipe.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=recipe.lr, momentum=0.9, nesterov=True,
        )
    else:
        raise ValueError(f"unknown optimizer {recipe.optimizer!r}")
    fill = background_value()
    n = len(train_x)
    steps_per_epoch = math.ceil(n / recipe.batch)
    total = recipe.epochs * steps_per_epoch
    warmup = max(1, int(recipe.warmup_epochs * steps_per_epoch))
    step = 0
    result = TrainResult(model)
    start = time.perf_counter()
    for epoch in range(1, recipe.epochs + 1):
        model.train()
        order = torch.randperm(n, generator=generator)
        if n % recipe.batch == 1:  # a batch of one breaks BatchNorm in training mode
            order = order[:-1]
        seen = loss_sum = correct = 0
        for first in range(0, len(order), recipe.batch):
            idx = order[first : first + recipe.batch]
            x = random_shift(train_x[idx], recipe.max_shift, generator, fill)
            y = train_y[idx]
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, total, warmup, recipe.lr)
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            seen += len(y)
            loss_sum += float(loss.detach()) * len(y)
            correct += int((logits.argmax(1) == y).sum())
        row = {
            "epoch": epoch,
            "loss": round(loss_sum / seen, 5),
            "train_acc": round(correct / seen, 5),
            "seconds": round(time.perf_counter() - start, 1),
        }
        if val is not None:
            row["calib_acc"] = round(accuracy(model, *val)[0], 5)
        result.history.append(row)
        log(
            f"  epoch {epoch:2d}/{recipe.epochs}  loss {row['loss']:.4f}  train {row['train_acc']:.2%}"
            + (f"  calib {row['calib_acc']:.2%}" if "calib_acc" in row else "")
            + f"  {row['seconds']:.0f} s"
        )
    result.seconds = time.perf_counter() - start
    model.eval()
    return result


def train_reference(name: str, data: dict, out: Path, recipe: Recipe, sizes: dict, log=print) -> dict:
    """Train one model on the digits, save <out>/<name>-digits.safetensors and .json; returns the JSON."""
    import torch
    from safetensors.torch import save_file

    from edgekit.onnxfile.artifact import sha256_file
    from edgekit.models.registry import create_model, get_spec

    canonical = get_spec(name).name
    torch.manual_seed(recipe.seed)
    model = create_model(canonical, num_classes=10, input_size=INPUT, seed=recipe.seed)
    params = sum(p.numel() for p in model.parameters())
    log(f"{canonical}: {params / 1e6:.2f} M parameters, {recipe.epochs} epochs, {torch.get_num_threads()} thread(s)")
    result = train(model, *data["train"], recipe, val=data["calib"], log=log)
    test_acc, test_correct = accuracy(model, *data["test"])
    calib_acc, _ = accuracy(model, *data["calib"])
    log(f"{canonical}: test top-1 {test_acc:.2%} ({test_correct}/{len(data['test'][1])}), {result.seconds:.0f} s")

    out.mkdir(parents=True, exist_ok=True)
    weights = out / f"{canonical}-digits.safetensors"
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    tmp = weights.with_name(f".{weights.name}.{os.getpid()}.tmp")
    save_file(state, str(tmp), metadata={"model": canonical, "dataset": "sklearn digits", "input_size": str(INPUT)})
    os.chmod(tmp, 0o644)  # safetensors writes 0600; these are shared references
    os.replace(tmp, weights)
    report = {
        "model": canonical,
        "dataset": "sklearn.datasets.load_digits (1797 real 8x8 digits), ImageFolder written by benchmarks/digits.py",
        "num_classes": 10,
        "input_size": INPUT,
        "preprocessing": preprocessing().to_dict(),
        "test_accuracy": round(test_acc, 6),
        "test_correct": test_correct,
        "calib_accuracy": round(calib_acc, 6),
        "epochs": recipe.epochs,
        "seconds": round(result.seconds, 1),
        "threads": torch.get_num_threads(),
        "split_sizes": dict(sizes),
        "parameters": params,
        "recipe": recipe.to_dict(),
        "history": result.history,
        "weights": weights.name,
        "weights_sha256": sha256_file(weights),
        "torch": torch.__version__,
    }
    meta = weights.with_suffix(".json")
    tmp = meta.with_name(f".{meta.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(report, indent=1) + "\n")
    os.replace(tmp, meta)
    return report


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS), help="comma-separated registered model names")
    parser.add_argument("--epochs", type=int, default=Recipe.epochs)
    parser.add_argument("--lr", type=float, default=Recipe.lr)
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: the machine is shared)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where the .safetensors/.json go")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="where the digits ImageFolder is written")
    parser.add_argument("--data-only", action="store_true", help="write the ImageFolder and stop (no training)")
    args = parser.parse_args(argv)
    if args.epochs < 1:
        parser.error("--epochs must be at least 1")

    import torch

    torch.set_num_threads(args.threads)
    try:
        torch.set_num_interop_threads(args.threads)
    except RuntimeError:
        pass  # already set (only possible once per process)

    from edgekit.core.errors import EdgekitError
    from edgekit.models.registry import get_spec

    try:
        names = [get_spec(n).name for n in args.models.split(",") if n.strip()]
    except EdgekitError as exc:
        parser.error(str(exc))
    if not names:
        parser.error("--models names no model")

    folder = write_digits_imagefolder(args.data, INPUT, args.seed)
    print(
        f"digits ImageFolder {folder['root']} ({'written' if folder['written'] else 'already complete'}): "
        + ", ".join(f"{k} {v}" for k, v in folder["sizes"].items())
    )
    if args.data_only:
        return 0
    t = time.perf_counter()
    data = {split: load_split(args.data, split) for split in SPLITS}
    print(f"loaded through {preprocessing().describe()} in {time.perf_counter() - t:.1f} s")

    recipe = Recipe(epochs=args.epochs, lr=args.lr, seed=args.seed)
    reports = []
    start = time.perf_counter()
    for name in names:
        reports.append(train_reference(name, data, args.out, recipe, folder["sizes"]))
    total = time.perf_counter() - start
    print()
    for r in reports:
        print(f"{r['model']:<18} test top-1 {r['test_accuracy']:.2%}  calib {r['calib_accuracy']:.2%}  "
              f"{r['epochs']} epochs  {r['seconds']:.0f} s  -> {args.out / r['weights']}")
    print(f"total training time {total:.0f} s on {torch.get_num_threads()} thread(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
