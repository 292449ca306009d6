"""A bundle's files as the device reads them: the manifest (validated: every name a plain, checksummed file name,
the gates and the preprocessing well-typed and in range), every file's sha256 against it, the model files, and
the golden data (array sizes bounded from their headers before anything is allocated). numpy only.

One copy: check.py on the board, and edgekit's `verify BUNDLE/` (edgekit/bundle/), read a bundle with these.
"""

from __future__ import annotations

import hashlib
import os
import stat
import zipfile
from pathlib import Path

import numpy as np

from .check import (
    MANIFEST,
    MAX_GOLDEN_ARRAY_BYTES,
    MAX_GOLDEN_SAMPLES,
    MAX_MANIFEST_BYTES,
    BrokenBundle,
    parse_manifest,
    read_regular,
)
from .preprocess import normalize


def sha256_path(path: Path, what: str = "file") -> str:
    """Hex sha256 of a regular file that is not a symlink (hashed here, not by anything the bundle ships unverified)."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise BrokenBundle(f"{what} {path} cannot be opened as a regular file, not a symlink: {exc.strerror or exc}") from None
    digest = hashlib.sha256()
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise BrokenBundle(f"{what} {path} is not a regular file")
        os.set_blocking(fd, True)
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def manifest_sha256(folder: Path) -> str:
    """The manifest's own sha256: printed at packaging and at every check, so a user can pin it."""
    return hashlib.sha256(read_regular(Path(folder) / MANIFEST, "manifest", MAX_MANIFEST_BYTES, False)).hexdigest()


def read_manifest(folder: Path, expect_sha256: str | None = None) -> dict:
    """The manifest, validated: every name it uses a plain file name listed (so checksummed) in `files`, the
    gates and the preprocessing well-typed and in range; BrokenBundle naming what is wrong. With
    `expect_sha256`, any other manifest is Tampered."""
    path = Path(folder) / MANIFEST
    if not path.exists() and not path.is_symlink():
        raise BrokenBundle(f"{path} does not exist: is {folder} an edgekit bundle?")
    raw = read_regular(path, "manifest", MAX_MANIFEST_BYTES, follow_symlinks=False)
    manifest, actual = parse_manifest(raw, path, expect_sha256)
    for key in ("files", "model", "golden", "gates", "preprocessing"):
        if not isinstance(manifest.get(key), dict):
            raise BrokenBundle(f"{path} has no {key!r} object")
    for name, entry in manifest["files"].items():
        _plain_name(name, "a file the manifest lists")
        if not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str):
            raise BrokenBundle(f"the manifest's entry for {name!r} has no sha256")
    model = manifest["model"]
    used = [("model.file", model.get("file")), ("golden.file", manifest["golden"].get("file"))]
    if model.get("ort_file") is not None:
        used.append(("model.ort_file", model.get("ort_file")))
    used += [("model.external_data", n) for n in (model.get("external_data") or [])]
    for key, name in used:
        if name not in manifest["files"]:
            raise BrokenBundle(f"the manifest's {key} {name!r} is not among its checksummed files")
    runtimes = manifest.setdefault("check_runtimes", ["ort"])  # bundles made before `package --runtimes`: ORT only
    if not (isinstance(runtimes, list) and runtimes and all(r in ("ort", "openvino") for r in runtimes)):
        raise BrokenBundle(f"the manifest's check_runtimes is {runtimes!r}: a list of ort and openvino")
    manifest["gates"] = _checked_gates(manifest["gates"])
    _check_preprocessing(manifest["preprocessing"])
    manifest["_sha256"] = actual
    return manifest


def _plain_name(name, what: str) -> str:
    if not isinstance(name, str) or not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name:
        raise BrokenBundle(f"{what} {name!r} is not a plain file name inside the bundle")
    return name


def _number(value, low: float, high: float) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and low <= value <= high


def _checked_gates(gates: dict) -> dict:
    """The manifest's gates: each one present, None (off) or a number in its range (same_top1: a bool)."""
    ranges = {"atol": (0.0, 1e6), "rtol": (0.0, 1e6), "min_top1_agreement": (0.0, 1.0), "min_sqnr_db": (0.0, 1000.0)}
    for key, (low, high) in ranges.items():
        if key not in gates:
            raise BrokenBundle(f"the manifest's gates have no {key!r} (null turns a gate off)")
        if gates[key] is not None and not _number(gates[key], low, high):
            raise BrokenBundle(f"the manifest's gate {key} is {gates[key]!r}: null or a number from {low:g} to {high:g}")
    if not isinstance(gates.get("same_top1"), bool) and gates.get("same_top1") is not None:
        raise BrokenBundle(f"the manifest's gate same_top1 is {gates.get('same_top1')!r}: true, false or null")
    return gates


def _check_preprocessing(pre: dict) -> None:
    def bad(key: str, want: str):
        raise BrokenBundle(f"the manifest's preprocessing {key} is {pre.get(key)!r}: {want}")

    crop = pre.get("crop")
    sides = crop if isinstance(crop, list) and len(crop) == 2 else [crop]  # N, or [H, W]
    if not all(isinstance(c, int) and not isinstance(c, bool) and 1 <= c <= 8192 for c in sides):
        bad("crop", "an integer from 1 to 8192, or [H, W] of them")
    if pre.get("resize") == "letterbox":
        if not (isinstance(pre.get("pad_value", 0), int) and 0 <= pre.get("pad_value", 0) <= 255):
            bad("pad_value", "an integer from 0 to 255")
    elif pre.get("resize") is not None and not (isinstance(pre["resize"], int) and max(sides) <= pre["resize"] <= 16384):
        bad("resize", "null, letterbox or an integer from crop to 16384")
    if pre.get("interpolation") not in ("bilinear", "bicubic", "nearest"):
        bad("interpolation", "bilinear, bicubic or nearest")
    if pre.get("channels") not in ("rgb", "bgr", "gray"):
        bad("channels", "rgb, bgr or gray")
    if pre.get("input_channels", 3) not in (1, 3):
        bad("input_channels", "1 or 3")
    for key, low in (("mean", -1e3), ("std", 1e-12)):
        values = pre.get(key)
        if not (isinstance(values, list) and len(values) in (1, 3) and all(_number(v, low, 1e3) for v in values)):
            bad(key, "a list of 1 or 3 finite numbers" + (" above 0" if key == "std" else ""))


def verify_checksums(folder: Path, manifest: dict) -> list[dict]:
    """One entry per file the manifest lists: ok, or why not. A listed file that is absent is a broken bundle."""
    rows = []
    for name, entry in sorted(manifest["files"].items()):
        path = Path(folder) / _plain_name(name, "a file the manifest lists")
        if not path.exists() and not path.is_symlink():
            raise BrokenBundle(f"{name} is listed in the manifest but missing from {folder}")
        actual = sha256_path(path, name)
        expected = str(entry.get("sha256", ""))
        ok = actual == expected
        rows.append({
            "file": name, "ok": ok, "expected": expected, "actual": actual,
            "reason": None if ok else f"sha256 mismatch: {name} is {actual[:16]}..., the manifest says {expected[:16]}...",
        })
    return rows


def model_files(manifest: dict) -> list[tuple[str, str]]:
    """[(format, file)]: the .onnx, then the .ort when the bundle has one."""
    model = manifest["model"]
    files = [("onnx", model["file"])]
    if model.get("ort_file"):
        files.append(("ort", model["ort_file"]))
    return files


def load_golden(folder: Path, manifest: dict) -> dict:
    """{'inputs': float32 (N, C, H, W), 'outputs': the PyTorch reference, 'ort_outputs': this file on the
    packaging machine, 'names': the photos}."""
    golden = manifest["golden"]
    path = Path(folder) / _plain_name(golden["file"], "the golden data")
    pre = manifest["preprocessing"]
    _check_npz_sizes(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            images = data["images"]
            outputs = data["outputs"]
            ort_outputs = data["ort_outputs"] if "ort_outputs" in data.files else None
            names = [str(n) for n in data["names"]] if "names" in data.files else []
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        raise BrokenBundle(f"{path} cannot be read as the golden data: {exc}") from None
    if images.dtype != np.uint8 or images.ndim != 4 or len(images) != len(outputs):
        raise BrokenBundle(f"{path}: images must be uint8 (N, C, H, W), one per output row; got {images.dtype} {images.shape}")
    return {"inputs": normalize(images, pre["mean"], pre["std"]), "outputs": outputs, "ort_outputs": ort_outputs,
            "names": names}


def _check_npz_sizes(path: Path) -> None:
    """Every array's declared shape and dtype, read from its .npy header, bounded before any array is loaded."""
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                with archive.open(info) as f:
                    version = np.lib.format.read_magic(f)
                    reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                    shape, _fortran, dtype = reader(f)
                if dtype.hasobject:
                    raise BrokenBundle(f"{path}: {info.filename} holds Python objects; golden data is numbers only")
                count = 1
                for dim in shape:
                    count *= int(dim)
                if count * max(1, dtype.itemsize) > MAX_GOLDEN_ARRAY_BYTES or (shape and shape[0] > MAX_GOLDEN_SAMPLES):
                    raise BrokenBundle(f"{path}: {info.filename} declares shape {tuple(shape)} of {dtype}: over the "
                                       f"{MAX_GOLDEN_ARRAY_BYTES >> 20} MiB / {MAX_GOLDEN_SAMPLES} samples a bundle may hold")
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise BrokenBundle(f"{path} cannot be read as the golden data: {exc}") from None
