"""`package`: a deployable folder that verifies itself on the device. Returns a PackageResult; never prints.

A bundle holds the model (.onnx, its external data, and the ORT format .ort with the
required_operators.config a minimal ORT build needs), golden inputs (photos as uint8 pixels after
resize/crop, and their PyTorch fp32 reference outputs), manifest.json (signature, preprocessing,
classes, precision and recipe, session options per CPU, the gates, sha256 of every file, versions,
ORT Mobile usability) and check.py + metrics.py (numpy and onnxruntime only) that re-run the checks
on the device. The folder is built in a hidden temp folder beside its destination, checked there
with check.py's own checks, and renamed into place only when they pass; on any failure nothing is left.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np

from edgekit.artifact import EXPORTS_DIR, model_files, sha256_file
from edgekit.outputs import commit_folder, stage_folder
from edgekit.openvino_runtime import openvino_golden_check
from edgekit.ort_tools import ORT_OPTIMIZATION_STYLE, convert_to_ort, mobile_usability, ort_left_out_because
from edgekit.ort_tools import portable_ops_config
from edgekit.bundle import BundleCheck, check_bundle, read_labels, this_cpu_for_check
from edgekit.ondevice import BUNDLE_SCRIPTS, script_path
from edgekit.ondevice import check as bundle_check
from edgekit.images import DEFAULT_CALIBRATION_DIR, pick_samples, scan_folder
from edgekit.errors import BadInput, CheckFailed, EnvironmentUnavailable, one_line
from edgekit.graph import graph_inputs, output_classes, static_batch
from edgekit.preprocessing import Preprocessing
from edgekit.onnxfile import OnnxFile
from edgekit.provenance import library_versions, this_cpu
from edgekit.targets import ANY_CPU

__all__ = ["package", "check_bundle", "PackageResult", "BundleCheck", "BundleFile", "golden_within_budget"]

DEFAULT_GOLDEN = 8
MAX_GOLDEN = 256
# The golden data, manifest and scripts may add at most this fraction to the model files' size (issue 11).
OVERHEAD_BUDGET = 0.10
BUNDLE_SUFFIX = ".bundle"
README_NAME = "README.txt"
MOBILE_REPORT = "mobile_usability.txt"
OPS_CONFIG = "required_operators.config"
GOLDEN_FILE = "golden.npz"


# --- results -----------------------------------------------------------------------------------


@dataclass
class BundleFile:
    name: str
    bytes: int
    role: str
    model: bool  # a model file (counted in the size the overhead is measured against)

    def to_dict(self) -> dict:
        return {"name": self.name, "bytes": self.bytes, "role": self.role, "model": self.model}


@dataclass
class PackageResult:
    """What `package` wrote and measured."""

    folder: Path
    source: Path
    precision: str
    files: list[BundleFile]
    golden_samples: int
    golden_images: list[str]
    check: BundleCheck
    mobile: dict
    session_options: dict
    gates: dict
    cpu: dict
    notes: list[str] = field(default_factory=list)
    manifest_sha256: str | None = None  # printed to be pinned: check.py --expect-manifest

    @property
    def model_bytes(self) -> int:
        return sum(f.bytes for f in self.files if f.model)

    @property
    def overhead_bytes(self) -> int:
        return sum(f.bytes for f in self.files if not f.model)

    @property
    def overhead_fraction(self) -> float:
        return self.overhead_bytes / self.model_bytes if self.model_bytes else float("inf")

    @property
    def total_bytes(self) -> int:
        return self.model_bytes + self.overhead_bytes

    def to_dict(self) -> dict:
        return {
            "folder": str(self.folder), "source": str(self.source), "precision": self.precision,
            "files": [f.to_dict() for f in self.files], "model_bytes": self.model_bytes,
            "overhead_bytes": self.overhead_bytes, "overhead_fraction": self.overhead_fraction,
            "overhead_budget": OVERHEAD_BUDGET, "total_bytes": self.total_bytes,
            "golden_samples": self.golden_samples, "golden_images": self.golden_images, "check": self.check.to_dict(),
            "mobile_usability": self.mobile, "session_options": self.session_options, "gates": self.gates,
            "cpu": self.cpu, "notes": self.notes, "manifest_sha256": self.manifest_sha256,
        }


# --- helpers -----------------------------------------------------------------------------------


def default_bundle_dir(model_path: Path) -> Path:
    """exports/<name>.bundle for <name>.onnx."""
    name = model_path.name[: -len(".onnx")] if model_path.name.endswith(".onnx") else model_path.stem
    return EXPORTS_DIR / f"{name}{BUNDLE_SUFFIX}"


def _is_bundle(folder: Path) -> bool:
    try:
        return json.loads((folder / "manifest.json").read_text()).get("edgekit_bundle") is not None
    except (OSError, ValueError, AttributeError):
        return False


def _check_destination(final: Path) -> None:
    if final.exists() and not final.is_dir():
        raise BadInput(f"output {final} exists and is a file", hint="name a folder for the bundle with -o")
    if final.is_dir() and any(final.iterdir()) and not _is_bundle(final):
        raise BadInput(
            f"output folder {final} exists and is not an edgekit bundle; refusing to replace it",
            hint="choose another -o, or empty it",
        )


def golden_within_budget(n: int, golden_bytes: int, other_bytes: int, model_bytes: int, budget: float) -> int:
    """How many of `n` golden photos (`golden_bytes` in all) fit beside `other_bytes` of manifest and scripts
    within `budget` x the model files' bytes; at least one."""
    if golden_bytes + other_bytes <= budget * model_bytes:
        return n
    per_photo = max(1.0, golden_bytes / n)
    return max(1, min(n, int((budget * model_bytes - other_bytes) // per_photo)))


def _golden_pixels(files: list[Path], pre: Preprocessing, want: int) -> tuple[np.ndarray, list[str], list[str]]:
    """Up to `want` photos as uint8 (C, H, W) crops (check.py's crop_uint8), each checked to normalise to exactly
    what edgekit's Preprocessing.apply gives; (pixels, names, notes on skipped files)."""
    from PIL import Image, UnidentifiedImageError

    pre_dict = pre.to_dict()
    pixels, names, notes = [], [], []
    for path in files:
        if len(pixels) >= want:
            break
        try:
            with Image.open(path) as image:
                image.load()
                crop = bundle_check.crop_uint8(image, pre_dict)
                expected = pre.apply(image)
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
            notes.append(f"skipped {path.name}: cannot decode ({one_line(exc, 200)})")
            continue
        got = bundle_check.normalize(crop, pre.mean, pre.std)
        if got.shape != expected.shape or not np.array_equal(got, expected):
            diff = float(np.abs(got - expected).max()) if got.shape == expected.shape else float("nan")
            raise CheckFailed(
                f"check.py's preprocessing differs from edgekit's on {path.name} (max abs {diff:.3g}, shapes "
                f"{got.shape} / {expected.shape}); the bundle would teach the device the wrong steps"
            )
        pixels.append(crop)
        names.append(path.name)
    if not pixels:
        raise BadInput("no usable photos for the golden inputs", hint="pass --images DIR with jpg/png photos")
    return np.stack(pixels), names, notes


def _readme(manifest: dict) -> str:
    model = manifest["model"]
    opts = manifest.get("session_options") or {}
    needs = "; ".join(f"on {kind}: {', '.join(f'{k}={v}' for k, v in entries.items())}" for kind, entries in opts.items())
    return "\n".join([
        f"edgekit bundle: {model['file']} ({manifest['precision']}), "
        + (f"{model['ort_file']} (ORT format), " if model["ort_file"] else "no .ort (manifest.json's ort_format says why), ")
        + "golden data, check.py",
        "On the device, with Python 3, numpy and onnxruntime (no torch, no edgekit):",
        "    python check.py                        # checksums, .onnx and .ort on the golden inputs, PASS/FAIL, exit 0/1",
        "    python check.py --providers cpu,cuda   # every listed execution provider (exit 3 if one does not start)",
        "    python check.py --image photo.jpg      # one photo through the exact preprocessing (needs Pillow): top-5",
        "    python check.py --json                 # every number as JSON",
        f"Preprocessing: {manifest['preprocessing']['describe']}.",
        "Session options: " + (needs + " (check.py applies them when /proc/cpuinfo says so)" if needs else "none needed."),
        (f"Minimal ORT builds: --include_ops_by_config {OPS_CONFIG}; the .ort needs onnxruntime >= "
         f"{manifest['ort_format']['onnxruntime']}." if model["ort_file"] else "No .ort: " + manifest["ort_format"]["left_out"]),
        "Exit codes: 0 pass, 1 a check failed, 2 broken bundle or bad usage, 3 provider or library missing.",
        "",
    ])


def _write_json(path: Path, data: dict) -> None:
    from edgekit.serialize import to_json

    path.write_text(to_json(data))


def _signature(model) -> tuple[list[dict], list[dict]]:
    """Names, shapes ('dynamic' where not fixed) and numpy dtypes of the graph's inputs and outputs."""
    from onnx.helper import tensor_dtype_to_np_dtype

    def entry(value):
        t = value.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else "dynamic" for d in t.shape.dim]
        try:
            dtype = np.dtype(tensor_dtype_to_np_dtype(t.elem_type)).name
        except (KeyError, TypeError, ValueError):
            dtype = f"onnx type {t.elem_type}"
        return {"name": value.name, "shape": dims, "dtype": dtype}

    return [entry(v) for v in graph_inputs(model)], [entry(v) for v in model.graph.output]


# --- the stage ---------------------------------------------------------------------------------


def package(
    model_path: Path,
    *,
    output: Path | None = None,
    labels: Path | None = None,
    images: Path | None = None,
    golden: int | None = None,
    on_stage: Callable[[str], None] | None = None,
) -> PackageResult:
    """Write the bundle for an edgekit .onnx file (fp32, fp16 or int8) and check it; nothing is written
    unless every check passes. `golden`: photos in the golden data (default 8, fewer when they would add
    more than OVERHEAD_BUDGET to the model files; an explicit count is kept and the overhead said)."""
    stage = on_stage or (lambda _s: None)
    model_path = Path(model_path)
    if model_path.suffix.lower() != ".onnx":
        raise BadInput(f"{model_path} is not an .onnx file", hint="package the .onnx that edgekit export/quantize wrote")
    if golden is not None and not 1 <= golden <= MAX_GOLDEN:
        raise BadInput(f"--golden {golden}: give 1 to {MAX_GOLDEN} photos")
    source = OnnxFile.open(model_path)
    model, meta, spec, precision = source.proto, source.metadata, source.spec, source.precision
    if meta is None:
        raise BadInput(
            f"{model_path} carries no edgekit metadata, so its PyTorch reference and preprocessing are unknown",
            hint="package a file written by edgekit export, quantize or convert",
        )
    tolerance, tolerance_source = source.gates()  # the gates verify and quantize use for this file
    classes = output_classes(model) or (int(meta["num_classes"]) if str(meta.get("num_classes", "")).isdigit() else None)
    label_list = read_labels(labels, classes) if labels is not None else None
    if "preprocessing" not in meta:
        raise BadInput(f"the edgekit metadata of {model_path} has no preprocessing", hint="re-export the file")
    pre = source.preprocessing()
    if any(d is not None and d != p for d, p in zip(spec.chw, pre.chw)):
        raise BadInput(f"{model_path}: input {spec.name!r} is {spec.chw} but its preprocessing makes {pre.chw}")
    photo_dir = Path(images) if images is not None else DEFAULT_CALIBRATION_DIR
    photos, _others = scan_folder(photo_dir)
    if not photos:
        raise BadInput(f"no photos in {photo_dir}", hint="pass --images DIR with jpg/png photos")
    final = Path(output) if output is not None else default_bundle_dir(model_path)
    if final.resolve() == model_path.parent.resolve():
        raise BadInput(f"output {final} is the folder the model is in", hint="name a new folder for the bundle")
    _check_destination(final)
    recipe = meta.get("recipe") if precision == "int8" else None
    session_options = dict((recipe or {}).get("session_options") or {})
    cpu = this_cpu_for_check()
    notes: list[str] = []

    staged = stage_folder(final)
    try:
        with tempfile.TemporaryDirectory(prefix="edgekit-package-") as tmp:
            stage("copying the model")
            sources = model_files(model_path)
            for src in sources:
                shutil.copyfile(src, staged / src.name)
            onnx_name = model_path.name
            stage("converting to the ORT format")
            arm = bool(recipe and recipe.get("target") == "arm64")
            ort_left_out, ort_name = ort_left_out_because(session_options), None
            if ort_left_out:
                notes.append(f"no .ort: {ort_left_out}")
            else:
                ort_tmp, config_tmp = convert_to_ort(sources, Path(tmp), arm, session_options.get(ANY_CPU))
                ort_name = onnx_name[: -len(".onnx")] + ".ort"
                shutil.copyfile(ort_tmp, staged / ort_name)
                (staged / OPS_CONFIG).write_text(portable_ops_config(config_tmp, ort_name))

            stage("golden inputs")
            want = golden or DEFAULT_GOLDEN
            pixels, names, skipped = _golden_pixels(pick_samples(photos, None), pre, want)
            notes += skipped
            if len(pixels) < want:
                notes.append(f"{photo_dir} has {len(pixels)} usable photos; the golden data holds {len(pixels)}, not {want}")
            inputs = bundle_check.normalize(pixels, pre.mean, pre.std)

            stage("PyTorch fp32 reference")
            reference = _reference_outputs(model_path, model, meta, inputs)
            here_config, _ = bundle_check.session_options_for({"session_options": session_options}, cpu)
            stage("ONNX Runtime on this machine")
            from edgekit.runners import run_onnx

            ort_outputs = run_onnx(staged / onnx_name, inputs, static_batch(model), here_config or None)

            stage("ORT Mobile usability")
            mobile, mobile_text = mobile_usability(staged / onnx_name)
            (staged / MOBILE_REPORT).write_text(mobile_text)
            for name in BUNDLE_SCRIPTS:
                shutil.copyfile(script_path(name), staged / name)

        model_names = [p.name for p in sources] + ([ort_name] if ort_name else [])
        versions = library_versions()
        manifest = {
            "edgekit_bundle": bundle_check.BUNDLE_FORMAT,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "model": {
                "name": meta.get("model"), "family": meta.get("family"), "file": onnx_name, "ort_file": ort_name,
                "external_data": [p.name for p in sources[1:]], "source": str(model_path),
                "source_sha256": sha256_file(model_path), "parent": meta.get("parent"), "weights": meta.get("weights"),
            },
            "inputs": None, "outputs": None,
            "preprocessing": {
                **pre.to_dict(), "describe": pre.describe(),
                "golden_encoding": "golden.npz 'images': uint8 (N, C, H, W) pixels after resize and centre crop, in the "
                                   "model's channel order; model input = (images / 255 - mean) / std per channel, float32",
            },
            "classes": {"count": classes, "labels": label_list},
            "precision": precision,
            "recipe": recipe,
            "session_options": session_options,
            "session_options_rules": {k: bundle_check.CPU_RULES.get(k, "unknown to this check.py") for k in session_options},
            "gates": {**tolerance.to_dict(), "source": tolerance_source + (", the photos' gates" if precision == "int8" else "")},
            "golden": {
                "file": GOLDEN_FILE, "samples": 0, "images": [], "source": str(photo_dir),
                "reference": "outputs: PyTorch fp32 on CPU, the model the file was made from (rebuilt from its metadata)",
                "ort_outputs": "this .onnx in ONNX Runtime on the packaging machine's CPU (not a gate: for comparison)",
            },
            "ort_format": {
                "file": ort_name, "optimization_style": ORT_OPTIMIZATION_STYLE, "optimization_level": "all",
                "target_platform": "arm (session.qdqisint8allowed=1)" if arm else "ORT default (NCHWc layout excluded, as ORT does for files meant for ARM too)",
                "required_operators": OPS_CONFIG if ort_name else None, "onnxruntime": versions["onnxruntime"],
                "tool": "onnxruntime.tools.convert_onnx_models_to_ort",
                "session_config": session_options.get(ANY_CPU) or {},
                "left_out": ort_left_out,
            },
            "mobile_usability": {**mobile, "report": MOBILE_REPORT},
            "versions": versions,
            "packaged_on": {"cpu": this_cpu().to_dict(), "python": sys.version.split()[0]},
            "files": {},
        }
        manifest["inputs"], manifest["outputs"] = _signature(model)
        (staged / README_NAME).write_text(_readme(manifest))

        stage("golden data and manifest")
        n = len(pixels)
        while True:
            _write_golden(staged / GOLDEN_FILE, pixels[:n], reference[:n], ort_outputs[:n], names[:n])
            manifest["golden"].update(samples=n, images=names[:n])
            _write_manifest(staged, manifest, model_names)
            files = _bundle_files(staged, model_names)
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

        stage("check.py's checks on the bundle")
        result = check_bundle(staged)
        if not result.passed:
            raise CheckFailed(
                f"the bundle fails its own check: {' | '.join(result.reasons)}; nothing was written",
                hint="run edgekit verify on the file to see why; for a model trained on other images than the bundled "
                "photos, pass --images DIR from its own domain",
            )
        manifest["checked_when_packaged"] = {
            "runtime": f"onnxruntime {versions['onnxruntime']}", "cpu": cpu.get("model"), "session_options": result.session_options,
            "rows": [{"format": r["format"], "provider": r["provider"], "batch": r["batch"], "status": r["status"],
                      "sqnr_db": (r["metrics"] or {}).get("sqnr_db"), "max_abs": (r["metrics"] or {}).get("max_abs"),
                      "top1_agreement": (r["metrics"] or {}).get("top1_agreement")} for r in result.rows],
        }
        stage("other runtimes")
        manifest["runtimes"] = {"onnxruntime": {"version": versions["onnxruntime"], "passed": result.passed},
                                "openvino": openvino_golden_check(staged / onnx_name, inputs[:n], reference[:n], tolerance,
                                                                  static_batch(model))}
        _write_json(staged / "manifest.json", manifest)  # not hashed itself: the checksums above stay valid
        files = _bundle_files(staged, model_names)
        commit_folder(staged, final)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    result.folder = final
    return PackageResult(
        folder=final, source=model_path, precision=precision, files=files, golden_samples=n, golden_images=names[:n],
        check=result, mobile=mobile, session_options=session_options, gates=manifest["gates"], cpu=cpu, notes=notes,
        manifest_sha256=sha256_file(final / "manifest.json"))


def _reference_outputs(model_path: Path, model, meta: dict, inputs: np.ndarray) -> np.ndarray:
    """PyTorch fp32 outputs of the model the file came from (an int8/fp16 file: its fp32 ancestor)."""
    from edgekit.models.reference import rebuild_reference
    from edgekit.runners import run_torch

    try:
        torch_model, _plan = rebuild_reference(model_path, model, meta)
    except ImportError as exc:
        raise EnvironmentUnavailable(f"the PyTorch reference needs torch: {one_line(exc)}") from None
    return run_torch(torch_model, inputs).astype(np.float32)


def _write_golden(path: Path, pixels, outputs, ort_outputs, names) -> None:
    with open(path, "wb") as f:
        np.savez_compressed(
            f, images=np.ascontiguousarray(pixels, dtype=np.uint8), outputs=np.asarray(outputs, np.float32),
            ort_outputs=np.asarray(ort_outputs, np.float32), names=np.array(names),
        )


def _write_manifest(staged: Path, manifest: dict, model_names: list[str]) -> None:
    manifest["files"] = {
        p.name: {"sha256": sha256_file(p), "bytes": p.stat().st_size, "model": p.name in model_names}
        for p in sorted(staged.iterdir()) if p.is_file() and p.name != "manifest.json"
    }
    _write_json(staged / "manifest.json", manifest)


_ROLES = {
    "manifest.json": "signature, preprocessing, classes, gates, session options, sha256 of every file",
    GOLDEN_FILE: "golden inputs (uint8 pixels) and PyTorch fp32 outputs",
    "check.py": "the device check (numpy + onnxruntime)",
    "metrics.py": "edgekit's metric core, imported by check.py",
    README_NAME: "how to run check.py on the device",
    MOBILE_REPORT: "ORT Mobile usability (NNAPI/CoreML partitions)",
    OPS_CONFIG: "operators for a minimal ORT build",
}


def _bundle_files(staged: Path, model_names: list[str]) -> list[BundleFile]:
    files = []
    for p in sorted(staged.iterdir(), key=lambda p: (p.name not in model_names, p.name)):
        if not p.is_file():
            continue
        if p.name in model_names:
            role = "ORT format model" if p.suffix == ".ort" else ("external weights" if p.suffix == ".data" else "ONNX model")
        else:
            role = _ROLES.get(p.name, "")
        files.append(BundleFile(p.name, p.stat().st_size, role, p.name in model_names))
    return files

