#!/usr/bin/env python3
"""Check an edgekit bundle on the device: numpy and onnxruntime only (Pillow for --image).

    python check.py                       # checksums, then the .onnx and the .ort on the golden inputs (CPU)
    python check.py --providers cpu,cuda  # every listed execution provider
    python check.py --image photo.jpg     # one photo through the exact preprocessing: the top-5
    python check.py --json                # every number as one JSON object

What it does: verifies every file's sha256 against manifest.json; runs the model in both formats on
the golden inputs (photos preprocessed by edgekit) with the session options this CPU needs (read from
/proc/cpuinfo); compares the outputs with the PyTorch fp32 reference stored beside them, using the
metrics of `edgekit verify` (metrics.py, beside this file) and the gates for the file's precision
recorded in the manifest; prints PASS/FAIL per model format x provider.

Exit codes: 0 every check passed; 1 a check failed (checksum, gate, a model that does not run);
2 the bundle is broken (no manifest, a listed file missing, unreadable golden data) or bad usage;
3 a requested execution provider or library is not available here.

This file is part of edgekit (edgekit/ondevice/check.py) and copied verbatim into every bundle.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import os
import platform
import stat
import sys
import types
import zipfile
from pathlib import Path

try:
    import numpy as np
except ImportError:  # pragma: no cover - the device lacks numpy
    sys.stderr.write("error: check.py needs numpy and onnxruntime: pip install numpy onnxruntime\n")
    sys.exit(3)

MANIFEST = "manifest.json"
BUNDLE_FORMAT = 1
EXIT_OK, EXIT_FAILED, EXIT_BROKEN, EXIT_UNAVAILABLE = 0, 1, 2, 3
FAKE_CPU_FLAGS_ENV = "EDGEKIT_FAKE_CPU_FLAGS"  # e.g. "avx2 fma": pretend this CPU has only these flags (tests)
VNNI_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8", "avx512vnni"})
X86 = ("x86_64", "amd64", "i686", "x86")
# The CPU kinds a manifest may name session options for, and how this script recognises them.
CPU_RULES = {
    "x86 without VNNI": "an x86 CPU whose flags have none of " + ", ".join(sorted(VNNI_FLAGS)),
    "any CPU": "every CPU (e.g. nodes kept in float must not be quantized again when the session starts)",
}
PROVIDERS = {
    "cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider",
    "openvino": "OpenVINOExecutionProvider", "coreml": "CoreMLExecutionProvider", "nnapi": "NnapiExecutionProvider",
    "xnnpack": "XnnpackExecutionProvider", "qnn": "QNNExecutionProvider", "dml": "DmlExecutionProvider",
    "rocm": "ROCMExecutionProvider", "acl": "ACLExecutionProvider", "armnn": "ArmNNExecutionProvider",
}


class BrokenBundle(Exception):
    """The bundle cannot be checked at all (exit 2)."""


class ProviderNotStarted(Exception):
    """A requested execution provider did not start here (exit 3)."""


class BadImage(Exception):
    """--image names something that is not a decodable image of a sane size (exit 2)."""


class Tampered(Exception):
    """A file does not match the manifest's checksum, so it is not used at all (exit 1)."""


# Bounds on what a bundle may declare or hold, checked before anything is allocated.
MAX_MANIFEST_BYTES = 16 << 20
MAX_SCRIPT_BYTES = 4 << 20
MAX_IMAGE_BYTES = 256 << 20
MAX_IMAGE_PIXELS = 64_000_000  # PIL refuses more (a decompression bomb) instead of decoding it
MAX_GOLDEN_ARRAY_BYTES = 1 << 30
MAX_GOLDEN_SAMPLES = 100_000
_TRUSTED_METRICS: list[str] = []  # the sha256 the manifest gives metrics.py; set before it may be imported


def read_regular(path: Path, what: str, limit: int, follow_symlinks: bool = True) -> bytes:
    """A regular file's bytes, at most `limit` of them: a FIFO, device or socket is refused without blocking,
    a symlink too unless `follow_symlinks`, and an oversize file before it is read (BrokenBundle)."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | (0 if follow_symlinks else getattr(os, "O_NOFOLLOW", 0))
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise BrokenBundle(f"{what} {path} does not exist") from None
    except OSError as exc:
        raise BrokenBundle(f"{what} {path} cannot be opened ({exc.strerror or exc}); a symlink is not allowed here"
                           if not follow_symlinks else f"{what} {path} cannot be opened: {exc}") from None
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise BrokenBundle(f"{what} {path} is not a regular file")
        if info.st_size > limit:
            raise BrokenBundle(f"{what} {path} is {info.st_size} bytes; at most {limit} are read")
        os.set_blocking(fd, True)
        data = f.read(limit + 1)
    if len(data) > limit:
        raise BrokenBundle(f"{what} {path} grew past {limit} bytes while it was read")
    return data


def sha256_path(path: Path, what: str = "file") -> str:
    """Hex sha256 of a regular file that is not a symlink (this script's own hashlib: metrics.py is not trusted yet)."""
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


@functools.lru_cache(maxsize=None)
def _load_metrics():
    """metrics.py: edgekit's copy when imported as edgekit.ondevice.check, else the one beside this file, imported
    only once its bytes match the sha256 the manifest gives it (check.py hashes them itself, then runs exactly
    the bytes it hashed)."""
    if __package__:
        from . import metrics

        return metrics
    here = Path(__file__).resolve().with_name("metrics.py")
    if not _TRUSTED_METRICS:
        raise BrokenBundle("metrics.py is imported only after the manifest names its sha256")
    data = read_regular(here, "metrics.py", MAX_SCRIPT_BYTES, follow_symlinks=False)
    actual = hashlib.sha256(data).hexdigest()
    if actual != _TRUSTED_METRICS[0]:
        raise Tampered(f"sha256 mismatch: metrics.py is {actual[:16]}..., the manifest says "
                       f"{_TRUSTED_METRICS[0][:16]}...; it was not imported, and no model was run")
    module = types.ModuleType("edgekit_bundle_metrics")
    module.__file__ = str(here)
    exec(compile(data, str(here), "exec"), module.__dict__)
    return module


def trust_metrics(manifest: dict) -> None:
    """Take metrics.py's sha256 from the manifest (the only source check.py has before it imports it)."""
    entry = manifest["files"].get("metrics.py")
    sha = entry.get("sha256") if isinstance(entry, dict) else None
    if not (isinstance(sha, str) and len(sha) == 64 and all(c in "0123456789abcdef" for c in sha)):
        raise BrokenBundle("the manifest gives metrics.py no sha256; copy the whole bundle")
    _TRUSTED_METRICS[:] = [sha]


# --- the bundle's files ------------------------------------------------------------------------


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
    actual = hashlib.sha256(raw).hexdigest()
    if expect_sha256 is not None and actual != expect_sha256.strip().lower():
        raise Tampered(f"manifest sha256 is {actual}, not the expected {expect_sha256.strip().lower()}")
    try:
        manifest = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise BrokenBundle(f"{path} cannot be read as JSON: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("edgekit_bundle") != BUNDLE_FORMAT:
        raise BrokenBundle(f"{path} is not an edgekit bundle manifest (format {BUNDLE_FORMAT})")
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


# --- this CPU and the session options the file needs on it -------------------------------------


def cpu_facts(cpuinfo: str = "/proc/cpuinfo", flags: str | None = None) -> dict:
    """machine, model name and feature flags (from /proc/cpuinfo; `flags` or $EDGEKIT_FAKE_CPU_FLAGS fake them)."""
    model, found, known = platform.processor() or platform.machine(), set(), False
    try:
        for line in Path(cpuinfo).read_text().splitlines():
            if line.startswith("model name") and ":" in line:
                model = line.split(":", 1)[1].strip()
            elif line.startswith(("flags", "Features")) and ":" in line and not found:
                found, known = set(line.split(":", 1)[1].split()), True
    except OSError:
        pass
    fake = flags if flags is not None else os.environ.get(FAKE_CPU_FLAGS_ENV)
    if fake is not None:
        found, known = set(fake.replace(",", " ").split()), True
    return {"machine": platform.machine(), "model": model, "flags": sorted(found), "flags_known": known,
            "faked": fake is not None}


def cpu_kinds(cpu: dict) -> list[str]:
    """The CPU_RULES kinds this CPU is; an x86 CPU whose flags cannot be read counts as without VNNI (safe)."""
    kinds = ["any CPU"]
    if str(cpu.get("machine", "")).lower() in X86 and not (set(cpu.get("flags", [])) & VNNI_FLAGS):
        kinds.append("x86 without VNNI")
    return kinds


# Session config entries whose value is a list: ORT reads them ';'-separated.
LIST_ENTRIES = frozenset({"optimization.disable_specified_optimizers"})


def merge_session_config(into: dict, entries: dict) -> dict:
    """`into` with `entries` added: a list-valued entry (LIST_ENTRIES) gains the new items, any other is set."""
    merged = {str(k): str(v) for k, v in into.items()}
    for key, value in entries.items():
        key, value = str(key), str(value)
        if key in LIST_ENTRIES and merged.get(key):
            items = merged[key].split(";")
            merged[key] = ";".join(items + [v for v in value.split(";") if v and v not in items])
        else:
            merged[key] = value
    return merged


def session_options_for(manifest: dict, cpu: dict) -> tuple[dict, list[str]]:
    """(session config entries to apply on this CPU, sentences saying why)."""
    needed = manifest.get("session_options") or {}
    kinds = cpu_kinds(cpu)
    config, notes = {}, []
    for kind, entries in needed.items():
        if kind not in CPU_RULES:
            notes.append(f"the manifest names session options for {kind!r}, which this check.py does not know: not applied")
            continue
        if kind in kinds:
            config = merge_session_config(config, entries)
            why = "flags unreadable, so assumed" if not cpu.get("flags_known") else ("faked flags" if cpu.get("faked") else "from /proc/cpuinfo")
            notes.append(
                f"this CPU is {kind} ({why}): applying {', '.join(f'{k}={v}' for k, v in entries.items())}, which this "
                "file needs here; set the same session options in the device's own code"
            )
    return config, notes


# --- preprocessing: the exact steps, for the golden data and for --image -----------------------


def crop_uint8(image, pre: dict) -> np.ndarray:
    """A PIL image -> the model's pixels before normalisation: uint8 (C, H, W), in the model's channel order.

    1. to 8-bit RGB (alpha on white), or gray; 2. resize (PIL, `interpolation`): `resize` = N scales the
    shorter side to N (the longer side truncated) and centre-crops `crop` (N, or [H, W]); `resize` = null resizes
    straight to the crop; "letterbox" fits the image into it keeping the aspect, padded right/bottom with `pad_value`; 3. BGR models get the channels reversed; gray ones repeated to the input channels.
    """
    from PIL import Image

    image = _load_metrics().to_rgb(image)
    if pre["channels"] == "gray":
        image = image.convert("L")
    resample = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC,
                "nearest": Image.Resampling.NEAREST}[pre["interpolation"]]
    crop, resize = pre["crop"], pre["resize"]
    ch, cw = (int(crop[0]), int(crop[1])) if isinstance(crop, (list, tuple)) else (int(crop), int(crop))  # N or [H, W]
    if resize is None:
        image = image.resize((cw, ch), resample)
    elif resize == "letterbox":  # fit H x W keeping the aspect, top-left, pad right/bottom with pad_value
        w, h = image.size
        scale = min(cw / w, ch / h)
        inner = image.resize((max(1, min(cw, round(w * scale))), max(1, min(ch, round(h * scale)))), resample)
        pad = int(pre.get("pad_value", 0))
        image = Image.new(image.mode, (cw, ch), pad if image.mode == "L" else (pad,) * 3)
        image.paste(inner, (0, 0))
    else:
        resize = int(resize)
        w, h = image.size
        size = (resize, int(resize * h / w)) if w <= h else (int(resize * w / h), resize)
        image = image.resize(size, resample)
        left = int(round((size[0] - cw) / 2.0))
        top = int(round((size[1] - ch) / 2.0))
        image = image.crop((left, top, left + cw, top + ch))
    array = np.asarray(image, dtype=np.uint8)
    if array.ndim == 2:
        array = np.repeat(array[..., None], int(pre.get("input_channels", 3)), axis=2)
    if pre["channels"] == "bgr":
        array = array[..., ::-1]
    return np.ascontiguousarray(array.transpose(2, 0, 1))


def normalize(images: np.ndarray, mean, std) -> np.ndarray:
    """uint8 (N, C, H, W) or (C, H, W) -> float32 model input: (x / 255 - mean) / std per channel, in float32."""
    x = np.asarray(images).astype(np.float32) / 255.0
    mean = np.asarray(mean, np.float32).reshape(-1, 1, 1)
    std = np.asarray(std, np.float32).reshape(-1, 1, 1)
    return np.ascontiguousarray((x - mean) / std, dtype=np.float32)


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


# --- running the model ------------------------------------------------------------------------


def provider_name(short: str) -> str:
    name = short.strip()
    return PROVIDERS.get(name.lower(), name)


def parse_providers(spec: str | None) -> list[str]:
    """'cpu,cuda' -> full ORT names; 'available' -> every provider this onnxruntime build has."""
    if not spec:
        return [PROVIDERS["cpu"]]
    if spec.strip().lower() == "available":
        import onnxruntime as ort

        return list(ort.get_available_providers())
    names = []
    for part in spec.split(","):
        if part.strip() and provider_name(part) not in names:
            names.append(provider_name(part))
    return names


def ort_session(path: Path, provider: str, config: dict):
    """An onnxruntime session on `provider` (full name) that really runs there; else ProviderNotStarted."""
    import contextlib
    import io

    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    for key, value in config.items():
        options.add_session_config_entry(key, value)
    if provider != PROVIDERS["cpu"] and hasattr(ort, "preload_dlls"):
        with contextlib.suppress(Exception), contextlib.redirect_stdout(io.StringIO()):
            ort.preload_dlls()  # onnxruntime-gpu finds pip-installed CUDA libraries only after this
    if provider not in ort.get_available_providers():
        raise ProviderNotStarted(f"{provider} is not in this onnxruntime build ({', '.join(ort.get_available_providers())})")
    chain = [provider] if provider == PROVIDERS["cpu"] else [provider, PROVIDERS["cpu"]]
    with contextlib.redirect_stdout(io.StringIO()):
        session = ort.InferenceSession(str(path), sess_options=options, providers=chain)
    if provider not in session.get_providers():
        raise ProviderNotStarted(f"{provider} did not start (onnxruntime runs this session on {session.get_providers()})")
    return session


def run_model(session, inputs: np.ndarray, batch: int) -> np.ndarray:
    """The first output, fed exactly `batch` samples at a time (a short last chunk is padded, then dropped)."""
    meta = session.get_inputs()[0]
    dtype = np.float16 if meta.type == "tensor(float16)" else np.float32
    outs = []
    for start in range(0, len(inputs), batch):
        chunk = inputs[start : start + batch]
        real = len(chunk)
        if real < batch:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch - real, axis=0)])
        got = session.run(None, {meta.name: np.ascontiguousarray(chunk.astype(dtype))})[0]
        outs.append(np.asarray(got)[:real])
    return np.concatenate(outs).astype(np.float32)


def batch_sizes(session, samples: int) -> list[int]:
    dim = session.get_inputs()[0].shape[0]
    return [int(dim)] if isinstance(dim, int) and dim > 0 else sorted({1, samples})


def _first_line(exc: BaseException) -> str:
    lines = [line for line in str(exc).splitlines() if line.strip()]
    return (lines[0] if lines else type(exc).__name__)[:300]


def model_files(manifest: dict) -> list[tuple[str, str]]:
    """[(format, file)]: the .onnx, then the .ort when the bundle has one."""
    model = manifest["model"]
    files = [("onnx", model["file"])]
    if model.get("ort_file"):
        files.append(("ort", model["ort_file"]))
    return files


def run_checks(folder, providers=None, cpu: dict | None = None, make_session=None, metrics=None,
               apply_session_options: bool = True, expect_manifest: str | None = None, gates: dict | None = None) -> dict:
    """Every check of the bundle in `folder`, as one dict (see `exit_code`, `passed`, `rows`).

    `make_session(path, provider, config)` creates the sessions (default: plain onnxruntime; edgekit passes
    its own); `metrics` is the metric module (default: metrics.py beside this file, or edgekit's)."""
    folder = Path(folder)
    make_session = make_session or ort_session
    providers = providers or [PROVIDERS["cpu"]]
    manifest = read_manifest(folder, expect_manifest)
    checksums = verify_checksums(folder, manifest)
    if metrics is None:  # the bundle's metrics.py: imported only if its bytes match the manifest's sha256
        trust_metrics(manifest)
        metrics = _load_metrics()
    golden = load_golden(folder, manifest)
    cpu = cpu or cpu_facts()
    config, notes = session_options_for(manifest, cpu) if apply_session_options else ({}, [])
    unlisted = sorted(p.name for p in folder.iterdir() if p.is_file() and p.name != MANIFEST
                      and p.name not in manifest["files"] and not p.name.startswith("."))
    if unlisted:
        notes.append(f"not in the manifest, so not checked: {', '.join(unlisted)}")
    left_out = (manifest.get("ort_format") or {}).get("left_out")
    if left_out:
        notes.append(f"no .ort in this bundle: {left_out}")
    if not apply_session_options and manifest.get("session_options"):
        notes.append("--no-session-options: ORT's defaults, whatever the manifest says this CPU needs")
    overrides = gates or {}
    gates = {key: overrides.get(key, manifest["gates"].get(key)) for key in metrics.GATE_KEYS}
    if overrides:
        notes.append("gates given on the command line: " + ", ".join(f"{k} {v}" for k, v in overrides.items()))
    inputs, reference = golden["inputs"], golden["outputs"]
    rows = []
    for provider in providers:
        outputs = {}
        not_started = None
        for fmt, name in model_files(manifest):
            row = {"format": fmt, "file": name, "provider": provider, "batch": None, "status": "FAIL",
                   "session_options": dict(config), "metrics": None, "failures": [], "vs_packaging_max_abs": None,
                   "vs_onnx_max_abs": None}
            try:
                if not_started is not None:  # do not ask a provider twice: it said why the first time
                    raise not_started
                session = make_session(folder / name, provider, config)
            except ProviderNotStarted as exc:
                not_started = exc
                row.update(status="UNAVAILABLE", failures=[str(exc)])
                rows.append(row)
                continue
            except Exception as exc:  # the file does not load: a failed check
                row["failures"] = [f"onnxruntime cannot load {name}: {_first_line(exc)}"]
                rows.append(row)
                continue
            for batch in batch_sizes(session, len(inputs)):
                this = dict(row, batch=batch, failures=[])
                try:
                    got = run_model(session, inputs, batch)
                except Exception as exc:
                    this["failures"] = [f"onnxruntime cannot run {name}: {_first_line(exc)}"]
                    rows.append(this)
                    continue
                try:
                    m = metrics.output_metrics(reference, got, gates.get("atol"), gates.get("rtol"))
                except ValueError as exc:
                    this["failures"] = [f"output {exc}"]
                    rows.append(this)
                    continue
                this["metrics"] = m
                this["failures"] = metrics.gate_failures(m, gates)
                this["short"] = [short for short, _ in metrics.failed_gates(m, gates)]
                if golden["ort_outputs"] is not None and golden["ort_outputs"].shape == got.shape:
                    this["vs_packaging_max_abs"] = float(np.abs(got.astype(np.float64) - golden["ort_outputs"]).max())
                if fmt == "onnx":
                    outputs[batch] = got
                elif batch in outputs:
                    this["vs_onnx_max_abs"] = float(np.abs(got.astype(np.float64) - outputs[batch]).max())
                    differs = metrics.format_difference_failure(
                        str(manifest.get("precision")), this["vs_onnx_max_abs"], float(np.abs(outputs[batch]).max()))
                    if differs:
                        this["failures"].append(f"the {fmt} {differs}")
                        this.setdefault("short", []).append(f"differs from the .onnx ({this['vs_onnx_max_abs']:.2g})")
                this["status"] = "FAIL" if this["failures"] else "PASS"
                rows.append(this)
    bad_sums = [c for c in checksums if not c["ok"]]
    failed = bool(bad_sums) or any(r["status"] == "FAIL" for r in rows)
    unavailable = any(r["status"] == "UNAVAILABLE" for r in rows)
    exit_code = EXIT_FAILED if failed else EXIT_UNAVAILABLE if unavailable else EXIT_OK
    return {
        "bundle": str(folder), "manifest_sha256": manifest["_sha256"], "model": manifest["model"].get("name"),
        "precision": manifest.get("precision"),
        "gates": gates, "checksums": checksums, "cpu": cpu, "session_options": config, "notes": notes, "rows": rows,
        "golden_samples": int(len(inputs)), "passed": exit_code == EXIT_OK, "exit_code": exit_code,
        "reasons": [c["reason"] for c in bad_sums]
        + [f"{r['format']} on {r['provider']}" + (f" batch {r['batch']}" if r["batch"] else "") + ": " + "; ".join(r["failures"])
           for r in rows if r["status"] != "PASS"],
    }


# --- one image: the reference for the device's own preprocessing ------------------------------


def classify_image(folder, image_path, provider: str | None = None, fmt: str = "onnx", cpu: dict | None = None,
                   make_session=None, apply_session_options: bool = True, expect_manifest: str | None = None) -> dict:
    """One image through the manifest's preprocessing and the model: its top-5 (with labels when present).
    The bundle's files are checked against the manifest first: a tampered one is not used."""
    try:
        from PIL import Image
    except ImportError:
        raise ImportError("--image needs Pillow: pip install pillow") from None
    import io
    import warnings

    folder = Path(folder)
    manifest = read_manifest(folder, expect_manifest)
    bad = [c["reason"] for c in verify_checksums(folder, manifest) if not c["ok"]]
    if bad:
        raise Tampered("; ".join(bad))
    if not __package__:
        trust_metrics(manifest)
    pre = manifest["preprocessing"]
    files = dict(model_files(manifest))
    if fmt not in files:
        raise BrokenBundle(f"the bundle has no {fmt} model")
    config, notes = session_options_for(manifest, cpu or cpu_facts()) if apply_session_options else ({}, [])
    try:
        data = read_regular(Path(image_path), "image", MAX_IMAGE_BYTES)
    except BrokenBundle as exc:  # the photo is the user's input, not the bundle's
        raise BadImage(str(exc)) from None
    Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                image.load()
                pixels = crop_uint8(image, pre)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise BadImage(f"{image_path} is a decompression bomb ({exc})") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise BadImage(f"{image_path} cannot be decoded as an image: {exc}") from None
    tensor = normalize(pixels[None], pre["mean"], pre["std"])
    session = (make_session or ort_session)(folder / files[fmt], provider or PROVIDERS["cpu"], config)
    logits = run_model(session, tensor, batch_sizes(session, 1)[0])[0].astype(np.float64).ravel()
    shifted = np.exp(logits - logits.max())
    probs = shifted / shifted.sum()
    labels = (manifest.get("classes") or {}).get("labels")
    top = np.argsort(-logits)[:5]
    return {
        "image": str(image_path), "model": files[fmt], "preprocessing": pre.get("describe"), "session_options": config,
        "notes": notes, "input_sha256": hashlib.sha256(tensor.tobytes()).hexdigest(),
        "input_stats": {"min": float(tensor.min()), "max": float(tensor.max()), "mean": float(tensor.mean())},
        "top5": [{"rank": i + 1, "class": int(c), "label": labels[c] if labels and c < len(labels) else None,
                  "logit": float(logits[c]), "probability": float(probs[c])} for i, c in enumerate(top)],
    }


# --- printing ----------------------------------------------------------------------------------


def _num(value, spec: str) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and not np.isfinite(value):
        return "inf" if value > 0 else ("-inf" if value < 0 else "nan")
    return format(value, spec)


def format_report(result: dict) -> str:
    lines = [f"bundle {result['bundle']}: {result['model']} ({result['precision']}), "
             f"{result['golden_samples']} golden inputs, reference PyTorch fp32",
             f"manifest sha256 {result.get('manifest_sha256')} (pin it: --expect-manifest)"]
    cpu = result["cpu"]
    lines.append(f"cpu: {cpu.get('model')} ({cpu.get('machine')}{', flags faked' if cpu.get('faked') else ''})")
    gates = ", ".join(f"{k} {v}" for k, v in result["gates"].items() if v not in (None, False))
    lines.append(f"gates: {gates}")
    bad = [c for c in result["checksums"] if not c["ok"]]
    lines.append(f"checksums: {len(result['checksums']) - len(bad)}/{len(result['checksums'])} files match the manifest"
                 + ("" if not bad else " -- FAIL"))
    for c in bad:
        lines.append(f"  FAIL {c['reason']}")
    for note in result["notes"]:
        lines.append(f"note: {note}")
    header = ("format", "provider", "batch", "max abs", "SQNR dB", "cosine", "top-1", "top-5", "NaN/Inf", "result")
    table = [header]
    for r in result["rows"]:
        m = r["metrics"] or {}
        provider = r["provider"].replace("ExecutionProvider", "")
        reason = "; ".join(r.get("short") or r["failures"])
        table.append((
            r["format"], provider, _num(r["batch"], "d"), _num(m.get("max_abs"), ".2e"), _num(m.get("sqnr_db"), ".1f"),
            _num(m.get("cosine"), ".6f"), _num(m.get("top1_agreement"), ".0%"), _num(m.get("top5_agreement"), ".0%"),
            f"{m['nan']}/{m['inf']}" if m else "-", r["status"] + (f": {reason}" if reason else ""),
        ))
    widths = [max(len(str(row[i])) for row in table) for i in range(len(header) - 1)]
    for row in table:
        lines.append("  ".join(str(cell).ljust(w) for cell, w in zip(row, widths)) + "  " + row[-1])
    for r in result["rows"]:  # not gates: how far the .ort is from the .onnx, and both from the packaging machine
        extra = []
        if r.get("vs_onnx_max_abs") is not None:
            extra.append(f"vs the .onnx {r['vs_onnx_max_abs']:.2e}")
        if r.get("vs_packaging_max_abs") is not None:
            extra.append(f"vs the packaging machine's ORT {r['vs_packaging_max_abs']:.2e}")
        if extra:
            lines.append(f"  {r['format']} on {r['provider'].replace('ExecutionProvider', '')} batch {r['batch']}: max abs "
                         + ", ".join(extra))
    lines.append(("PASS" if result["passed"] else "FAIL" if result["exit_code"] == EXIT_FAILED else "UNAVAILABLE")
                 + (": " + " | ".join(result["reasons"]) if result["reasons"] else ""))
    return "\n".join(lines)


def format_image(result: dict) -> str:
    lines = [f"{result['image']} -> {result['model']}", f"preprocessing: {result['preprocessing']}",
             f"input tensor sha256 {result['input_sha256'][:16]}..., min {result['input_stats']['min']:.4f}, "
             f"max {result['input_stats']['max']:.4f}, mean {result['input_stats']['mean']:.4f}"]
    lines += [f"note: {n}" for n in result["notes"]]
    for t in result["top5"]:
        label = f"  {t['label']}" if t["label"] is not None else ""
        lines.append(f"{t['rank']}. class {t['class']:>5}{label}  logit {t['logit']:.4f}  p {t['probability']:.4f}")
    return "\n".join(lines)


def _json(value) -> str:
    def clean(v):
        if isinstance(v, float) and not np.isfinite(v):
            return "nan" if np.isnan(v) else ("inf" if v > 0 else "-inf")
        if isinstance(v, dict):
            return {str(k): clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        return v

    return json.dumps(clean(value), indent=2, allow_nan=False)


_EXITS = (
    (Tampered, ("FAIL: ", lambda: sys.stdout, EXIT_FAILED)),
    (BadImage, ("error: ", lambda: sys.stderr, EXIT_BROKEN)),
    (BrokenBundle, ("error: broken bundle: ", lambda: sys.stderr, EXIT_BROKEN)),
    (ProviderNotStarted, ("error: ", lambda: sys.stderr, EXIT_UNAVAILABLE)),
    (ImportError, ("error: ", lambda: sys.stderr, EXIT_UNAVAILABLE)),
    (OSError, ("error: ", lambda: sys.stderr, EXIT_BROKEN)),
)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Check this edgekit bundle with numpy and onnxruntime only.")
    parser.add_argument("--bundle", type=Path, default=Path(__file__).resolve().parent, help="bundle folder (default: this file's)")
    parser.add_argument("--providers", default=None, help="comma-separated: cpu,cuda,... or 'available' (default: cpu)")
    parser.add_argument("--image", type=Path, default=None, help="run one image (needs Pillow) and print the top-5")
    parser.add_argument("--format", choices=("onnx", "ort"), default="onnx", help="model format for --image")
    parser.add_argument("--no-session-options", action="store_true", help="ORT's defaults, not what the manifest says this CPU needs")
    parser.add_argument("--cpu-flags", default=None, help="pretend this CPU has only these flags (space or comma separated)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    parser.add_argument("--expect-manifest", default=None, metavar="SHA256",
                        help="fail unless manifest.json has this sha256 (printed when the bundle was made): a check "
                        "shipped inside a bundle cannot vouch for the bundle's own manifest")
    args = parser.parse_args(argv)
    try:
        cpu = cpu_facts(flags=args.cpu_flags)
        if args.image is not None:
            providers = parse_providers(args.providers)
            result = classify_image(args.bundle, args.image, providers[0], args.format, cpu,
                                    apply_session_options=not args.no_session_options,
                                    expect_manifest=args.expect_manifest)
            print(_json(result) if args.json else format_image(result))
            return EXIT_OK
        result = run_checks(args.bundle, parse_providers(args.providers), cpu,
                            apply_session_options=not args.no_session_options, expect_manifest=args.expect_manifest)
    except (Tampered, BadImage, BrokenBundle, ProviderNotStarted, ImportError, OSError) as exc:
        # (prefix, stream, exit code) per kind; OSError: --image names a missing or unreadable photo
        prefix, stream, code = next(v for k, v in _EXITS if isinstance(exc, k))
        print(f"{prefix}{exc}", file=stream())
        return code
    print(_json(result) if args.json else format_report(result))
    return result["exit_code"]


if __name__ == "__main__":
    sys.exit(main())
