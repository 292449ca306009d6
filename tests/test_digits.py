"""benchmarks/digits.py: the digits split and ImageFolder, and that its training step learns.

Fast (no big model is trained): the split is deterministic, stratified, disjoint and complete;
the folder is an ImageFolder with 10 classes that edgekit's own loader reads; writing is idempotent.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("sklearn")

ROOT = Path(__file__).resolve().parent.parent


from benchmarks import digits  # noqa: E402  (after the importorskip)


@pytest.fixture(scope="module")
def labels():
    return digits.load_digits_arrays()[1]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("digits")
    info = digits.write_digits_imagefolder(root, size=32)
    return root, info


def test_split_is_deterministic_disjoint_and_complete(labels):
    a = digits.split_indices(labels, seed=0)
    b = digits.split_indices(labels, seed=0)
    assert set(a) == {"train", "calib", "test"}
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])
    sets = {name: set(idx.tolist()) for name, idx in a.items()}
    assert not sets["train"] & sets["calib"]
    assert not sets["train"] & sets["test"]
    assert not sets["calib"] & sets["test"]
    assert sets["train"] | sets["calib"] | sets["test"] == set(range(len(labels)))
    assert len(labels) == 1797
    assert {name: len(idx) for name, idx in a.items()} == {"train": 1257, "calib": 270, "test": 270}
    other = digits.split_indices(labels, seed=1)
    assert not np.array_equal(other["test"], a["test"])  # the seed matters


def test_split_is_stratified(labels):
    overall = np.bincount(labels, minlength=10) / len(labels)
    for name, idx in digits.split_indices(labels).items():
        counts = np.bincount(labels[idx], minlength=10)
        assert (counts > 0).all(), name
        # every class within 1.5 samples of its proportional share (train takes two roundings)
        assert np.abs(counts - overall * len(idx)).max() <= 1.5, (name, counts)


def test_imagefolder_layout(folder, labels):
    root, info = folder
    assert info["written"] is True
    assert info["sizes"] == {"train": 1257, "calib": 270, "test": 270}
    split = digits.split_indices(labels)
    for name in ("train", "calib", "test"):
        classes = sorted(p.name for p in (root / name).iterdir())
        assert classes == [str(d) for d in range(10)]
        files = sorted((root / name).glob("*/*.png"))
        assert len(files) == info["sizes"][name]
        # every file sits in its own label's folder, named by its load_digits() index
        indices = sorted(int(p.stem) for p in files)
        assert indices == split[name].tolist()
        for p in files[:: max(1, len(files) // 25)]:
            assert int(p.parent.name) == labels[int(p.stem)]
    manifest = json.loads((root / digits.MANIFEST).read_text())
    assert manifest["splits"]["test"]["indices"] == split["test"].tolist()


def test_images_are_scaled_upsampled_grayscale(folder, labels):
    from PIL import Image

    root, _ = folder
    images, _ = digits.load_digits_arrays()
    path = next((root / "test").glob("*/*.png"))
    with Image.open(path) as image:
        assert image.mode == "L" and image.size == (32, 32)
        array = np.asarray(image)
    assert array.dtype == np.uint8
    source = images[int(path.stem)]
    # 0..16 -> 0..255: the strongest stroke is near white (bilinear samples between pixel centres)
    assert array.max() >= 0.9 * source.max() * 255 / 16
    np.testing.assert_array_equal(array, np.asarray(digits.digit_image(source, 32)))


def test_idempotent_and_repairs_damage(folder):
    root, _ = folder
    victim = next((root / "calib").glob("3/*.png"))
    stamp = victim.stat().st_mtime_ns
    again = digits.write_digits_imagefolder(root, size=32)
    assert again["written"] is False
    assert victim.stat().st_mtime_ns == stamp
    victim.unlink()
    repaired = digits.write_digits_imagefolder(root, size=32)
    assert repaired["written"] is True and victim.is_file()
    assert not [p for p in root.iterdir() if p.name.startswith(".staging")]


def test_refuses_to_replace_foreign_files(tmp_path):
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit, match="refusing"):
        digits.write_digits_imagefolder(tmp_path, size=32)
    assert (tmp_path / "train" / "notes.txt").read_text() == "mine"


def test_edgekit_loader_reads_the_split(folder):
    import torch

    root, info = folder
    x, y = digits.load_split(root, "test", 32)
    assert x.shape == (info["sizes"]["test"], 3, 32, 32) and x.dtype == torch.float32
    assert sorted(set(y.tolist())) == list(range(10))
    # grayscale -> RGB: after ImageNet normalisation the channels differ only by mean/std
    from edgekit.data.preprocessing import IMAGENET_MEAN, IMAGENET_STD

    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    raw = x * std + mean
    torch.testing.assert_close(raw[:, 0], raw[:, 1], atol=1e-5, rtol=0)
    torch.testing.assert_close(raw[:, 0], raw[:, 2], atol=1e-5, rtol=0)


def test_random_shift_moves_content_and_fills_black():
    import torch

    fill = digits.background_value()
    x = fill.expand(4, 3, 8, 8).clone()
    x[:, :, 3:5, 3:5] = 5.0
    g = torch.Generator().manual_seed(0)
    shifted = digits.random_shift(x, 2, g, fill)
    assert shifted.shape == x.shape
    for i in range(4):
        assert int((shifted[i, 0] == 5.0).sum()) == 4  # the blob moved whole (shift <= 2 keeps it inside)
        torch.testing.assert_close(shifted[i][shifted[i] != 5.0].view(3, -1)[:, :1], fill.view(3, 1))
    again = digits.random_shift(x, 2, torch.Generator().manual_seed(0), fill)
    torch.testing.assert_close(shifted, again)


def test_training_reduces_loss(folder):
    """A few steps of the real training loop on the textbook ResNet reduce the loss (tiny, seeded).

    The loss is measured with batch statistics (train-mode BatchNorm, no gradient): after ten
    steps the running statistics have not caught up yet, so eval-mode loss says nothing.
    """
    import torch
    import torch.nn.functional as F

    from edgekit.models.registry import create_model

    root, _ = folder
    torch.manual_seed(0)
    x, y = digits.load_split(root, "calib", 32)
    model = create_model("textbook_resnet18", num_classes=10, input_size=32, seed=0)

    def batch_loss():
        model.train()
        with torch.no_grad():
            return float(F.cross_entropy(model(x), y))

    before = batch_loss()
    recipe = digits.Recipe(epochs=2, batch=64, lr=2e-3, warmup_epochs=0.5, max_shift=1)
    lines = []
    result = digits.train(model, x, y, recipe, log=lines.append)
    assert not model.training  # train() hands the model back in eval mode
    after = batch_loss()
    assert len(result.history) == 2 and len(lines) == 2
    assert after < 0.5 * before, (before, after)
