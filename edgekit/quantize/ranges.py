"""Activation ranges computed once: ONNX Runtime's calibration cache, kept by content between runs.

The ranges a calibrator computes depend only on the graph it runs (the pre-processed, rewritten fp32 file), the
calibration tensors and the method; not on the target's weight format, the nodes kept in float or the output.
So one entry serves every target whose rewrites give the same graph, every trial of quantize's fp32 fallback
and every later run: the key is the sha256 of exactly those inputs (and ONNX Runtime's version, whose file
format it is). ORT reads and writes the cache through `quantize_static(calibration_cache_path=...)`; edgekit
hands it a working copy and stores a new entry with an atomic rename, so an interrupted run leaves no half
entry. An entry that is not a JSON object is said in a note and computed again, never trusted.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgekit.onnxfile.artifact import write_atomic
from edgekit.core.files import sha256_file

WORK_NAME = "calibration-ranges.json"
MAX_ENTRY_BYTES = 256 * 1024 * 1024  # a cache entry is read whole: bounded first


@dataclass
class RangesEntry:
    """The cache file ORT gets for one quantization (in the work folder), and where it is kept."""

    work: Path
    key: str
    store: Path | None  # the persistent folder (None: this run only)
    hit: bool
    note: str | None = None

    @property
    def stored(self) -> Path | None:
        return self.store / f"{self.key}.json" if self.store is not None else None

    def keep(self) -> None:
        """After a calibration: store what ORT wrote, atomically (nothing to do on a hit)."""
        if self.hit or self.stored is None or not self.work.is_file():
            return
        self.store.mkdir(parents=True, exist_ok=True)
        data = self.work.read_bytes()
        write_atomic(self.stored, lambda f: f.write(data))


def ranges_key(pre: Path, tensors: np.ndarray, method: str, percentile: float | None) -> str:
    import onnxruntime

    digest = hashlib.sha256()
    for part in (sha256_file(pre), str(tensors.shape), str(tensors.dtype), method, str(percentile), onnxruntime.__version__):
        digest.update(part.encode() + b"\0")
    digest.update(np.ascontiguousarray(tensors).tobytes())
    return digest.hexdigest()


def ranges_entry(store: Path | None, workdir: Path, pre: Path, tensors: np.ndarray, method: str,
                 percentile: float | None) -> RangesEntry:
    """The working cache file for this quantization: a copy of the stored entry when there is one."""
    key = ranges_key(pre, tensors, method, percentile)
    entry = RangesEntry(workdir / WORK_NAME, key, Path(store) if store is not None else None, False)
    stored = entry.stored
    if stored is None or not stored.is_file():
        return entry
    problem = _unusable(stored)
    if problem:
        entry.note = f"calibration cache entry {stored} {problem}; the ranges were computed again and stored anew"
        return entry
    shutil.copyfile(stored, entry.work)
    entry.hit = True
    return entry


def _unusable(path: Path) -> str | None:
    try:
        if path.stat().st_size > MAX_ENTRY_BYTES:
            return f"is over {MAX_ENTRY_BYTES >> 20} MiB"
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        return f"cannot be read ({type(exc).__name__})"
    if not isinstance(data, dict) or not data:
        return "is not a calibration cache (not a JSON object)"
    return None if _is_tensors_data(data) else "is not ONNX Runtime's activation ranges (TensorsData)"


def _is_tensors_data(data: dict) -> bool:
    """The shape of what ORT's calibrator writes: {"CLS": "TensorsData", "calibration_method": {...}, "data":
    {tensor: {"CLS": "TensorData", "lowest"/"highest" or "avg"/"std": numpy arrays, ...}}}; valid JSON of any
    other shape is not trusted (ORT would fail on it inside quantize_static). A numpy array is a list, or a number
    for a 0-d array (the percentile and entropy calibrators' scalar `highest`)."""
    method, tensors = data.get("calibration_method"), data.get("data")
    if data.get("CLS") != "TensorsData" or not isinstance(method, dict) or method.get("CLS") != "CalibrationMethod":
        return False
    if not isinstance(tensors, dict) or not tensors:
        return False
    for name, entry in tensors.items():
        if not isinstance(entry, dict) or entry.get("CLS") != "TensorData":
            return False
        if not ({"lowest", "highest"} <= set(entry) or {"avg", "std"} <= set(entry)):
            return False
        for key, value in entry.items():
            if key == "CLS":
                continue
            if isinstance(value, dict) and not (value.get("CLS") == "numpy.array" and _array_data(value.get("data"))
                                                and isinstance(value.get("dtype"), str)):
                return False
    return True


def _array_data(data) -> bool:
    """What ORT's JSON encoder writes for a numpy array's `data`: `tolist()`, a list or (0-d) a plain number."""
    return isinstance(data, list) or (isinstance(data, (int, float)) and not isinstance(data, bool))
