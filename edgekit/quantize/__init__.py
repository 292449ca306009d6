"""Static INT8 quantization (ONNX Runtime, QDQ) with a recipe for the target CPU, and the checks
that make it trustworthy: really quantized, structure kept, runs, measured against fp32 the way
its target CPU computes, within an accuracy budget (keeping the most sensitive layers in fp32 when
full int8 misses it). Its knobs are QuantizeOptions (quantize/options.py).

`quantize()` refuses what cannot work before any work, then runs the eight named passes of quantize/passes.py
(prepare, rewrite, calibrate, quantize, check, judge, budget, write) over one Run, in a work folder, into a staged
output that is committed only when the last pass has passed."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from edgekit.onnxfile.artifact import artifact_bytes, derived_output, resolve_output, stage_output
from edgekit.quantize.calibration import CalibrationSet
from edgekit.judge.compare import OutputMetrics
from edgekit.core.errors import BadInput
from edgekit.core.knobs import described, with_knobs
from edgekit.onnxfile.graph import is_quantized
from edgekit.onnxfile import OnnxFile
from edgekit.core.provenance import CpuInfo
from edgekit.quantize.options import DEFAULT_SAMPLES, QuantizeOptions
from edgekit.quantize.budget import Budget, Fallback, Measure, load_labelled
from edgekit.quantize.passes import Run, run_passes
from edgekit.quantize.prepare import int8_gates, resolve_preprocessing, task_of
from edgekit.quantize.static import Coverage, resolve_exclusions
from edgekit.quantize.rewrites import batchnorm_as_depthwise
from edgekit.judge.targets import Int8Judgement, Recipe, resolve_recipe

__all__ = ["quantize", "QuantizeOptions", "QuantizeResult", "batchnorm_as_depthwise", "is_quantized", "DEFAULT_SAMPLES",
           "Measure"]


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
    dataset, max_drop = o.dataset, o.max_drop
    model_path = Path(model_path)
    _refuse_early(o)
    stage = on_stage or (lambda _s: None)
    progress = on_progress or (lambda *_a: None)
    source, task = _fp32_source(model_path, o)
    model, metadata = source.proto, source.metadata
    tolerance, gates = int8_gates(metadata, task, o.min_top1_agreement, o.min_sqnr)
    recipe = resolve_recipe(o.target, o.method, o.per_channel, o.rewrites)
    preprocessing, assumed = resolve_preprocessing(source, o.calibration, dataset)
    labelled = None
    if dataset is not None:
        from edgekit.onnxfile.graph import output_classes

        stage("labelled dataset")
        labelled = load_labelled(Path(dataset), preprocessing, output_classes(model) or (metadata or {}).get("num_classes"))
    final = resolve_output(o.output, derived_output(model_path, "int8"))
    if final.resolve() == model_path.resolve():
        raise BadInput(f"output {final} is the input file itself", hint="choose another -o")
    excluded = resolve_exclusions(model, list(o.exclude or []))
    staged = stage_output(final)
    try:
        with tempfile.TemporaryDirectory(prefix="edgekit-quantize-") as tmp:
            run = Run(model_path, model, metadata, o, recipe, preprocessing, excluded, Budget(max_drop, labelled, tolerance,
                      gates), task, gates, Path(tmp), staged, progress=progress, notes=[assumed] if assumed else [])
            result = _result(run_passes(run, stage))
        staged.commit()
        return result
    except BaseException:
        staged.discard()
        raise


def _refuse_early(o: QuantizeOptions) -> None:
    """Options that cannot work, refused before any work: an unknown or missing device, a budget without its data."""
    if o.device not in (None, "host"):
        from edgekit.runtimes.devices import ready_device

        ready_device(o.device)  # unknown: exit 2; not installed: exit 3, before any work
    if o.max_drop is not None and o.dataset is None:
        raise BadInput("--max-drop is a top-1 budget on --dataset", hint="give --dataset DIR (labelled, one folder per class)")
    low, high = described(QuantizeOptions, "max_drop").metadata["range"]  # the CLI's range, declared once
    if o.max_drop is not None and not (low <= o.max_drop <= high):
        raise BadInput(f"--max-drop must be {low:g} to {high:g} points, got {o.max_drop}")


def _fp32_source(model_path: Path, o: QuantizeOptions) -> tuple[OnnxFile, str]:
    """The file opened, if it is an fp32 model this budget can judge, and its task (classify or dense)."""
    source = OnnxFile.open(model_path)
    model, metadata = source.proto, source.metadata
    if is_quantized(model) or (metadata and metadata.get("precision", "fp32") != "fp32"):
        raise BadInput(f"{model_path} is already quantized ({(metadata or {}).get('precision', 'int8')})",
                       hint="quantize the fp32 file it came from")
    if source.spec.dtype != "float32":
        raise BadInput(f"{model_path} does not take fp32 inputs; edgekit quantizes fp32 models only")
    task = task_of(model, metadata)
    if task == "dense" and (o.max_drop is not None or o.dataset is not None):
        raise BadInput(f"--dataset and --max-drop measure top-1; {model_path.name} has a dense output (no class "
                       "decision)", hint="gate it with --min-sqnr")
    return source, task


def _result(run: Run) -> QuantizeResult:
    """What the passes did and measured, as quantize's result."""
    trial, excluded = run.trial, sorted(set(run.excluded) | set(run.trial.fp32_nodes))
    grouped, concats = run.counts
    return QuantizeResult(
        path=run.staged.final, parent=run.model_path, recipe=run.recipe, excluded=excluded, calibration=run.calib,
        calibration_seconds=run.calibration_seconds, fp32_bytes=artifact_bytes(run.model_path),
        int8_bytes=artifact_bytes(run.staged.path), ops=run.ops,
        coverage=run.coverage, grouped_convs=grouped - run.added_depthwise, concats=concats,
        batchnorm_rewritten=run.rewrites["batchnorm_as_depthwise"], holdout=trial.holdout, metadata=run.written,
        cpu=run.cpu, judgement=run.judgement, holdout_default=run.holdout_default, budget=run.budget.describe(),
        fallback=run.fallback, dataset_top1=(trial.fp32_top1, trial.int8_top1) if trial.drop is not None else None,
        notes=run.notes, ranges_cached=run.ranges.hit, task=run.task, gates=run.gates, prepared=run.prepared.changes,
    )
