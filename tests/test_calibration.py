"""Calibration inputs: image folders (any mode), .npz/.npy tensors, sampling, cache, held-out split."""

from __future__ import annotations

import zlib

import numpy as np
import pytest
from PIL import Image

from edgekit.calibration import (
    DEFAULT_CALIBRATION_DIR,
    Preprocessing,
    build_calibration_set,
    load_image_folder,
    load_tensor_file,
    pick_samples,
    to_rgb,
)
from edgekit.errors import BadInput

PRE = Preprocessing.for_input_size(32)


def _photo(path, mode="RGB", size=(48, 40)):
    rng = np.random.default_rng(zlib.crc32(str(path).encode()))  # distinct content per file
    if mode == "I;16":
        Image.fromarray(rng.integers(0, 65535, size[::-1], dtype=np.uint16)).save(path)
    else:
        Image.fromarray(rng.integers(0, 255, (*size[::-1], 4), dtype=np.uint8), "RGBA").convert(mode).save(path)


def test_bundled_photos_are_real_and_licensed():
    images = sorted(p.name for p in DEFAULT_CALIBRATION_DIR.iterdir() if p.suffix in (".jpg", ".png"))
    assert len(images) >= 8
    readme = (DEFAULT_CALIBRATION_DIR / "README.md").read_text()
    assert all(name in readme for name in images)
    assert sum(p.stat().st_size for p in DEFAULT_CALIBRATION_DIR.iterdir()) < 5_000_000


def test_preprocessing_matches_torchvision_recipe():
    pre = Preprocessing.for_input_size(224)
    assert (pre.resize, pre.crop) == (256, 224)
    out = pre.apply(Image.new("RGB", (500, 300), (124, 116, 104)))
    assert out.shape == (3, 224, 224) and out.dtype == np.float32
    # mid-grey at ImageNet mean maps to ~0 after normalisation
    assert np.abs(out).max() < 0.01


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "I;16", "LA", "CMYK"])
def test_every_image_mode_becomes_rgb(tmp_path, mode):
    path = tmp_path / f"x.{'tif' if mode == 'CMYK' else 'png'}"
    _photo(path, mode)
    with Image.open(path) as image:
        rgb = to_rgb(image)
    assert rgb.mode == "RGB" and rgb.size == (48, 40)


def test_sixteen_bit_is_rescaled_not_clipped(tmp_path):
    path = tmp_path / "deep.png"
    Image.fromarray(np.full((8, 8), 65535, np.uint16)).save(path)
    with Image.open(path) as image:
        assert np.asarray(to_rgb(image)).min() == 255


def test_folder_recursive_with_corrupt_and_non_images(tmp_path):
    (tmp_path / "sub").mkdir()
    _photo(tmp_path / "a.jpg")
    _photo(tmp_path / "sub" / "b.png", "L")
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (tmp_path / "notes.txt").write_text("hello")
    result = load_image_folder(tmp_path, PRE, use_cache=False)
    assert [p.name for p in result.files] == ["a.jpg", "b.png"]
    assert [p.name for p, _ in result.corrupt] == ["broken.jpg"]
    assert [p.name for p in result.not_images] == ["notes.txt"]
    assert result.tensors.shape == (2, 3, 32, 32)


def test_empty_and_non_image_folders_are_bad_input(tmp_path):
    with pytest.raises(BadInput, match="no usable images in .*found 0 image file"):
        load_image_folder(tmp_path, PRE)
    (tmp_path / "a.txt").write_text("x")
    (tmp_path / "b.csv").write_text("x")
    with pytest.raises(BadInput, match="2 other file"):
        load_image_folder(tmp_path, PRE)


def test_missing_folder(tmp_path):
    with pytest.raises(BadInput, match="does not exist"):
        load_image_folder(tmp_path / "nope", PRE)


def test_cache_serves_the_second_run(tmp_path):
    for i in range(3):
        _photo(tmp_path / f"{i}.png")
    first = load_image_folder(tmp_path, PRE)
    second = load_image_folder(tmp_path, PRE)
    assert not first.from_cache and second.from_cache
    np.testing.assert_array_equal(first.tensors, second.tensors)
    _photo(tmp_path / "0.png", "L")  # content changed: the key changes
    assert not load_image_folder(tmp_path, PRE).from_cache


def test_pick_samples_is_deterministic():
    files = [f"{i}.jpg" for i in range(100)]
    assert pick_samples(files, 10, seed=1) == pick_samples(files, 10, seed=1)
    assert pick_samples(files, 10, seed=1) != pick_samples(files, 10, seed=2)
    assert pick_samples(files, 500) == files


def test_tensor_files(tmp_path):
    good = np.random.default_rng(0).standard_normal((5, 3, 32, 32)).astype(np.float32)
    np.savez(tmp_path / "a.npz", input=good)
    np.save(tmp_path / "b.npy", good)
    np.testing.assert_array_equal(load_tensor_file(tmp_path / "a.npz", (3, 32, 32)), good)
    np.testing.assert_array_equal(load_tensor_file(tmp_path / "b.npy", (3, 32, 32)), good)
    np.save(tmp_path / "wrong.npy", good[:, :, :16])
    with pytest.raises(BadInput, match=r"shape \(5, 3, 16, 32\), the model expects \(N, 3, 32, 32\)"):
        load_tensor_file(tmp_path / "wrong.npy", (3, 32, 32))
    np.save(tmp_path / "ints.npy", good.astype(np.int32))
    with pytest.raises(BadInput, match="floating point"):
        load_tensor_file(tmp_path / "ints.npy", (3, 32, 32))


def test_calibration_set_holds_out_images_and_says_when_short(tmp_path):
    for i in range(8):
        _photo(tmp_path / f"{i}.png")
    calib = build_calibration_set(tmp_path, PRE, samples=100)
    assert len(calib.tensors) == 6  # 2 of 8 held out
    assert len(calib.holdout) == 32  # 2 photos topped up with seeded crops/flips
    assert any("fewer than the 100 asked" in w for w in calib.warnings)
    augmented = build_calibration_set(tmp_path, PRE, samples=20, augment=True)
    assert len(augmented.tensors) == 20
    # held-out photos never feed calibration
    held = {tuple(np.round(h[:, :2, :2].ravel(), 4)) for h in calib.holdout[:2]}
    assert not held & {tuple(np.round(c[:, :2, :2].ravel(), 4)) for c in calib.tensors}
    assert calib.sha256 == build_calibration_set(tmp_path, PRE, samples=100).sha256
