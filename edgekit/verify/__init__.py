"""`verify`: an ONNX file on each ONNX Runtime execution provider against its reference. Returns a Report;
never prints.

The reference (edgekit.reference: open_reference) is the PyTorch fp32 model the file was made from, rebuilt from
its metadata, on the CPU (for an int8 or fp16 file: the fp32 model it descends from); for a file with no PyTorch
source it is ONNX Runtime on the CPU running the fp32 parent (an int8/fp16 file descended from a foreign or
imported file) or the original foreign file (an imported fp32 file). Gates depend on the file's precision (compare.DEFAULT_TOLERANCES) and can be overridden.
An int8 file on an x86 CPU without VNNI also runs with exact accumulation, so this CPU's kernel
saturation is measured and named apart from the file's quantization error. Its knobs are VerifyOptions
(verify/options.py).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from edgekit.onnxfile.artifact import load_onnx, read_metadata, sha256_file
from edgekit.core.errors import BadInput
from edgekit.onnxfile.graph import precision_of
from edgekit.core.knobs import described, with_knobs
from edgekit.core.provenance import run_environment
from edgekit.runtimes.devices import cpu_of
from edgekit.reference.runner import check_finite, open_reference
from edgekit.runtimes.runners import batch_sizes, input_dtype
from edgekit.verify.comparator import (
    cross_runtime_rows,
    ExactReference,
    openvino_runner,
    ort_runner,
    placement,
    compare_rows,
    torch_cuda_rows,
)
from edgekit.judge.targets import (
    TARGETS,
    exact_session_for,
    judge_int8,
    kernels_label,
)
from edgekit.runtimes.factory import session_options
from edgekit.verify.dataset import check_dataset, measure_dataset
from edgekit.verify.inputs import DEFAULT_RANDOM_INPUTS, expected_chw, load_input_sets
from edgekit.verify.options import VerifyOptions
from edgekit.verify.results import (
    Comparison,
    DatasetAccuracy,
    InputSet,
    ProviderAccuracy,
    ProviderRun,
    Reference,
    Report,
    Saturation,
)

__all__ = [
    "verify", "VerifyOptions", "Report", "Comparison", "DatasetAccuracy", "InputSet", "ProviderAccuracy", "ProviderRun",
    "Reference", "Saturation", "DEFAULT_RANDOM_INPUTS",
]
# Default kernels more than this many dB below exact accumulation on the same inputs: saturation.
# (Measured on trained digits nets on an AVX2 CPU: 8-bit-weight files lose 12-14 dB; exact runs differ
# from default ones by < 0.1 dB where nothing saturates.)
SATURATION_GAP_DB = 3.0


def _saturation(rows: list[Comparison], exact_rows: list[Comparison], cpu, recipe: dict, judged_for: str,
                gated_on_default: bool) -> Saturation | None:
    """Default vs exact int8 kernels on the first image input set (the photos or tensors)."""
    def first(rs):
        return next((r for r in rs if r.input_set != "random"), None)

    default, exact = first(rows), first(exact_rows)
    if default is None or exact is None:
        return None
    d, e = default.outputs[0], exact.outputs[0]
    return Saturation(
        cpu=cpu.to_dict(), recipe_target=recipe.get("target"), judged_for=judged_for,
        default_sqnr_db=d.sqnr_db, exact_sqnr_db=e.sqnr_db, default_top1_agreement=d.top1_agreement,
        exact_top1_agreement=e.top1_agreement, gated_on_default=gated_on_default, max_gap_db=SATURATION_GAP_DB,
        exact_kernels=kernels_label(exact_session_for(recipe)),
    )


@dataclass
class _Plan:
    """What verify decides before any work (`_plan`): the file, its reference and gates, where it runs."""

    path: Path
    o: VerifyOptions
    meta: dict | None
    ref: Any  # the reference runner (reference.runner.open_reference), not yet loaded
    precision: str
    tolerance: Any  # judge.compare.Tolerance
    tolerance_source: str
    digest: str
    parent_path: Path | None  # the fp32 parent --layers compares with
    runtime_names: list[str]
    device: str | None
    cpu: Any
    recipe: dict
    judgement: Any  # judge.targets.judge_int8's, for an int8 file; else None
    gated: str  # the int8 kernels the CPU rows are gated on: "exact" or "default"
    wanted: list[str]  # the ORT providers


def verify(path: Path, options: VerifyOptions | None = None, *, on_stage: Callable[[str], None] | None = None,
           **knobs) -> Report:
    """Compare the file on each provider (and runtime, and device) with its reference; the Report says what passed.

    OPTIONS (VerifyOptions: the inputs, the reference, the gates, what else to measure) with any keyword KNOBS
    replaced: `verify(path, providers="cpu")` is `verify(path, VerifyOptions(providers="cpu"))`. The steps: check the
    options, open the reference, open the sessions (a provider that cannot start fails in seconds, exit 3, before any
    PyTorch work), load the inputs, run the reference, compare every runner with it, then the dataset and the layers."""
    o = with_knobs(VerifyOptions, options, knobs)
    on_stage = on_stage or (lambda _s: None)
    started = time.perf_counter()
    plan = _plan(Path(path), o, on_stage)
    ref = plan.ref
    sessions: list = []
    with contextlib.ExitStack() as cleanup:
        # ORT writes a profiled session's trace when it is freed: end every one, whatever fails
        cleanup.callback(lambda: [s.discard_profile() for s in sessions])
        exact_session = _open_sessions(sessions, plan.path, o, plan.recipe, plan.judgement, plan.gated, plan.wanted,
                                       plan.device, on_stage)
        notes = _file_notes(plan.judgement, plan.precision, plan.device, o.target or plan.recipe.get("target"))
        input_sets = _load_inputs(ref, o, sessions, notes, on_stage)
        on_stage(f"building the reference ({ref.model_name})" if ref.kind == "pytorch" else "starting the reference")
        cleanup.callback(ref.close)
        ref.load()
        reference, expected_outputs = _run_reference(plan, input_sets, sessions[0].output_names, notes, on_stage)
        runs, comparisons, saturation = _compare(plan, sessions, exact_session, input_sets, expected_outputs, on_stage)
        comparisons += _other_runtime_rows(plan, reference, sessions[0], input_sets, expected_outputs, on_stage)
        accuracy = None
        if o.dataset is not None:
            on_stage("dataset")
            accuracy = measure_dataset(
                Path(o.dataset), ref.run, sessions, ref.preprocessing, reference.num_classes, o.max_drop,
                o.dataset_samples, o.seed, on_stage,
            )
        layer_report = _layer_report(plan, input_sets, on_stage)
        return Report(
            file=plan.path, sha256=plan.digest, precision=plan.precision, metadata=plan.meta, reference=reference,
            tolerance=plan.tolerance, tolerance_source=plan.tolerance_source, input_sets=input_sets, providers=runs,
            comparisons=comparisons, dataset=accuracy, versions=run_environment(), notes=notes,
            seconds=time.perf_counter() - started, saturation=saturation, layers=layer_report,
        )


def _plan(path: Path, o: VerifyOptions, on_stage: Callable[[str], None]) -> _Plan:
    """Every refusal and decision before any work: the options, the file and its metadata, the reference, the gates,
    the --layers parent, the int8 judgement on this CPU (or the device's), the providers."""
    from edgekit.judge.compare import gates_for
    from edgekit.runtimes.ort import parse_providers

    runtime_names, device = _checked_options(o)
    on_stage("loading the file")
    model_proto = load_onnx(path)
    meta = read_metadata(model_proto, path)
    ref = open_reference(path, model_proto, meta, model=o.model, weights=o.weights, pretrained=o.pretrained,
                         seed=o.seed, parent=o.parent)
    if o.parent is not None and ref.kind == "pytorch" and not o.layers:
        raise BadInput(f"--parent names the fp32 reference of a file without a PyTorch source; {path}'s reference is "
                       f"PyTorch ({ref.model_name})", hint="drop --parent, or add --layers to compare with that file")
    precision = precision_of(model_proto, meta)
    # the reference's weights decide: a foreign file verified against --weights is a trained model too, and one
    # whose weights are unknown (an ONNX reference) is not seeded-random
    tolerance, tolerance_source = gates_for(precision, ref.trained, o.atol, o.rtol, o.min_top1_agreement, o.min_sqnr,
                                            task=ref.task, why=None if ref.kind == "pytorch" else ref.why_gates)
    if o.dataset is not None:
        check_dataset(Path(o.dataset), ref.num_classes)  # a bad folder fails now, not after the reference is built
    digest = sha256_file(path)
    del model_proto  # the sessions read the file themselves; large graphs need not stay in memory
    if o.layers and precision != "int8":
        raise BadInput(f"--layers compares an int8 file with its fp32 parent; {path} is {precision}")
    parent_path = None
    if o.layers:
        parent_path = ref.file if ref.kind == "parent" else _parent_for_layers(path, meta, o.parent)
    cpu = cpu_of(device)
    recipe = (meta or {}).get("recipe") or {}
    judgement = judge_int8(recipe, cpu, o.target) if precision == "int8" else None
    # the one decision of the session options (runtimes/factory.py): what the file needs on every CPU, and the
    # exact-accumulation kernels where the file is judged as another CPU computes it
    gated = "exact" if judgement is not None and judgement.gate_session else "default"
    return _Plan(path=path, o=o, meta=meta, ref=ref, precision=precision, tolerance=tolerance,
                 tolerance_source=tolerance_source, digest=digest, parent_path=parent_path, runtime_names=runtime_names,
                 device=device, cpu=cpu, recipe=recipe, judgement=judgement, gated=gated,
                 wanted=parse_providers(o.providers))


def _load_inputs(ref, o: VerifyOptions, sessions: list, notes: list[str],
                 on_stage: Callable[[str], None]) -> list[InputSet]:
    """The input sets (photos or tensors, and random ones), each session checked on one batch of the first."""
    first = sessions[0]
    on_stage("loading inputs")
    input_sets, input_notes = load_input_sets(ref.preprocessing, expected_chw(first, ref.preprocessing), o.images,
                                              o.inputs, o.random_inputs, o.seed)
    notes += input_notes
    for session in sessions:
        session.check({session.input_name: np.repeat(input_sets[0].tensors[:1], batch_sizes(session)[0],
                                                     axis=0).astype(input_dtype(session))})
    if input_dtype(first) == np.float16:
        notes.append("the model takes float16 inputs: the float32 inputs are cast to float16 for ONNX Runtime")
    return input_sets


def _run_reference(plan: _Plan, input_sets: list[InputSet], outputs: list[str], notes: list[str],
                   on_stage: Callable[[str], None]) -> tuple[Reference, dict[str, np.ndarray]]:
    """The loaded reference as the Report says it (its class count from its outputs), and its outputs."""
    ref = plan.ref
    reference = Reference(
        model=ref.model_name, family=ref.family, from_metadata=ref.from_metadata, weights=ref.weights,
        num_classes=ref.num_classes, input_size=ref.input_size, preprocessing=ref.preprocessing, kind=ref.kind,
        file=str(ref.file) if ref.file else None, sha256=ref.sha256, task=ref.task, text=ref.describe(),
    )
    expected_outputs = _reference_outputs(ref, input_sets, on_stage)
    first_ref = expected_outputs[input_sets[0].name]
    reference.num_classes = int(first_ref.reshape(len(first_ref), -1).shape[1])
    notes += _reference_notes(ref, plan.o, plan.precision, plan.meta, input_sets, outputs)
    return reference, expected_outputs


def _compare(plan: _Plan, sessions: list, exact_session, input_sets: list[InputSet], expected: dict[str, np.ndarray],
             on_stage: Callable[[str], None]) -> tuple[list[ProviderRun], list[Comparison], Saturation | None]:
    """The comparator: every session against the reference's outputs, one row builder (verify/comparator.py); then
    this CPU's other int8 kernels, for the saturation measurement. Returns (placements, rows, saturation)."""
    first_output = sessions[0].output_names[0]
    user_elementwise = plan.o.atol is not None or plan.o.rtol is not None
    exact = ExactReference(plan.ref) if plan.precision == "fp32" and not user_elementwise and plan.ref.has_exact \
        else None
    runs: list[ProviderRun] = []
    comparisons: list[Comparison] = []
    gated_kernels = plan.judgement.kernels if plan.judgement else ""
    for session in sessions:
        runs.append(placement(session, input_sets, on_stage))
        runner = ort_runner(session, kernels=gated_kernels if session.requested == "cpu" else "")
        comparisons += compare_rows(runner, input_sets, expected, first_output, plan.precision, plan.tolerance, exact,
                                    on_stage)
    if exact_session is None:
        return runs, comparisons, None
    other_kernels = "" if gated_kernels else kernels_label(exact_session_for(plan.recipe))
    other_rows = compare_rows(ort_runner(exact_session, kernels=other_kernels, gated=False), input_sets, expected,
                              first_output, plan.precision, plan.tolerance, None, on_stage)
    for row in other_rows:
        row.notes.append("the other int8 kernels of this CPU, for the saturation measurement; not a gate")
    comparisons += other_rows
    cpu_rows = [c for c in comparisons if c.provider == "cpu" and c.gated]
    default_rows, exact_rows = (other_rows, cpu_rows) if gated_kernels else (cpu_rows, other_rows)
    saturation = _saturation(default_rows, exact_rows, plan.cpu, plan.recipe, plan.o.target or "this CPU",
                             gated_on_default=not gated_kernels)
    return runs, comparisons, saturation


def _other_runtime_rows(plan: _Plan, reference: Reference, first, input_sets: list[InputSet],
                        expected: dict[str, np.ndarray], on_stage: Callable[[str], None]) -> list[Comparison]:
    """The rows of the other runtimes: OpenVINO (--runtimes), the other runtimes of an imported original's file,
    PyTorch on CUDA (the reference's own device, when a CUDA provider is asked for and present)."""
    from edgekit.runtimes.ort import cuda_device_available

    ref, first_output = plan.ref, first.output_names[0]
    rows: list[Comparison] = []
    if "openvino" in plan.runtime_names:
        rows += compare_rows(openvino_runner(plan.path, batch_sizes(first)), input_sets, expected, first_output,
                             plan.precision, plan.tolerance, None, on_stage)
    if ref.kind == "original" and plan.device is None and "cpu" in plan.wanted:
        rows += cross_runtime_rows(plan.path, input_sets, expected, first_output, plan.precision, plan.tolerance,
                                   session_options(plan.recipe), plan.runtime_names, batch_sizes(first), on_stage)
    if ref.torch_model is not None and cuda_device_available() and any(p in ("cuda", "tensorrt") for p in plan.wanted):
        reference.devices = ["cpu", "cuda"]
        rows += torch_cuda_rows(ref.torch_model, input_sets, expected, first_output, on_stage)
    return rows


def _layer_report(plan: _Plan, input_sets: list[InputSet], on_stage: Callable[[str], None]):
    """--layers: the per-layer error of the int8 file against its fp32 parent, on the photos (or the first set)."""
    if plan.parent_path is None:
        return None
    from edgekit.layer_error import layer_errors

    on_stage("per-layer error")
    photos = next((s for s in input_sets if s.name != "random"), input_sets[0])
    return layer_errors(plan.parent_path, plan.path, photos.tensors,
                        session_config=session_options(plan.recipe, kernels=plan.gated), device=plan.device)


def _checked_options(o: VerifyOptions) -> tuple[list[str], str | None]:
    """Every option that can be refused, before any work: (the runtimes asked for, the device or None)."""
    if o.weights is not None and o.pretrained:
        raise BadInput("--weights and --pretrained exclude each other", hint="choose one")
    low, high = described(VerifyOptions, "max_drop").metadata["range"]  # the CLI's range, declared once
    if o.max_drop is not None and not (np.isfinite(o.max_drop) and low <= o.max_drop <= high):
        raise BadInput(f"--max-drop must be {low:g} to {high:g} points, got {o.max_drop}")
    if o.max_drop is not None and o.dataset is None:
        raise BadInput("--max-drop gates the accuracy on --dataset", hint="give --dataset DIR too")
    if o.dataset_samples is not None and o.dataset_samples < 1:
        raise BadInput(f"--samples must be at least 1, got {o.dataset_samples}")
    if o.target is not None and (o.target == "auto" or o.target not in TARGETS):
        raise BadInput(f"unknown --target {o.target!r}", hint=f"use one of {', '.join(t for t in TARGETS if t != 'auto')}")
    from edgekit.runtimes.openvino_model import parse_runtimes

    runtime_names = parse_runtimes(o.runtimes)  # exit 3 now when openvino is asked for and absent
    device = None if o.device in (None, "host", "") else o.device
    if device is not None:
        from edgekit.runtimes.devices import ready_device

        ready_device(device)  # unknown: exit 2; not set up here: exit 3, before any work
        if set(runtime_names) - {"ort"}:
            raise BadInput(f"--device {device} runs ONNX Runtime only; drop --runtimes")
    return runtime_names, device


def _open_sessions(sessions: list, path: Path, o: VerifyOptions, recipe: dict, judgement, gated: str,
                   wanted: list[str], device: str | None, on_stage: Callable[[str], None]):
    """One session per provider into `sessions` (the caller ends their profiles whatever fails); returns the session
    of this CPU's other int8 kernels (saturation), or None."""
    from edgekit.runtimes.ort import create_session

    for provider in wanted:
        on_stage(f"starting ONNX Runtime on {provider}")
        # ORT's CUDA provider uses TF32 for fp32 convolutions by default: that is not fp32 math.
        # (TensorRT has no such option in ORT; its fp32 engines may use TF32 on Ampere and later.)
        provider_options = {"use_tf32": "0"} if provider == "cuda" else None
        config = session_options(recipe, kernels=gated if provider == "cpu" else "default")
        sessions.append(create_session(
            path, provider, allow_fallback=o.allow_fallback, enable_profiling=device is None,
            provider_options=provider_options, session_config=config or None, device=device if provider == "cpu" else None,
        ))
    if judgement is not None and judgement.also_default and "cpu" in wanted:
        # the other CPU path: exact accumulation when the gates run on the defaults, and vice versa
        other = session_options(recipe, kernels="default" if gated == "exact" else "exact")
        return create_session(path, "cpu", session_config=other or None, device=device)
    return None


def _file_notes(judgement, precision: str, device: str | None, target: str | None) -> list[str]:
    notes = [judgement.note] if judgement is not None and judgement.note else []
    if device is not None:
        from edgekit.runtimes.devices import device_notes

        notes += device_notes(device, target)  # a board: what it said of itself (CPU, int8 features, versions)
    if precision == "int8" and device is None:
        from edgekit.runtimes.devices import suggest_devices

        hint = suggest_devices(target)
        if hint:
            notes.append(hint)
    return notes


def _reference_outputs(ref, input_sets: list[InputSet], on_stage: Callable[[str], None]) -> dict[str, np.ndarray]:
    """The reference's first output on every input set (NaN/Inf there: nothing to compare against, a failure)."""
    expected = {}
    for s in input_sets:
        on_stage(f"reference ({ref.short}) on {s.name}")
        out = ref.run(s.tensors)
        check_finite(out, s.name, ref)
        expected[s.name] = out
    return expected


def _reference_notes(ref, o: VerifyOptions, precision: str, meta: dict | None, input_sets: list[InputSet],
                     outputs: list[str]) -> list[str]:
    from edgekit.judge.compare import untrained

    notes = []
    if ref.kind == "pytorch" and not ref.from_metadata and (ref.weights or {}).get("kind") == "random":
        notes.append(f"no --weights: the reference has seeded random weights (seed {o.seed}); a foreign file matches it "
                     "only if it was exported from the same seeded model")
    if precision == "int8" and any(s.name == "random" for s in input_sets):
        notes.append("int8 on the random inputs: only NaN/Inf are gated (standard-normal noise lies outside the ranges "
                     "the int8 scales were calibrated on, and saturates); the photos carry the int8 gates")
    if precision == "int8" and untrained(meta):
        notes.append("random weights: int8 agreement and SQNR here show the file computes what its fp32 parent does; "
                     "they do not predict accuracy on real data (use --dataset with a trained model)")
    if len(outputs) > 1:
        notes.append(f"the model has several outputs; the first, {outputs[0]!r}, is compared")
    return notes


def _parent_for_layers(path: Path, meta: dict | None, parent: Path | None) -> Path:
    """The fp32 file an int8 one was quantized from: --parent, or the file its metadata records (beside it, or where
    it was), found and checked by its sha256."""
    from edgekit.reference.runner import find_by_sha256

    recorded = (meta or {}).get("parent") or {}
    if not recorded.get("file") or not recorded.get("sha256"):
        if parent is not None:
            return Path(parent)
        raise BadInput(f"{path} does not record the fp32 file it was quantized from", hint="pass it with --parent FILE")
    return find_by_sha256(path, str(recorded["file"]), str(recorded["sha256"]), parent, "fp32 parent",
                          "quantized from", recorded_path=recorded.get("path"))
