"""Calibration inputs: image folders (any mode), .npz/.npy tensors, sampling, cache, held-out split."""

from __future__ import annotations

import os
import zlib

import numpy as np
import pytest
from PIL import Image

from edgekit.quantize.calibration import build_calibration_set
from edgekit.data.images import DEFAULT_CALIBRATION_DIR, load_image_folder, pick_samples
from edgekit.data.preprocessing import Preprocessing, to_rgb
from edgekit.data.tensors import load_tensor_file
from edgekit.core.errors import BadInput

PRE = Preprocessing.for_input_size(32)


def _photo(path, mode="RGB", size=(48, 40)):
    rng = np.random.default_rng(zlib.crc32(os.fsencode(str(path))))  # distinct content per file
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


# ---- walking folders safely: only regular files are opened ---------------------------------------

import socket  # noqa: E402
import zipfile  # noqa: E402

from edgekit.core import limits  # noqa: E402
from edgekit.data.images import scan_image_folder


def _odd_entries(folder):
    """A FIFO, a socket, a device link, a dangling symlink and a symlink loop, all named like images."""
    os.mkfifo(folder / "fifo.jpg")
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(folder / "sock.png"))
    (folder / "dangling.jpg").symlink_to(folder / "nowhere.jpg")
    (folder / "loop.jpg").symlink_to(folder / "loop.jpg")
    (folder / "null.jpg").symlink_to("/dev/null")
    return server


@pytest.mark.timeout(30)
def test_non_regular_files_are_skipped_and_counted_never_opened(tmp_path):
    _photo(tmp_path / "a.jpg")
    _photo(tmp_path / "b.png")
    (tmp_path / "link.png").symlink_to(tmp_path / "b.png")  # a symlink to a regular file is fine
    server = _odd_entries(tmp_path)
    try:
        scan = scan_image_folder(tmp_path)
        assert [p.name for p in scan.images] == ["a.jpg", "b.png", "link.png"]
        reasons = {p.name: why for p, why in scan.skipped}
        assert reasons == {
            "dangling.jpg": "a broken symlink", "fifo.jpg": "a named pipe (FIFO)", "loop.jpg": "a symlink loop",
            "null.jpg": "a character device", "sock.png": "a socket",
        }
        result = load_image_folder(tmp_path, PRE, use_cache=False)  # would block forever on the FIFO
        assert len(result) == 3 and len(result.skipped) == 5
        calib = build_calibration_set(tmp_path, PRE, samples=2)
        note = next(w for w in calib.warnings if "not (a link to) a regular file" in w)
        assert note.startswith(f"skipped 5 entries in {tmp_path} that are not (a link to) a regular file: ")
    finally:
        server.close()


@pytest.mark.timeout(30)
def test_a_folder_of_only_odd_entries_is_bad_input(tmp_path):
    server = _odd_entries(tmp_path)
    try:
        with pytest.raises(BadInput, match="found 0 image file.*5 entries that are not regular files"):
            load_image_folder(tmp_path, PRE)
    finally:
        server.close()


@pytest.mark.timeout(30)
def test_a_fifo_that_appears_after_the_scan_does_not_block(tmp_path):
    from edgekit.data.images import decode_image

    os.mkfifo(tmp_path / "late.jpg")
    with pytest.raises(ValueError, match="is a named pipe"):
        decode_image(tmp_path / "late.jpg", PRE)


def test_symlinked_subfolders_are_not_followed(tmp_path):
    _photo(tmp_path / "a.jpg")
    (tmp_path / "again").symlink_to(tmp_path)  # a loop through a folder
    scan = scan_image_folder(tmp_path)
    assert [p.name for p in scan.images] == ["a.jpg"]
    assert [(p.name, why) for p, why in scan.skipped] == [("again", "a symlink to a folder (not followed)")]


def test_names_that_are_not_utf8(tmp_path):
    root = os.fsencode(tmp_path)
    _photo(os.fsdecode(os.path.join(root, b"caf\xe9.png")))
    _photo(tmp_path / "plain.png")
    with open(os.path.join(root, b"bro\xffken.jpg"), "wb") as f:
        f.write(b"\xff\xd8 not a jpeg")
    for cached in (False, True, True):
        result = load_image_folder(tmp_path, PRE, use_cache=cached)
        assert [os.fsencode(p.name) for p in result.files] == [b"caf\xe9.png", b"plain.png"]
    calib = build_calibration_set(tmp_path, PRE, samples=1)
    text = " ".join(calib.warnings + [calib.description, calib.holdout_description])
    text.encode("utf-8")  # printable: no lone surrogates
    assert "bro\\xffken.jpg" in text


def test_folder_over_the_cap_is_refused(tmp_path, monkeypatch):
    for i in range(4):
        _photo(tmp_path / f"{i}.png")
    monkeypatch.setattr(limits, "MAX_IMAGES_IN_FOLDER", 3)
    with pytest.raises(BadInput, match=r"holds more than 3 files, over edgekit's limit for one folder"):
        load_image_folder(tmp_path, PRE)


def test_missing_and_non_folder_sources(tmp_path):
    (tmp_path / "gone").symlink_to(tmp_path / "nowhere")
    with pytest.raises(BadInput, match="is a broken symlink"):
        scan_image_folder(tmp_path / "gone")
    (tmp_path / "f.txt").write_text("x")
    with pytest.raises(BadInput, match="is not a folder of images"):
        scan_image_folder(tmp_path / "f.txt")


# ---- archives: allow_pickle=False and every failure one BadInput line -----------------------------

GOOD = np.random.default_rng(1).standard_normal((4, 3, 32, 32)).astype(np.float32)


def _npy_header_only(path, shape, dtype="<f4"):
    header = {"descr": dtype, "fortran_order": False, "shape": shape}
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, header)


def _truncated_npz(path):
    np.savez(path, input=GOOD)
    blob = path.read_bytes()
    path.write_bytes(blob[: len(blob) // 2])


def _object_npy(path):
    np.save(path, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)


def _object_npz(path):
    np.savez(path, input=np.array([1, "x", None], dtype=object))


def _text_member(path):
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("input.npy", "this is not an array")


def _text_only(path):
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("notes.txt", "hello")


def _empty_zip(path):
    with zipfile.ZipFile(path, "w"):
        pass


def _truncated_npy(path):
    np.save(path, GOOD)
    path.write_bytes(path.read_bytes()[:-100])


def _bad_crc(path):
    np.savez(path, input=GOOD)  # stored, not compressed: flip a data byte and the CRC no longer matches
    blob = bytearray(path.read_bytes())
    blob[2000] ^= 0xFF
    path.write_bytes(bytes(blob))


ARCHIVES = {
    "truncated.npz": (_truncated_npz, "is not a readable .npy/.npz file (BadZipFile"),
    "objects.npy": (_object_npy, "holds Python objects (dtype object); refusing to unpickle them"),
    "objects.npz": (_object_npz, "holds Python objects (dtype object)"),
    "text-member.npz": (_text_member, "member 'input.npy' is not a numpy array"),
    "text-only.npz": (_text_only, "member 'notes.txt' is not a numpy array"),
    "empty.npz": (_empty_zip, "holds no arrays"),
    "zero-bytes.npy": (lambda p: p.write_bytes(b""), "is empty (0 bytes)"),
    "zero-samples.npy": (lambda p: np.save(p, GOOD[:0]), "holds zero samples"),
    "huge.npy": (lambda p: _npy_header_only(p, (10**6, 3, 32, 32)), "is 12.3 GB, over edgekit's 2 GiB limit"),
    "huger.npy": (lambda p: _npy_header_only(p, (2**62, 3, 32, 32)), "over edgekit's 2 GiB limit"),
    "truncated.npy": (_truncated_npy, "is truncated: its header declares (4, 3, 32, 32) float32 (49,152 bytes) but 49,052 follow"),
    "header-only.npy": (lambda p: _npy_header_only(p, (4, 3, 32, 32)), "but 0 follow"),
    "garbled-header.npy": (lambda p: p.write_bytes(b"\x93NUMPY\x01\x00\x10\x00{'descr': <f4'  \n"), "is not a readable .npy/.npz file"),
    "bad-crc.npz": (_bad_crc, "is not a readable .npy/.npz file (BadZipFile: Bad CRC-32"),
    "not-numpy.npy": (lambda p: p.write_text("1,2,3\n"), "is neither a .npy nor a .npz file"),
    "structured.npy": (lambda p: np.save(p, np.zeros(4, dtype=[("a", "<f4")])), "must be floating point"),
    "several.npz": (lambda p: np.savez(p, a=GOOD, b=GOOD), "holds several arrays (a, b)"),
}


@pytest.mark.timeout(30)
@pytest.mark.parametrize("name", list(ARCHIVES))
def test_broken_archives_are_one_bad_input_line(tmp_path, name):
    make, expected = ARCHIVES[name]
    path = tmp_path / name
    make(path)
    with pytest.raises(BadInput) as info:
        load_tensor_file(path, (3, 32, 32))
    message = str(info.value)
    assert expected in message and "\n" not in message
    assert info.value.exit_code == 2


def test_archive_forms_that_are_fine(tmp_path):
    np.savez_compressed(tmp_path / "c.npz", input=GOOD)
    np.save(tmp_path / "f.npy", np.asfortranarray(GOOD))
    np.save(tmp_path / "h.npy", GOOD[0].astype(np.float16))  # one sample (C, H, W), half precision
    np.savez(tmp_path / "named.npz", input=GOOD, labels=np.arange(4))
    np.testing.assert_array_equal(load_tensor_file(tmp_path / "c.npz", (3, 32, 32)), GOOD)
    np.testing.assert_array_equal(load_tensor_file(tmp_path / "f.npy", (3, 32, 32)), GOOD)
    assert load_tensor_file(tmp_path / "h.npy", (3, 32, 32)).shape == (1, 3, 32, 32)
    out = load_tensor_file(tmp_path / "named.npz", (3, 32, 32))
    np.testing.assert_array_equal(out, GOOD)
    out += 1  # a writable array of its own


@pytest.mark.timeout(30)
def test_a_fifo_named_like_a_tensor_file_does_not_block(tmp_path):
    os.mkfifo(tmp_path / "calib.npz")
    with pytest.raises(BadInput, match=r"calib.npz is a named pipe \(FIFO\), not a regular file"):
        build_calibration_set(tmp_path / "calib.npz", PRE, samples=4)


# ---- the image cache is validated on read -------------------------------------------------------


def _cache_entry(folder):
    from edgekit.data.images import _cache_dir

    entries = sorted(_cache_dir().glob("images-*.npz"))
    return entries


def _damage(kind: str, entry):
    if kind == "truncated":
        entry.write_bytes(entry.read_bytes()[:300])
    elif kind == "garbled":
        entry.write_bytes(np.random.default_rng(0).bytes(entry.stat().st_size))
    elif kind == "wrong-shape":
        with np.load(entry) as cached:
            parts = {k: cached[k] for k in cached.files}
        parts["tensors"] = parts["tensors"][:, :, :16]
        np.savez(entry, **parts)
    elif kind == "wrong-dtype":
        with np.load(entry) as cached:
            parts = {k: cached[k] for k in cached.files}
        parts["tensors"] = parts["tensors"].astype(np.float64)
        np.savez(entry, **parts)
    elif kind == "other-files":
        with np.load(entry) as cached:
            parts = {k: cached[k] for k in cached.files}
        parts["files"] = np.array(["/elsewhere/x.png"] * len(parts["files"]))
        np.savez(entry, **parts)
    elif kind == "objects":
        with np.load(entry) as cached:
            parts = {k: cached[k] for k in cached.files}
        parts["files"] = np.array(list(parts["files"]), dtype=object)
        np.savez(entry, **parts)
    elif kind == "nan":
        with np.load(entry) as cached:
            parts = {k: cached[k] for k in cached.files}
        parts["tensors"][0, 0, 0, 0] = np.nan
        np.savez(entry, **parts)
    elif kind == "fifo":
        entry.unlink()
        os.mkfifo(entry)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("kind", ["truncated", "garbled", "wrong-shape", "wrong-dtype", "other-files", "objects", "nan", "fifo"])
def test_a_damaged_cache_entry_is_dropped_and_rebuilt_with_a_note(tmp_path, monkeypatch, kind):
    monkeypatch.setenv("EDGEKIT_CACHE_DIR", str(tmp_path / "cache"))
    images = tmp_path / "images"
    images.mkdir()
    for i in range(3):
        _photo(images / f"{i}.png")
    first = load_image_folder(images, PRE)
    [entry] = _cache_entry(images)
    _damage(kind, entry)
    rebuilt = load_image_folder(images, PRE)
    assert not rebuilt.from_cache
    np.testing.assert_array_equal(rebuilt.tensors, first.tensors)
    [note] = rebuilt.notes
    assert note.startswith(f"the cached images for {images} (") and "were damaged (" in note
    assert note.endswith("dropped and rebuilt from the images")
    again = load_image_folder(images, PRE)  # the rebuilt entry is good
    assert again.from_cache and not again.notes
    np.testing.assert_array_equal(again.tensors, first.tensors)
    calib = build_calibration_set(images, PRE, samples=1)  # the note reaches the command's notes
    assert not any("damaged" in w for w in calib.warnings)


def test_cache_note_reaches_quantize_notes(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEKIT_CACHE_DIR", str(tmp_path / "cache"))
    for i in range(3):
        _photo(tmp_path / f"{i}.png")
    build_calibration_set(tmp_path, PRE, samples=1)
    [entry] = _cache_entry(tmp_path)
    _damage("truncated", entry)
    calib = build_calibration_set(tmp_path, PRE, samples=1)
    assert any("were damaged" in w and "rebuilt" in w for w in calib.warnings)


# ---- bounds, checked before anything is allocated -------------------------------------------------


def test_samples_are_bounded_before_any_work(tmp_path):
    with pytest.raises(BadInput, match=r"--samples 100001 is over edgekit's limit of 100,000"):
        build_calibration_set(tmp_path, PRE, samples=limits.MAX_SAMPLES + 1)
    with pytest.raises(BadInput, match="--samples must be at least 1"):
        build_calibration_set(tmp_path, PRE, samples=0)
    huge = Preprocessing(resize=None, crop=4096)
    with pytest.raises(BadInput, match=r"--samples 100000 x \(3, 4096, 4096\) float32 is .*over edgekit's 2 GiB limit"):
        build_calibration_set(tmp_path, huge, samples=100_000)


def test_random_inputs_are_bounded(tmp_path):
    from edgekit.data.tensors import seeded_random_inputs

    with pytest.raises(BadInput, match="--random-inputs 10001 is over edgekit's limit of 10,000"):
        seeded_random_inputs(10_001, (3, 32, 32))
    with pytest.raises(BadInput, match=r"--random-inputs 10000 x \(3, 1024, 1024\) float32 is 126 GB"):
        seeded_random_inputs(10_000, (3, 1024, 1024))
    with pytest.raises(BadInput, match="dimension 1 is 100000, over edgekit's limit of 4,096"):
        seeded_random_inputs(1, (3, 100_000, 100_000))
    assert seeded_random_inputs(2, (3, 8, 8)).shape == (2, 3, 8, 8)


def test_image_folder_budget_is_checked_before_decoding(tmp_path, monkeypatch):
    for i in range(3):
        _photo(tmp_path / f"{i}.png")
    monkeypatch.setattr(limits, "MAX_TENSOR_BYTES", 2 * 3 * 32 * 32 * 4)
    with pytest.raises(BadInput, match=r"the images of .*: 3 x \(3, 32, 32\) float32 is 36.9 kB"):
        load_image_folder(tmp_path, PRE, use_cache=False)


def test_verify_inputs_are_bounded(tmp_path):
    from types import SimpleNamespace

    from edgekit.verify.inputs import expected_chw, load_input_sets

    with pytest.raises(BadInput, match="--random-inputs 20000 is over edgekit's limit"):
        load_input_sets(PRE, (3, 32, 32), None, None, 20_000, 0)
    with pytest.raises(BadInput, match="--random-inputs must be at least 0"):
        load_input_sets(PRE, (3, 32, 32), None, None, -1, 0)

    def session(shape):
        inputs = [SimpleNamespace(shape=shape, name="x")]
        return SimpleNamespace(input_shape=list(inputs[0].shape), input_name="x")

    assert expected_chw(session([1, 3, 32, 32]), PRE) == (3, 32, 32)
    assert expected_chw(session(["batch", 3, "h", None]), PRE) == (3, 32, 32)  # dynamic dims: the preprocessing's
    with pytest.raises(BadInput, match=r"input 'x' of the model \(C, H, W\) \(3, 100000, 100000\): dimension 1 is 100000"):
        expected_chw(session([1, 3, 100_000, 100_000]), PRE)


# ---- verify --dataset: the same safe walk ----------------------------------------------------------


@pytest.mark.timeout(30)
def test_dataset_scan_skips_what_is_not_a_regular_file(tmp_path):
    from edgekit.verify.dataset import _scan_dataset, check_dataset

    for name in ("cat", "dog"):
        (tmp_path / name).mkdir()
        _photo(tmp_path / name / "1.png")
    os.mkfifo(tmp_path / "cat" / "2.jpg")
    (tmp_path / "dog" / "3.jpg").symlink_to(tmp_path / "nowhere")
    (tmp_path / "bird").symlink_to(tmp_path / "nowhere")  # a dangling class folder
    classes, samples, empty, skipped = _scan_dataset(tmp_path)
    assert classes == ["cat", "dog"] and [(p.name, label) for p, label in samples] == [("1.png", 0), ("1.png", 1)]
    assert sorted(p.name for p, _ in skipped) == ["2.jpg", "3.jpg", "bird"]
    with pytest.raises(BadInput, match="--samples 200000 is over edgekit's limit"):
        check_dataset(tmp_path, 10, samples=200_000)
