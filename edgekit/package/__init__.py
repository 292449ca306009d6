"""`package`: a deployable folder that verifies itself on the device. Returns a PackageResult; never prints.

A bundle holds the model (.onnx, its external data, and the ORT format .ort with the
required_operators.config a minimal ORT build needs), golden inputs (photos as uint8 pixels after
resize/crop, and their reference outputs: edgekit.reference, PyTorch fp32 or, for a file without a PyTorch
source, ONNX Runtime on its fp32 parent or original), manifest.json (signature, preprocessing,
classes, precision and recipe, session options per CPU, the gates, sha256 of every file, versions,
ORT Mobile usability) and check.py with the device-side modules it imports (numpy and onnxruntime only;
OpenVINO too where the bundle is packaged --runtimes ort,openvino and it is installed) that re-run the checks
on the device. The folder is built in a hidden temp folder beside its destination, checked there
with check.py's own checks, and renamed into place only when they pass; on any failure nothing is left.

The steps, each in its own module: golden.py (the golden photos and their PyTorch reference), ort_format.py
(the .ort and its operators config), manifest.py (manifest.json, README.txt, the file list), folder.py (where
the bundle goes, and the golden data and manifest written within the overhead budget). This module runs them.
Its knobs are PackageOptions (package/options.py).
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from edgekit.onnxfile.artifact import model_files, sha256_file
from edgekit.bundle import BundleCheck, check_bundle, read_labels, this_cpu_for_check
from edgekit.core.errors import BadInput, CheckFailed
from edgekit.core.knobs import with_knobs
from edgekit.onnxfile.graph import output_classes, static_batch
from edgekit.data.images import DEFAULT_CALIBRATION_DIR, scan_folder
from edgekit.ondevice import BUNDLE_SCRIPTS, script_path
from edgekit.ondevice.cpu import session_options_for
from edgekit.onnxfile import OnnxFile
from edgekit.runtimes.openvino_model import openvino_golden_check, parse_runtimes
from edgekit.package.ort_tools import mobile_usability
from edgekit.onnxfile.outputs import commit_folder, stage_folder
from edgekit.package.folder import OVERHEAD_BUDGET, check_destination, default_bundle_dir, write_within_budget
from edgekit.package.golden import DEFAULT_GOLDEN, MAX_GOLDEN, golden_inputs, golden_within_budget, reference_outputs
from edgekit.package.manifest import (
    CHECKED_SPINNING,
    MOBILE_REPORT,
    README_NAME,
    SPINNING_ADVICE,
    BundleFile,
    build_manifest,
    bundle_files,
    checked_when_packaged,
    readme,
    write_json,
)
from edgekit.package.options import PackageOptions
from edgekit.package.ort_format import write_ort_format

__all__ = ["package", "check_bundle", "PackageOptions", "PackageResult", "BundleCheck", "BundleFile", "golden_within_budget"]


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


LATENCY_ROUNDS = 15  # interleaved timed calls per runtime for the manifest's latency on the packaging machine


def record_latencies(runtimes: dict, path: Path, x, config: dict, batch: int | None, cpu: dict) -> None:
    """Each runtime that passed on the golden data, timed on this (packaging) machine: the median of LATENCY_ROUNDS
    interleaved calls on the first golden input (repeated to a static batch; runtimes/timer.py), ORT with the bundle's session options and spinning
    off (what check.py runs with), OpenVINO as bench compiles it; written into each runtime's manifest entry."""
    from edgekit.runtimes.factory import open_runner
    from edgekit.runtimes.timer import medians

    x = x[:1].repeat(batch or 1, axis=0)
    wanted = {"onnxruntime": "ort"} if runtimes["onnxruntime"].get("passed") else {}
    if runtimes.get("openvino", {}).get("passed"):
        wanted["openvino"] = "openvino"
    runners = {}
    try:
        for key, runtime in wanted.items():
            runners[key] = (open_runner(path, "openvino", "cpu", batch=batch or 1) if runtime == "openvino"
                            else _ort_runner(path, config, batch))
        calls = {key: r.timed_runner(x) for key, r in runners.items()}
        ms = medians(calls, LATENCY_ROUNDS, warmup=2) if calls else {}
    finally:
        for r in runners.values():
            r.close()
    where = f"{cpu.get('model') or 'this CPU'}, batch {len(x)}, ONNX Runtime's and OpenVINO's default threads, spinning off"
    for key, value in ms.items():
        runtimes[key]["latency_ms_p50"] = value
        runtimes[key]["latency_measured"] = f"median of {LATENCY_ROUNDS} interleaved calls on the packaging machine ({where})"


def _ort_runner(path: Path, config: dict, batch: int | None):
    from edgekit.runtimes.factory import OrtRunner
    from edgekit.runtimes.ort import NO_SPIN, create_session

    return OrtRunner(create_session(path, "cpu", session_config={**NO_SPIN, **(config or {})}), batch)


def package(
    model_path: Path,
    options: PackageOptions | None = None,
    *,
    on_stage: Callable[[str], None] | None = None,
    **knobs,
) -> PackageResult:
    """Write the bundle for an edgekit .onnx file (fp32, fp16 or int8) and check it; nothing is written
    unless every check passes. OPTIONS (PackageOptions: output, labels, images, golden) with any keyword KNOBS
    replaced: `package(path, golden=4)` is `package(path, PackageOptions(golden=4))`. `golden`: photos in the
    golden data (default 8, fewer when they would add more than OVERHEAD_BUDGET to the model files; an explicit
    count is kept and the overhead said). Three steps: the plan (every refusal, before anything is written), the
    staged files, then the manifest and the bundle's own check; the folder is renamed into place only after."""
    o = with_knobs(PackageOptions, options, knobs)
    stage = on_stage or (lambda _s: None)
    plan = _plan(Path(model_path), o)
    notes: list[str] = []
    staged = stage_folder(plan.final)
    try:
        files = _stage_files(plan, staged, stage, notes)
        manifest, n, result = _manifest_and_check(plan, files, staged, stage, notes)
        listed = bundle_files(staged, files.model_names)
        commit_folder(staged, plan.final)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    result.folder = plan.final
    return PackageResult(
        folder=plan.final, source=plan.model_path, precision=plan.precision, files=listed, golden_samples=n,
        golden_images=files.names[:n], check=result, mobile=files.mobile, session_options=plan.session_options,
        gates=manifest["gates"], cpu=plan.cpu, notes=notes, manifest_sha256=sha256_file(plan.final / "manifest.json"))


@dataclass
class _Plan:
    """What a bundle is made of, settled before anything is written: the file, its reference and gates, its
    preprocessing, the photos, the destination, the session options and this CPU."""

    model_path: Path
    o: PackageOptions
    runtimes: list[str]
    model: object
    meta: dict
    precision: str
    ref: object  # reference.runner: the golden outputs' reference (closed once they are computed)
    tolerance: object
    tolerance_source: str
    classes: int | None
    label_list: list[str] | None
    pre: object  # the preprocessing
    photo_dir: Path
    photos: list[Path]
    final: Path
    recipe: dict | None
    session_options: dict
    cpu: dict

    @property
    def batch(self) -> int | None:
        return static_batch(self.model)


def _plan(model_path: Path, o: PackageOptions) -> _Plan:
    """Every refusal of `package`, before anything is written (BadInput, or exit 3 for a runtime not installed)."""
    from edgekit.judge.compare import gates_for
    from edgekit.reference.runner import open_reference

    runtimes = parse_runtimes(o.runtimes)  # openvino named where it is not installed: exit 3, before any work
    if "ort" not in runtimes:
        raise BadInput(f"--runtimes {o.runtimes}: a bundle is always checked in ONNX Runtime",
                       hint="use --runtimes ort,openvino to check it in OpenVINO as well")
    if model_path.suffix.lower() != ".onnx":
        raise BadInput(f"{model_path} is not an .onnx file", hint="package the .onnx that edgekit export/quantize wrote")
    if o.golden is not None and not 1 <= o.golden <= MAX_GOLDEN:
        raise BadInput(f"--golden {o.golden}: give 1 to {MAX_GOLDEN} photos")
    source = OnnxFile.open(model_path)
    model, meta, spec, precision = source.proto, source.metadata, source.spec, source.precision
    if meta is None and o.model is None:
        raise BadInput(
            f"{model_path} carries no edgekit metadata, so its reference and preprocessing are unknown",
            hint="import it first (edgekit import FILE -o OUT.onnx), or pass --model NAME (and --weights FILE) it was "
            "exported from",
        )
    # the reference of the golden outputs, and the gates verify gives this file (trained or unknown weights: the
    # stricter ones; a dense output: no top-1 gate)
    ref = open_reference(model_path, model, meta, model=o.model, weights=o.weights, parent=o.parent)
    tolerance, tolerance_source = gates_for(precision, ref.trained, task=ref.task,
                                            why=None if ref.kind == "pytorch" else ref.why_gates)
    has_meta, meta = meta is not None, meta if meta is not None else {}
    classes = output_classes(model) or (int(meta["num_classes"]) if str(meta.get("num_classes", "")).isdigit() else None)
    label_list = read_labels(o.labels, classes) if o.labels is not None else None
    if has_meta and "preprocessing" not in meta:
        raise BadInput(f"the edgekit metadata of {model_path} has no preprocessing", hint="re-export the file")
    pre = source.preprocessing() if has_meta else ref.preprocessing  # --model: ImageNet at its input size
    if any(d is not None and d != p for d, p in zip(spec.chw, pre.chw)):
        raise BadInput(f"{model_path}: input {spec.name!r} is {spec.chw} but its preprocessing makes {pre.chw}")
    photo_dir = Path(o.images) if o.images is not None else DEFAULT_CALIBRATION_DIR
    photos, _others = scan_folder(photo_dir)
    if not photos:
        raise BadInput(f"no photos in {photo_dir}", hint="pass --images DIR with jpg/png photos")
    final = Path(o.output) if o.output is not None else default_bundle_dir(model_path)
    check_destination(final, model_path.parent)  # a symlink loop, the model's own folder, a folder not a bundle
    recipe = meta.get("recipe") if precision == "int8" else None
    return _Plan(model_path, o, runtimes, model, meta, precision, ref, tolerance, tolerance_source, classes, label_list,
                 pre, photo_dir, photos, final, recipe, dict((recipe or {}).get("session_options") or {}),
                 this_cpu_for_check())


@dataclass
class _Staged:
    """The staged bundle's model files and what was computed on them."""

    sources: list[Path]
    ort: object  # ort_format's result
    pixels: object
    names: list[str]
    inputs: object
    reference: object
    here_config: dict
    ort_outputs: object
    mobile: dict

    @property
    def model_names(self) -> list[str]:
        return [p.name for p in self.sources] + ([self.ort.name] if self.ort.name else [])


def _stage_files(plan: _Plan, staged: Path, stage, notes: list[str]) -> _Staged:
    """The model files, the .ort, the golden inputs and their reference outputs, ONNX Runtime's outputs on this
    machine, the ORT Mobile report and the device-side scripts, into STAGED."""
    from edgekit.runtimes.runners import run_onnx

    with tempfile.TemporaryDirectory(prefix="edgekit-package-") as tmp:
        stage("copying the model")
        sources = model_files(plan.model_path)
        for src in sources:
            shutil.copyfile(src, staged / src.name)
        stage("converting to the ORT format")
        ort = write_ort_format(sources, staged, Path(tmp), plan.recipe, plan.session_options)
        if ort.left_out:
            notes.append(f"no .ort: {ort.left_out}")
        stage("golden inputs")
        pixels, names, inputs = golden_inputs(plan.photos, plan.photo_dir, plan.pre, plan.o.golden or DEFAULT_GOLDEN,
                                              notes)
        stage(f"the reference ({plan.ref.short})")
        try:
            reference = reference_outputs(plan.ref, inputs)
        finally:
            plan.ref.close()
        here_config, _ = session_options_for({"session_options": plan.session_options}, plan.cpu)
        stage("ONNX Runtime on this machine")
        ort_outputs = run_onnx(staged / plan.model_path.name, inputs, plan.batch, here_config or None)
        stage("ORT Mobile usability")
        mobile, mobile_text = mobile_usability(staged / plan.model_path.name)
        (staged / MOBILE_REPORT).write_text(mobile_text)
        for name in BUNDLE_SCRIPTS:
            shutil.copyfile(script_path(name), staged / name)
    return _Staged(sources, ort, pixels, names, inputs, reference, here_config, ort_outputs, mobile)


def _manifest_and_check(plan: _Plan, files: _Staged, staged: Path, stage, notes: list[str]):
    """manifest.json, README.txt and the golden data within the overhead budget, then check.py's own checks on the
    staged bundle (CheckFailed when they fail), the other runtimes and the latencies: (manifest, golden samples
    kept, the check's result)."""
    onnx_path = staged / plan.model_path.name
    manifest = build_manifest(plan.model_path, plan.model, plan.meta, plan.precision, plan.pre, plan.classes,
                              plan.label_list, plan.recipe, plan.session_options, plan.tolerance, plan.tolerance_source,
                              plan.photo_dir, files.sources, files.ort, files.mobile,
                              reference=plan.ref.describe() + ", on CPU", task=plan.ref.task, runtimes=plan.runtimes)
    versions = manifest["versions"]
    (staged / README_NAME).write_text(readme(manifest))
    stage("golden data and manifest")
    n = write_within_budget(staged, manifest, files.model_names, files.pixels, files.reference, files.ort_outputs,
                            files.names, plan.o.golden, notes)
    stage("check.py's checks on the bundle" + (" (ONNX Runtime and OpenVINO)" if "openvino" in plan.runtimes else ""))
    result = check_bundle(staged, runtimes=plan.runtimes)
    if not result.passed:
        raise CheckFailed(
            f"the bundle fails its own check: {' | '.join(result.reasons)}; nothing was written",
            hint="run edgekit verify on the file to see why; for a model trained on other images than the bundled "
            "photos, pass --images DIR from its own domain",
        )
    manifest["checked_when_packaged"] = checked_when_packaged(result, plan.cpu, versions)
    stage("other runtimes")
    manifest["runtimes"] = {"onnxruntime": {"version": versions["onnxruntime"], "passed": result.passed},
                            "openvino": openvino_golden_check(onnx_path, files.inputs[:n], files.reference[:n],
                                                              plan.tolerance, plan.batch)}
    manifest["thread_spinning"] = {"checked_with": CHECKED_SPINNING, "advice": SPINNING_ADVICE}
    record_latencies(manifest["runtimes"], onnx_path, files.inputs[:1], files.here_config, plan.batch, plan.cpu)
    write_json(staged / "manifest.json", manifest)  # not hashed itself: the checksums above stay valid
    return manifest, n, result
