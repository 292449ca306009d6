"""Where a bundle is written and how: its default folder, the refusal to replace a folder that is not a bundle,
and the golden data and manifest written into the staged folder within the overhead budget."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from edgekit.onnxfile.artifact import EXPORTS_DIR
from edgekit.core.errors import BadInput
from edgekit.core.files import read_small_regular, resolved
from edgekit.package.golden import GOLDEN_FILE, golden_within_budget, write_golden
from edgekit.package.manifest import bundle_files, write_manifest

BUNDLE_SUFFIX = ".bundle"
# The golden data, manifest and scripts may add at most this fraction to the model files' size (issue 11).
OVERHEAD_BUDGET = 0.10


def default_bundle_dir(model_path: Path) -> Path:
    """exports/<name>.bundle for <name>.onnx."""
    name = model_path.name[: -len(".onnx")] if model_path.name.endswith(".onnx") else model_path.stem
    return EXPORTS_DIR / f"{name}{BUNDLE_SUFFIX}"


MAX_MANIFEST_BYTES = 16 << 20  # check.py's own bound on a manifest


def _is_bundle(folder: Path) -> bool:
    """Whether `folder` holds an edgekit manifest: read as a regular file of bounded size (a FIFO named
    manifest.json is not waited on, it is not a bundle)."""
    raw = read_small_regular(folder / "manifest.json", MAX_MANIFEST_BYTES)
    try:
        return raw is not None and json.loads(raw).get("edgekit_bundle") is not None
    except (ValueError, AttributeError):
        return False


def check_destination(final: Path, model_folder: Path | None = None) -> None:
    """BadInput when `final` cannot be followed (a symlink loop), is `model_folder`, is a file, or is a folder
    with files in it that is not an edgekit bundle."""
    where = resolved(final, "output")
    if model_folder is not None and where == resolved(model_folder, "model folder"):
        raise BadInput(f"output {final} is the folder the model is in", hint="name a new folder for the bundle")
    if final.exists() and not final.is_dir():
        raise BadInput(f"output {final} exists and is a file", hint="name a folder for the bundle with -o")
    if final.is_dir() and any(final.iterdir()) and not _is_bundle(final):
        raise BadInput(
            f"output folder {final} exists and is not an edgekit bundle; refusing to replace it",
            hint="choose another -o, or empty it",
        )


def write_within_budget(
    staged: Path, manifest: dict, model_names: list[str], pixels: np.ndarray, reference: np.ndarray,
    ort_outputs: np.ndarray, names: list[str], golden: int | None, notes: list[str],
) -> int:
    """golden.npz and manifest.json into the staged folder; without an explicit `golden` count, the golden
    photos are cut until the overhead fits OVERHEAD_BUDGET (at least one). Returns how many photos it kept."""
    n = len(pixels)
    while True:
        write_golden(staged / GOLDEN_FILE, pixels[:n], reference[:n], ort_outputs[:n], names[:n])
        manifest["golden"].update(samples=n, images=names[:n])
        write_manifest(staged, manifest, model_names)
        files = bundle_files(staged, model_names)
        model_bytes = sum(f.bytes for f in files if f.model)
        overhead = sum(f.bytes for f in files if not f.model)
        if overhead <= OVERHEAD_BUDGET * model_bytes or golden is not None or n == 1:
            break
        golden_bytes = (staged / GOLDEN_FILE).stat().st_size
        smaller = min(n - 1, golden_within_budget(n, golden_bytes, overhead - golden_bytes, model_bytes, OVERHEAD_BUDGET))
        notes.append(f"golden data cut from {n} to {smaller} photos to keep the bundle's overhead within "
                     f"{OVERHEAD_BUDGET:.0%} of the model files")
        n = smaller
    if overhead > OVERHEAD_BUDGET * model_bytes:
        notes.append(f"golden data, manifest and scripts add {overhead / model_bytes:.1%} to the model files "
                     f"(budget {OVERHEAD_BUDGET:.0%})" + (f"; --golden {golden} was asked" if golden else ""))
    return n
