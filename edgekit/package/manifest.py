"""A bundle's manifest.json (signature, preprocessing, classes, precision and recipe, session options, gates,
sha256 of every file, versions, ORT format and Mobile usability), its README.txt, and the list of its files
with the role of each."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from edgekit.onnxfile.artifact import sha256_file
from edgekit.bundle import BundleCheck
from edgekit.judge.compare import Tolerance
from edgekit.onnxfile.graph import graph_inputs
from edgekit.ondevice.check import BUNDLE_FORMAT
from edgekit.ondevice.cpu import CPU_RULES
from edgekit.package.ort_tools import ORT_OPTIMIZATION_STYLE
from edgekit.package.golden import GOLDEN_FILE
from edgekit.package.ort_format import OPS_CONFIG, OrtFormat
from edgekit.data.preprocessing import Preprocessing
from edgekit.core.provenance import library_versions, this_cpu
from edgekit.judge.targets import ANY_CPU

README_NAME = "README.txt"
MOBILE_REPORT = "mobile_usability.txt"


@dataclass
class BundleFile:
    name: str
    bytes: int
    role: str
    model: bool  # a model file (counted in the size the overhead is measured against)

    def to_dict(self) -> dict:
        return {"name": self.name, "bytes": self.bytes, "role": self.role, "model": self.model}


def build_manifest(
    model_path: Path, model, meta: dict, precision: str, pre: Preprocessing, classes: int | None,
    label_list: list[str] | None, recipe: dict | None, session_options: dict, tolerance: Tolerance,
    tolerance_source: str, photo_dir: Path, sources: list[Path], ort: OrtFormat, mobile: dict,
    reference: str = "PyTorch fp32 on CPU, the model the file was made from (rebuilt from its metadata)",
    task: str = "classify", runtimes: list[str] | None = None,
) -> dict:
    """The manifest of a bundle before its golden data and checksums are written (`golden` and `files` are
    filled by write_manifest's caller)."""
    onnx_name, ort_name, ort_left_out, arm = model_path.name, ort.name, ort.left_out, ort.arm
    versions = library_versions()
    manifest = {
        "edgekit_bundle": BUNDLE_FORMAT,
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
        "task": task,
        # what check.py runs by default (`package --runtimes`): OpenVINO where it is installed on the device
        "check_runtimes": list(runtimes or ["ort"]),
        "recipe": recipe,
        "session_options": session_options,
        "session_options_rules": {k: CPU_RULES.get(k, "unknown to this check.py") for k in session_options},
        "gates": {**tolerance.to_dict(), "source": tolerance_source + (", the photos' gates" if precision == "int8" else "")},
        "golden": {
            "file": GOLDEN_FILE, "samples": 0, "images": [], "source": str(photo_dir),
            "reference": f"outputs: {reference}",
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
    return manifest


def checked_when_packaged(result: BundleCheck, cpu: dict, versions: dict) -> dict:
    """What check.py's checks found on the packaging machine, row by row."""
    return {
        "runtime": f"onnxruntime {versions['onnxruntime']}", "cpu": cpu.get("model"), "session_options": result.session_options,
        "rows": [{"format": r["format"], "provider": r["provider"], "batch": r["batch"], "status": r["status"],
                  "sqnr_db": (r["metrics"] or {}).get("sqnr_db"), "max_abs": (r["metrics"] or {}).get("max_abs"),
                  "top1_agreement": (r["metrics"] or {}).get("top1_agreement")} for r in result.rows],
    }


# check.py opens its sessions with ONNX Runtime's default: the intra-op pool spins between calls
CHECKED_SPINNING = "on (ONNX Runtime's default: check.py sets no session.intra_op.allow_spinning)"
SPINNING_ADVICE = (
    "Thread spinning: checked with it on (ORT's default). Back to back, or when every millisecond counts, keep it on. "
    "A camera calling the model once per frame on a device that runs on a battery or gets hot: set "
    "session.intra_op.allow_spinning=0, which keeps the pool from burning a core between frames at the price of a "
    "slower wake-up (outputs do not change); edgekit bench FILE --interval MS measures both on your machine.")


def readme(manifest: dict) -> str:
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
        *(["    python check.py --runtime openvino     # OpenVINO only; a plain check.py runs it after ORT where "
           "`import openvino` works, else says it skipped it"]
          if "openvino" in (manifest.get("check_runtimes") or []) else []),
        f"Preprocessing: {manifest['preprocessing']['describe']}.",
        "Session options: " + (needs + " (check.py applies them when /proc/cpuinfo says so)" if needs else "none needed."),
        (f"Minimal ORT builds: --include_ops_by_config {OPS_CONFIG}; the .ort needs onnxruntime >= "
         f"{manifest['ort_format']['onnxruntime']}." if model["ort_file"] else "No .ort: " + manifest["ort_format"]["left_out"]),
        "Exit codes: 0 pass, 1 a check failed, 2 broken bundle or bad usage, 3 provider or library missing.",
        SPINNING_ADVICE,
        "",
    ])


def write_json(path: Path, data: dict) -> None:
    from edgekit.core.serialize import to_json

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


def write_manifest(staged: Path, manifest: dict, model_names: list[str]) -> None:
    manifest["files"] = {
        p.name: {"sha256": sha256_file(p), "bytes": p.stat().st_size, "model": p.name in model_names}
        for p in sorted(staged.iterdir()) if p.is_file() and p.name != "manifest.json"
    }
    write_json(staged / "manifest.json", manifest)


_ROLES = {
    "manifest.json": "signature, preprocessing, classes, gates, session options, sha256 of every file",
    GOLDEN_FILE: "golden inputs (uint8 pixels) and PyTorch fp32 outputs",
    "check.py": "the device check (numpy + onnxruntime)",
    "metrics.py": "edgekit's metric core, imported by check.py",
    "cpu.py": "this CPU and the session options it needs, imported by check.py",
    "sessions.py": "ONNX Runtime sessions and the batching rule, imported by check.py",
    "bundle_files.py": "the manifest, checksums and golden data as check.py reads them",
    "preprocess.py": "the exact preprocessing (check.py --image), imported by check.py",
    "report.py": "check.py's table and JSON",
    "openvino_run.py": "the .onnx in OpenVINO (where installed), imported by check.py",
    README_NAME: "how to run check.py on the device",
    MOBILE_REPORT: "ORT Mobile usability (NNAPI/CoreML partitions)",
    OPS_CONFIG: "operators for a minimal ORT build",
}


def bundle_files(staged: Path, model_names: list[str]) -> list[BundleFile]:
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
