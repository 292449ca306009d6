"""From a sweep's spec to its jobs, before any of them runs: the inputs checked, their contents hashed, one fp32
export per model (reused from the output folder when nothing it depends on changed), and one row per
(model, target, method, samples) with the content key its result is cached under.

The keys: an fp32 file's key is the sha256 of its model, weights file sha256, seed, input size, resize, opset and
library versions; a row's is the sha256 of its fp32 file's sha256, every quantize knob of its job, its runtime, the calibration
set's and the labelled set's contents, the seed, this CPU's int8 kind and the library versions. The same key means the
same numbers, so a re-run reads them back instead of computing them.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from edgekit.core.errors import BadInput
from edgekit.core.files import sha256_file, shown_path
from edgekit.sweep.results import Row
from edgekit.sweep.spec import SweepSpec


@dataclass
class Inputs:
    """The labelled set and the calibration set, listed and hashed once."""

    items: list[str]  # dataset image paths, in order
    labels: list[int]
    classes: list[str]
    dataset_sha: str
    calibration_sha: str
    notes: list[str]


@dataclass
class ModelPlan:
    name: str
    file: Path
    key: str
    classes: int | None
    preprocessing: dict
    reused: bool  # the export in the output folder was still current
    sha256: str  # of the fp32 file: the keys of its rows


def versions() -> dict[str, str]:
    """The installed versions of what shapes a sweep's numbers: the libraries every file records
    (core/provenance.library_versions: torch, torchvision and onnxsim as their version modules state them, without
    importing them), and numpy, pillow and openvino (a row run in OpenVINO) from their package metadata."""
    from importlib.metadata import PackageNotFoundError, version

    from edgekit.core.provenance import library_versions

    found = dict(library_versions())
    for name in ("numpy", "pillow", "openvino"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "not installed"
    return found


def digest(*parts) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(json.dumps(part, sort_keys=True, default=str).encode() + b"\0")
    return h.hexdigest()


def _files_sha(files: list[Path], root: Path) -> str:
    h = hashlib.sha256()
    for f in files:
        h.update(str(Path(f).relative_to(root) if Path(f).is_relative_to(root) else f).encode() + b"\0")
        h.update(sha256_file(f).encode())
    return h.hexdigest()


def read_inputs(spec: SweepSpec) -> Inputs:
    """The labelled set (ImageFolder) and the calibration set (image folder or tensor file), hashed by content."""
    from edgekit.data.images import pick_samples, scan_image_folder, skipped_note
    from edgekit.verify.dataset import _scan_dataset

    classes, pairs, empty, not_regular = _scan_dataset(spec.dataset)
    if not pairs:
        raise BadInput(f"--dataset {shown_path(spec.dataset)}: its {len(classes)} class folders hold no images")
    label_of = dict(pairs)
    chosen = pick_samples([p for p, _ in pairs], spec.dataset_samples, spec.seed)
    notes = [f"class folders without images: {', '.join(empty[:5])}"] if empty else []
    if not_regular:  # symlink loops, broken links, FIFOs: named, never silently dropped
        notes.append("--dataset: " + skipped_note(Path(spec.dataset), not_regular))
    calibration = Path(spec.calibration)
    if calibration.is_dir():
        scan = scan_image_folder(calibration)
        if not scan.images:
            raise BadInput(f"--calibration {shown_path(calibration)} holds no images", hint="point to a folder of photos")
        calibration_sha = _files_sha(scan.images, calibration)
    elif calibration.is_file():
        calibration_sha = sha256_file(calibration)
    else:
        raise BadInput(f"--calibration {shown_path(calibration)} does not exist",
                       hint="a folder of images, or a .npz/.npy of preprocessed tensors")
    return Inputs([str(p.resolve()) for p in chosen], [label_of[p] for p in chosen], classes,
                  _files_sha(chosen, Path(spec.dataset)), calibration_sha, notes)


def export_key(spec: SweepSpec, model: str) -> str:
    weights = spec.weights.get(model)
    return digest("export", model, sha256_file(weights) if weights else None, spec.seed, spec.input_size, spec.resize,
                  _module_sha("edgekit.export"), versions())


def plan_exports(spec: SweepSpec, folder: Path, staging: Path, on_stage) -> list[ModelPlan]:
    """One fp32 export per model: the one in `folder`/exports when its key still matches, else a new one made in
    `staging` (moved into the output folder by `commit_exports` once every input has been checked)."""
    from edgekit.onnxfile.graph import output_classes
    from edgekit.onnxfile import OnnxFile
    from edgekit.data.preprocessing import Preprocessing

    plans = []
    for model in spec.models:
        key = export_key(spec, model)
        current = folder / "exports" / f"{model}.onnx"
        stamp = current.with_suffix(".key")
        reused = current.is_file() and stamp.is_file() and stamp.read_text().strip() == key
        if not reused:
            from edgekit.export import export

            on_stage(f"export {model}")
            size = spec.input_size
            prep = Preprocessing.from_options(size, resize=spec.resize) if spec.resize and size else None
            weights = spec.weights.get(model)
            current = export(model, input_size=size, weights=Path(weights) if weights else None, seed=spec.seed,
                             output=staging / f"{model}.onnx", preprocessing=prep).path
        handle = OnnxFile.open(current)
        plans.append(ModelPlan(model, current, key, output_classes(handle.proto) or (handle.metadata or {}).get("num_classes"),
                               handle.preprocessing().to_dict(), reused, sha256_file(current)))
    return plans


def check_classes(plans: list[ModelPlan], inputs: Inputs, dataset: Path) -> None:
    for plan in plans:
        if plan.classes is not None and len(inputs.classes) > plan.classes:
            raise BadInput(
                f"--dataset {shown_path(dataset)} has {len(inputs.classes)} classes but {plan.name} has {plan.classes} outputs",
                hint="point to a folder with at most as many class sub-folders as the model has classes",
            )


def commit_exports(plans: list[ModelPlan], folder: Path) -> None:
    """Move the new exports into `folder`/exports, each with its key beside it."""
    from edgekit.onnxfile.artifact import model_files, write_text_atomic

    (folder / "exports").mkdir(parents=True, exist_ok=True)
    for plan in plans:
        if plan.reused:
            continue
        final = folder / "exports" / f"{plan.name}.onnx"
        for part in model_files(plan.file):  # the .onnx and its external data file, if any
            shutil.move(str(part), str(final.parent / part.name))
        plan.file = final
        write_text_atomic(final.with_suffix(".key"), plan.key + "\n")


def quantize_code_sha() -> str:
    """The sources that make an int8 file from an fp32 one (edgekit/quantize/ and the recipes in judge/targets.py),
    read without importing them: a row cached by another edgekit (its version string may be the same) is made
    again when they differ."""
    root = Path(__file__).resolve().parent.parent
    files = sorted((root / "quantize").glob("*.py")) + [root / "judge" / "targets.py"]
    return digest(*[(f.name, sha256_file(f)) for f in files])


def _module_sha(name: str) -> str:
    """The source of an edgekit module (the export's defaults, such as its opset, live there), read without importing
    it (importing the exporter imports torch)."""
    import importlib.util

    return sha256_file(Path(importlib.util.find_spec(name).origin))


def reference(model: str, runtime: str = "ort") -> str:
    """The name of a model's fp32 top-1 in one runtime (the model's name for ONNX Runtime)."""
    return model if runtime == "ort" else f"{model}@{runtime}"


def fp32_key(plan: ModelPlan, inputs: Inputs, cpu_kind: str, runtime: str = "ort") -> str:
    return digest("fp32-top1", plan.sha256, inputs.dataset_sha, cpu_kind, versions(),
                  *(() if runtime == "ort" else (runtime,)))


def plan_rows(spec: SweepSpec, plans: list[ModelPlan], inputs: Inputs, cpu_kind: str) -> list[Row]:
    """One row per model x point (each combination of the swept knobs) x runtime, each with its quantize options
    and content key."""
    installed, quantizer = versions(), quantize_code_sha()
    budget_sets: dict[str, str] = {}  # a budget's own labelled set (--set/--sweep dataset) -> its contents' sha256
    rows = []
    for plan in plans:
        for point in spec.points():
            options = spec.options_for(point)
            extra = {k: v for k, v in point.items() if k not in ("target", "method", "samples")}
            budget_set = options.get("dataset")
            if budget_set is not None and budget_set not in budget_sets:
                budget_sets[budget_set] = _labelled_sha(Path(budget_set))
            for runtime in spec.runtimes:
                key = digest("int8-row", plan.sha256, options, budget_sets.get(budget_set), runtime,
                             inputs.calibration_sha, inputs.dataset_sha, spec.seed, cpu_kind, installed, quantizer)
                rows.append(Row(plan.name, point["target"], point["method"], point["samples"], key, knobs=extra,
                                runtime=runtime, options={k: v for k, v in options.items()
                                                          if k not in ("target", "method", "samples")}))
    return rows


def _labelled_sha(path: Path) -> str | None:
    """The contents of the labelled set quantize's budget measures (a folder of class folders), hashed like the
    sweep's own; None where it cannot be read (quantize then says why, in the row)."""
    from edgekit.verify.dataset import _scan_dataset

    try:
        _classes, pairs, _empty, _odd = _scan_dataset(path)
    except (BadInput, OSError):
        return None
    return _files_sha([p for p, _ in pairs], path)


def staging_folder(out: Path) -> tempfile.TemporaryDirectory:
    """Where new exports wait for the checks: beside the output folder when its parent exists (a rename moves them),
    else the system's temp folder (nothing is created before the checks pass)."""
    parent = Path(out).resolve().parent
    return tempfile.TemporaryDirectory(prefix=".edgekit-sweep-", dir=parent if parent.is_dir() else None)
