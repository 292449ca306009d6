"""Static INT8 quantization (ONNX Runtime, QDQ) with a recipe for the target CPU, and the checks
that make it trustworthy: really quantized, structure kept, runs, measured against fp32 the way
its target CPU computes, within an accuracy budget (keeping the most sensitive layers in fp32 when
full int8 misses it). Its knobs are QuantizeOptions (quantize/options.py)."""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from edgekit.onnxfile.artifact import (
    artifact_bytes,
    derived_output,
    load_work_file,
    resolve_output,
    sha256_file,
    stage_output,
    write_metadata,
)
from edgekit.quantize.calibration import CalibrationSet, build_calibration_set
from edgekit.data.images import DEFAULT_CALIBRATION_DIR
from edgekit.judge.compare import REWRITE_TOLERANCE, OutputMetrics, compare_outputs
from edgekit.core.errors import BadInput, CheckFailed, EnvironmentUnavailable, GateFailed, InvariantBroken
from edgekit.core.knobs import described, with_knobs
from edgekit.onnxfile.graph import is_quantized, static_batch
from edgekit.onnxfile import OnnxFile
from edgekit.core.provenance import CpuInfo, library_versions
from edgekit.quantize.options import DEFAULT_SAMPLES, QuantizeOptions
from edgekit.quantize.budget import Budget, Fallback, Measure, load_labelled
from edgekit.quantize.fallback import budget_missed, meet_budget
from edgekit.quantize.prepare import default_opset, int8_gates, prepare_graph, resolve_preprocessing, task_of
from edgekit.quantize.ranges import ranges_entry
from edgekit.quantize.static import (
    CALIB_PERCENTILE, Coverage, check_quantized, derived_exclusions, int8_coverage, quantize_once,
    resolve_exclusions,
)
from edgekit.quantize.rewrites import batchnorm_as_depthwise
from edgekit.onnxfile.structure import onnx_concat_count, onnx_grouped_conv_count, op_counts
from edgekit.judge.targets import Int8Judgement, Recipe, judge_int8, resolve_recipe
from edgekit.runtimes.factory import session_options

__all__ = ["quantize", "QuantizeOptions", "QuantizeResult", "batchnorm_as_depthwise", "is_quantized", "DEFAULT_SAMPLES"]


@dataclass
class QuantizeResult:
    """What `quantize` did and measured."""

    path: Path
    parent: Path
    recipe: Recipe
    excluded: list[str]
    calibration: CalibrationSet
    calibration_seconds: float
    fp32_bytes: int
    int8_bytes: int
    ops: dict[str, int]
    coverage: Coverage
    grouped_convs: int  # of the original model's (the depthwise convs made from BatchNormalization not counted)
    concats: int
    batchnorm_rewritten: int
    holdout: OutputMetrics  # the gated run (see `judgement`)
    metadata: dict
    cpu: CpuInfo
    judgement: Int8Judgement
    holdout_default: OutputMetrics | None = None  # ORT's default kernels on this CPU, when they differ from the gated run
    budget: str = ""
    fallback: Fallback | None = None  # what the accuracy budget's fp32 fallback tried and kept
    dataset_top1: tuple[float, float] | None = None  # (fp32, int8) top-1 on --dataset
    ranges_cached: bool = False  # the activation ranges came from the ranges cache (no calibration ran)
    notes: list[str] = field(default_factory=list)
    task: str = "classify"  # dense: a detection/segmentation map, judged by SQNR only
    gates: str = ""  # which gates applied and why (trained or random weights, dense)
    prepared: list[str] = field(default_factory=list)  # what quantize's preparation changed in the graph

    @property
    def size_ratio(self) -> float:
        return self.fp32_bytes / self.int8_bytes

    def to_dict(self) -> dict:
        return {
            "path": str(self.path), "parent": str(self.parent), "recipe": self.recipe.to_dict(), "excluded": self.excluded,
            "calibration": {**self.calibration.to_metadata(), "description": self.calibration.description,
                            "holdout": self.calibration.holdout_description},
            "calibration_seconds": self.calibration_seconds, "ranges_cached": self.ranges_cached,
            "fp32_bytes": self.fp32_bytes, "int8_bytes": self.int8_bytes,
            "size_ratio": self.size_ratio, "ops": self.ops, "coverage": {"int8": self.coverage.int8, "total": self.coverage.total},
            "grouped_convs": self.grouped_convs, "concats": self.concats, "batchnorm_rewritten": self.batchnorm_rewritten,
            "holdout": self.holdout.to_dict(), "cpu": self.cpu.to_dict(), "judgement": self.judgement.to_dict(),
            "holdout_default_kernels": self.holdout_default.to_dict() if self.holdout_default else None,
            "budget": self.budget, "fallback": self.fallback.to_dict() if self.fallback else None,
            "dataset_top1": {"fp32": self.dataset_top1[0], "int8": self.dataset_top1[1]} if self.dataset_top1 else None,
            "notes": self.notes, "task": self.task, "gates": self.gates, "prepared": self.prepared,
            "metadata": self.metadata,
        }


def quantize(
    model_path: Path,
    options: QuantizeOptions | None = None,
    *,
    on_stage: Callable[[str], None] | None = None,
    on_progress: Callable[[str, int, int], None] | None = None,
    **knobs,
) -> QuantizeResult:
    """Quantize an fp32 ONNX file to int8; nothing is written unless every check passes.

    OPTIONS (QuantizeOptions: the budget, the recipe's choices, the calibration data) with any keyword KNOBS
    replaced: `quantize(path, samples=64)` is `quantize(path, QuantizeOptions(samples=64))`."""
    o = with_knobs(QuantizeOptions, options, knobs)
    device, dataset, max_drop = o.device, o.dataset, o.max_drop
    model_path = Path(model_path)
    if device not in (None, "host"):
        from edgekit.runtimes.devices import ready_device

        ready_device(device)  # unknown: exit 2; not installed: exit 3, before any work
    if max_drop is not None and dataset is None:
        raise BadInput("--max-drop is a top-1 budget on --dataset", hint="give --dataset DIR (labelled, one folder per class)")
    low, high = described(QuantizeOptions, "max_drop").metadata["range"]  # the CLI's range, declared once
    if max_drop is not None and not (low <= max_drop <= high):
        raise BadInput(f"--max-drop must be {low:g} to {high:g} points, got {max_drop}")
    stage = on_stage or (lambda _s: None)
    progress = on_progress or (lambda *_a: None)
    source = OnnxFile.open(model_path)
    model, metadata = source.proto, source.metadata
    if is_quantized(model) or (metadata and metadata.get("precision", "fp32") != "fp32"):
        raise BadInput(f"{model_path} is already quantized ({(metadata or {}).get('precision', 'int8')})",
                       hint="quantize the fp32 file it came from")
    if source.spec.dtype != "float32":
        raise BadInput(f"{model_path} does not take fp32 inputs; edgekit quantizes fp32 models only")
    task = task_of(model, metadata)
    if task == "dense" and (max_drop is not None or dataset is not None):
        raise BadInput(f"--dataset and --max-drop measure top-1; {model_path.name} has a dense output (no class "
                       "decision)", hint="gate it with --min-sqnr")
    tolerance, gates = int8_gates(metadata, task, o.min_top1_agreement, o.min_sqnr)
    recipe = resolve_recipe(o.target, o.method, o.per_channel, o.rewrites)
    preprocessing, assumed = resolve_preprocessing(source, o.calibration, dataset)
    plan = _Plan(task, gates, [assumed] if assumed else [])
    labelled = None
    if dataset is not None:
        from edgekit.onnxfile.graph import output_classes

        stage("labelled dataset")
        labelled = load_labelled(Path(dataset), preprocessing, output_classes(model) or (metadata or {}).get("num_classes"))
    budget = Budget(max_drop, labelled, tolerance, gates)
    final = resolve_output(o.output, derived_output(model_path, "int8"))
    if final.resolve() == model_path.resolve():
        raise BadInput(f"output {final} is the input file itself", hint="choose another -o")
    excluded = resolve_exclusions(model, list(o.exclude or []))
    staged = stage_output(final)
    try:
        with tempfile.TemporaryDirectory(prefix="edgekit-quantize-") as tmp:
            result = _quantize_staged(model_path, model, metadata, recipe, preprocessing, excluded, o, staged,
                                      Path(tmp), budget, stage, progress, plan)
        staged.commit()
        return result
    except BaseException:
        staged.discard()
        raise


@dataclass
class _Plan:
    """What quantize decided about the file before any work: its task, its gates (and why), notes to say."""

    task: str
    gates: str
    notes: list[str]


def _quantize_staged(
    model_path, model, metadata, recipe: Recipe, preprocessing, excluded, o: QuantizeOptions, staged, workdir: Path,
    budget: Budget, stage, progress, plan: _Plan,
) -> QuantizeResult:
    device, explicit_target = o.device, o.target.lower()
    notes: list[str] = list(plan.notes)
    # A graph ONNX Runtime cannot run (an operator it does not know) is the user's input: say so in one line
    # now, before ORT's pre-processing prints its traceback and fails with a misleading one.
    from edgekit.runtimes.ort import create_session

    create_session(model_path, "cpu", optimization="none")
    stage("calibration set")
    calib = build_calibration_set(
        Path(o.calibration) if o.calibration is not None else DEFAULT_CALIBRATION_DIR,
        preprocessing, o.samples, o.seed, o.augment, on_progress=lambda i, n: progress("decode", i, n),
    )
    notes.extend(calib.warnings)
    input_name = model.graph.input[0].name
    output_name = model.graph.output[0].name
    batch = static_batch(model)

    stage("pre-process")
    prepared = prepare_graph(model, model_path, workdir, calib.holdout[: min(4, len(calib.holdout))], batch,
                             output_name)
    pre = prepared.path
    pre_model = load_work_file(pre)
    want_grouped = onnx_grouped_conv_count(model)
    want_concats = onnx_concat_count(model)
    if onnx_grouped_conv_count(pre_model) != want_grouped:
        raise InvariantBroken(f"ORT's pre-processing changed the number of grouped convolutions of {model_path.name}")
    stage("rewrite")
    rewrites, excluded = _rewrite(pre, pre_model, recipe, calib.holdout[: min(4, len(calib.holdout))], batch,
                                  output_name, excluded)
    excluded, mapped = derived_exclusions(pre, pre_model, model, excluded)  # names the pre-processing inlined
    notes.extend(mapped)
    bn_rewritten = rewrites["batchnorm_as_depthwise"]
    added_depthwise = bn_rewritten + len(rewrites["avgpool_as_depthwise"])  # new grouped convs, not the model's

    ranges = ranges_entry(o.ranges_cache, workdir, pre, calib.tensors, recipe.method,
                          CALIB_PERCENTILE if recipe.method == "percentile" else None)
    notes.extend([ranges.note] if ranges.note else [])

    def make(fp32_nodes: list[str], name: str = "quantized.onnx", report=None) -> Path:
        out = workdir / name
        quantize_once(pre, out, input_name, calib.tensors, batch, recipe, sorted(set(excluded) | set(fp32_nodes)), report,
                      calibration_cache=ranges.work)  # calibrated once, reused by every trial (and run, with a store)
        return out

    stage("quantize (cached ranges)" if ranges.hit else "calibrate + quantize")
    started = time.perf_counter()
    full = make([], report=lambda i, n: progress("calibrate", i, n))
    calibration_seconds = time.perf_counter() - started
    ranges.keep()

    stage("checks")
    check_quantized(load_work_file(full), model_path.name, want_grouped, want_concats, added_depthwise)
    from edgekit.runtimes.devices import cpu_of

    cpu = cpu_of(device)
    # an explicit --target says where the file will run; `auto` is this CPU
    recipe_meta = {**recipe.to_dict(), "format": "QDQ", "batchnorm_rewritten": bn_rewritten, "rewrites": rewrites,
                   "session_options": recipe.session_options(float_nodes=bool(excluded))}
    judgement = judge_int8(recipe_meta, cpu, None if explicit_target == "auto" else explicit_target)
    if judgement.note:
        notes.append(judgement.note)
    if device in (None, "host") and explicit_target != "auto":
        from edgekit.runtimes.devices import suggest_devices

        hint = suggest_devices(recipe.target)
        if hint:
            notes.append(hint)
    stage("accuracy budget")
    measure = Measure(model_path, calib.holdout, output_name, batch, budget, judgement.gate_session, bool(excluded),
                      device=device)
    trial, fallback, chosen = meet_budget(_first_measure(measure, full, judgement, recipe, cpu, device), o, model_path,
                                          pre, full, calib, batch, judgement, budget, measure, stage, notes)

    quantized = load_work_file(chosen)
    grouped, concats = check_quantized(quantized, model_path.name, want_grouped, want_concats, added_depthwise)
    fp32_nodes = trial.fp32_nodes
    new_meta = {
        **dict(metadata or {}),
        "precision": "int8",
        "parent": {"file": model_path.name, "path": str(model_path.resolve()), "sha256": sha256_file(model_path),
                   "metadata": bool(metadata)},
        "calibration": calib.to_metadata(),
        "recipe": {**recipe_meta, "excluded_nodes": sorted(set(excluded) | set(fp32_nodes)),
                   "fp32_fallback_nodes": fp32_nodes,
                   "session_options": recipe.session_options(float_nodes=bool(excluded or fp32_nodes))},
    }
    if not metadata:
        new_meta["preprocessing"] = preprocessing.to_dict()
    if plan.task == "dense":
        new_meta["task"] = "dense"
    if prepared.changes:
        new_meta["recipe"]["prepared"] = prepared.changes
    if new_meta.get("opset") is not None:  # the int8 file's own (prepare may have upgraded it)
        new_meta["opset"] = default_opset(quantized)
    new_meta["versions"] = library_versions()
    write_metadata(quantized, new_meta)
    staged.save(quantized)

    # Everything below runs on the staged file: what will ship.
    coverage, _optimized_ops = int8_coverage(staged.path, workdir, session_options(new_meta["recipe"]))
    shipped = measure(staged.path, fp32_nodes)
    holdout = shipped.holdout
    holdout_default = None
    if judgement.gate_session is not None and judgement.also_default:
        holdout_default = measure(staged.path, fp32_nodes, session_config=None, dataset=False).holdout
    if not shipped.passed(budget):  # the written bytes must pass what the trial passed
        budget_missed(shipped, budget, calib, judgement, "")
    new_meta["quantization_report"] = {
        "holdout_top1_agreement": holdout.top1_agreement,
        "holdout_sqnr_db": holdout.sqnr_db,
        "budget": budget.describe(),
        "gated_session_options": judgement.gate_session or {},
        "gated_kernels": judgement.kernels or "default",
        "cpu": cpu.to_dict(),
        "device": device or "host",
        "coverage_int8": coverage.int8,
        "coverage_total": coverage.total,
    }
    if trial.drop is not None:
        new_meta["quantization_report"].update(dataset_fp32_top1=trial.fp32_top1, dataset_int8_top1=trial.int8_top1)
    if holdout_default is not None:
        new_meta["quantization_report"]["holdout_sqnr_db_default_kernels"] = holdout_default.sqnr_db
        new_meta["quantization_report"]["holdout_top1_agreement_default_kernels"] = holdout_default.top1_agreement
    write_metadata(quantized, new_meta)
    staged.save(quantized)
    return QuantizeResult(
        path=staged.final, parent=model_path, recipe=recipe, excluded=sorted(set(excluded) | set(fp32_nodes)),
        calibration=calib, calibration_seconds=calibration_seconds, fp32_bytes=artifact_bytes(model_path),
        int8_bytes=artifact_bytes(staged.path), ops=dict(op_counts(quantized)), coverage=coverage,
        grouped_convs=grouped - added_depthwise, concats=concats, batchnorm_rewritten=bn_rewritten, holdout=holdout,
        metadata=new_meta, cpu=cpu, judgement=judgement, holdout_default=holdout_default, budget=budget.describe(),
        fallback=fallback, dataset_top1=(trial.fp32_top1, trial.int8_top1) if trial.drop is not None else None,
        notes=notes, ranges_cached=ranges.hit, task=plan.task, gates=plan.gates, prepared=prepared.changes,
    )


def _first_measure(measure, full: Path, judgement: Int8Judgement, recipe: Recipe, cpu, device: str | None):
    """The full int8 file's first measurement. Where this CPU's ONNX Runtime cannot start a session for a file
    meant for another target, that is this CPU's optimizer, not the user's input: exit 3, saying so."""
    try:
        return measure(full, [])
    except (BadInput, CheckFailed) as exc:
        if judgement.for_this_cpu or "cannot load" not in str(exc):
            raise
        where = f"the device {device}" if device not in (None, "host") else f"this CPU ({cpu.kind()})"
        raise EnvironmentUnavailable(
            f"ONNX Runtime on {where} cannot run this {recipe.target} file: {exc.message}",
            hint=f"judge it on its device, or with --device for an emulated {recipe.target} CPU",
        ) from None


def _rewrite(pre: Path, pre_model, recipe: Recipe, probe, batch, output_name: str, excluded: list[str]):
    """The recipe's rewrites on the pre-processed graph, saved over PRE when any applied and checked to compute the
    same thing to float rounding on PROBE; returns (what each did, the exclusions with rewritten nodes renamed)."""
    import onnx

    rewrites = apply_rewrites(pre_model, recipe)
    if any(rewrites.values()):
        from edgekit.runtimes.runners import run_onnx

        before = run_onnx(pre, probe, batch)
        onnx.save(pre_model, str(pre))
        drift = compare_outputs(before, run_onnx(pre, probe, batch), output_name, REWRITE_TOLERANCE)
        if not drift.passed:
            done = ", ".join(k for k, v in rewrites.items() if v)
            raise GateFailed(f"the graph rewrites ({done}) changed the outputs: {'; '.join(drift.failures)}")
        names = {n.name for n in pre_model.graph.node}
        # an --exclude naming a rewritten node means its replacement
        excluded = sorted(e if e in names or f"{e}_as_depthwise" not in names else f"{e}_as_depthwise" for e in excluded)
    return rewrites, excluded


def apply_rewrites(model, recipe: Recipe) -> dict:
    """The recipe's graph rewrites on the pre-processed fp32 model, in order (see rewrites.py for each one's
    measured reason); returns what each did, for the metadata. The caller checks the function is unchanged."""
    from edgekit.quantize.rewrites import avgpool_as_depthwise, avgpool_before_conv, merge_conv_groups

    done: dict = {"conv_groups_merged": [], "avgpool_before_conv": [], "avgpool_as_depthwise": []}
    if recipe.merge_conv_groups:
        done["conv_groups_merged"] = merge_conv_groups(model, recipe.merge_conv_groups)
    if recipe.avgpool_as_depthwise:
        done["avgpool_before_conv"] = avgpool_before_conv(model)  # first: the pool then meets the input, not the conv
        done["avgpool_as_depthwise"] = avgpool_as_depthwise(model)
    done["batchnorm_as_depthwise"] = batchnorm_as_depthwise(model) if recipe.batchnorm_as_depthwise else 0
    return done
