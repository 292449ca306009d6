"""Static INT8 quantization (ONNX Runtime, QDQ) with a recipe for the target CPU, and the checks
that make it trustworthy: really quantized, structure kept, runs, measured against fp32."""

from __future__ import annotations

import contextlib
import io
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from edgekit.artifact import (
    artifact_bytes,
    derived_output,
    load_onnx,
    read_metadata,
    resolve_output,
    sha256_file,
    stage_output,
    write_metadata,
)
from edgekit.calibration import DEFAULT_CALIBRATION_DIR, CalibrationSet, build_calibration_set
from edgekit.compare import REWRITE_TOLERANCE, OutputMetrics, Tolerance, compare_outputs, resolve_tolerance
from edgekit.errors import BadInput, CheckFailed, one_line
from edgekit.graph import input_spec, is_quantized, static_batch
from edgekit.preprocessing import Preprocessing
from edgekit.provenance import CpuInfo, library_versions, this_cpu
from edgekit.rewrites import batchnorm_as_depthwise  # noqa: F401  (part of quantize's API)
from edgekit.runners import padded_batches, run_onnx
from edgekit.structure import onnx_concat_count, onnx_grouped_conv_count, op_counts
from edgekit.targets import Int8Judgement, Recipe, judge_int8, resolve_recipe

DEFAULT_SAMPLES = 128
# What ORT really executes after its own graph optimisation: int8 kernels vs float ones.
INT8_KERNELS = {"Conv": {"QLinearConv", "ConvInteger"}, "Gemm": {"QGemm", "QLinearMatMul", "MatMulInteger"},
                "Concat": {"QLinearConcat"}}
FLOAT_KERNELS = {"Conv": {"Conv", "FusedConv", "NchwcConv"}, "Gemm": {"Gemm", "FusedGemm", "MatMul", "FusedMatMul"},
                 "Concat": {"Concat"}}


@dataclass
class Coverage:
    """How many Conv / Gemm / Concat nodes ORT runs in int8, out of how many."""

    int8: dict[str, int]
    total: dict[str, int]

    def describe(self) -> str:
        return ", ".join(f"{op} {self.int8[op]}/{self.total[op]}" for op in INT8_KERNELS if self.total[op])


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
    notes: list[str] = field(default_factory=list)

    @property
    def size_ratio(self) -> float:
        return self.fp32_bytes / self.int8_bytes

    def to_dict(self) -> dict:
        return {
            "path": str(self.path), "parent": str(self.parent), "recipe": self.recipe.to_dict(), "excluded": self.excluded,
            "calibration": {**self.calibration.to_metadata(), "description": self.calibration.description,
                            "holdout": self.calibration.holdout_description},
            "calibration_seconds": self.calibration_seconds, "fp32_bytes": self.fp32_bytes, "int8_bytes": self.int8_bytes,
            "size_ratio": self.size_ratio, "ops": self.ops, "coverage": {"int8": self.coverage.int8, "total": self.coverage.total},
            "grouped_convs": self.grouped_convs, "concats": self.concats, "batchnorm_rewritten": self.batchnorm_rewritten,
            "holdout": self.holdout.to_dict(), "cpu": self.cpu.to_dict(), "judgement": self.judgement.to_dict(),
            "holdout_default_kernels": self.holdout_default.to_dict() if self.holdout_default else None,
            "notes": self.notes, "metadata": self.metadata,
        }


def preprocessing_for(model, metadata: dict | None, path: Path) -> Preprocessing:
    """From the metadata; a foreign file gets ImageNet preprocessing at its static input size."""
    if metadata and "preprocessing" in metadata:
        return Preprocessing.from_dict(metadata["preprocessing"])
    spec = input_spec(model, path)
    if spec.chw[0] != 3 or spec.spatial is None:
        raise BadInput(f"{path} has no edgekit metadata and its input is not (N, 3, S, S); cannot tell its preprocessing")
    return Preprocessing.for_input_size(spec.spatial)


def resolve_exclusions(model, exclude: list[str]) -> list[str]:
    """Node names to exclude: each item is a node name or an op type (all its nodes)."""
    names = {n.name for n in model.graph.node}
    by_type: dict[str, list[str]] = {}
    for node in model.graph.node:
        by_type.setdefault(node.op_type, []).append(node.name)
    resolved: list[str] = []
    for item in exclude:
        if item in names:
            resolved.append(item)
        elif item in by_type:
            resolved.extend(by_type[item])
        else:
            raise BadInput(
                f"--exclude {item!r} is neither a node name nor an op type of the model",
                hint=f"op types here: {', '.join(sorted(by_type))}",
            )
    return sorted(set(resolved))


class _Reader:
    """ORT CalibrationDataReader over preprocessed tensors, one static batch at a time."""

    def __init__(self, input_name: str, tensors: np.ndarray, batch: int | None, on_progress=None):
        self._batches = [chunk for chunk, _real in padded_batches(tensors, batch)]
        self._input = input_name
        self._i = 0
        self._on_progress = on_progress

    def get_next(self):
        if self._i >= len(self._batches):
            return None
        item = {self._input: self._batches[self._i]}
        self._i += 1
        if self._on_progress:
            self._on_progress(self._i, len(self._batches))
        return item

    def rewind(self):
        self._i = 0


def int8_coverage(path: Path, workdir: Path) -> tuple[Coverage, dict[str, int]]:
    """Run ORT's own optimisation (as a session does) and count what executes in int8."""
    from edgekit.runtime import create_session

    optimized = workdir / "ort-optimized.onnx"
    create_session(path, "cpu", optimized_model_path=optimized)
    import onnx

    ops = Counter(n.op_type for n in onnx.load(str(optimized), load_external_data=False).graph.node)
    int8 = {op: sum(ops[k] for k in kinds) for op, kinds in INT8_KERNELS.items()}
    total = {op: int8[op] + sum(ops[k] for k in FLOAT_KERNELS[op]) for op in INT8_KERNELS}
    return Coverage(int8=int8, total=total), dict(ops)


def quantize(
    model_path: Path,
    *,
    calibration: Path | None = None,
    samples: int = DEFAULT_SAMPLES,
    method: str | None = None,
    target: str = "auto",
    per_channel: bool | None = None,
    exclude: list[str] | None = None,
    augment: bool = False,
    seed: int = 0,
    output: Path | None = None,
    min_top1_agreement: float | None = None,
    min_sqnr: float | None = None,
    on_stage: Callable[[str], None] | None = None,
    on_progress: Callable[[str, int, int], None] | None = None,
) -> QuantizeResult:
    """Quantize an fp32 ONNX file to int8; nothing is written unless every check passes."""
    model_path = Path(model_path)
    tolerance, _source = resolve_tolerance("int8", min_top1_agreement=min_top1_agreement, min_sqnr=min_sqnr)
    stage = on_stage or (lambda _s: None)
    progress = on_progress or (lambda *_a: None)
    model = load_onnx(model_path)
    metadata = read_metadata(model)
    if is_quantized(model) or (metadata and metadata.get("precision", "fp32") != "fp32"):
        raise BadInput(f"{model_path} is already quantized ({(metadata or {}).get('precision', 'int8')})",
                       hint="quantize the fp32 file it came from")
    if input_spec(model, model_path).dtype != "float32":
        raise BadInput(f"{model_path} does not take fp32 inputs; edgekit quantizes fp32 models only")
    recipe = resolve_recipe(target, method, per_channel)
    preprocessing = preprocessing_for(model, metadata, model_path)
    final = resolve_output(output, derived_output(model_path, "int8"))
    if final.resolve() == model_path.resolve():
        raise BadInput(f"output {final} is the input file itself", hint="choose another -o")
    excluded = resolve_exclusions(model, exclude or [])
    staged = stage_output(final)
    try:
        with tempfile.TemporaryDirectory(prefix="edgekit-quantize-") as tmp:
            result = _quantize_staged(
                model_path, model, metadata, recipe, preprocessing, excluded, calibration, samples, augment, seed,
                staged, Path(tmp), tolerance, stage, progress, target.lower(),
            )
        staged.commit()
        return result
    except BaseException:
        staged.discard()
        raise


def _quantize_staged(
    model_path, model, metadata, recipe: Recipe, preprocessing, excluded, calibration, samples, augment, seed,
    staged, workdir: Path, tolerance: Tolerance, stage, progress, explicit_target: str,
) -> QuantizeResult:
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    notes: list[str] = []
    stage("calibration set")
    calib = build_calibration_set(
        Path(calibration) if calibration is not None else DEFAULT_CALIBRATION_DIR,
        preprocessing, samples, seed, augment, on_progress=lambda i, n: progress("decode", i, n),
    )
    notes.extend(calib.warnings)
    input_name = model.graph.input[0].name
    batch = static_batch(model)

    stage("pre-process")
    pre = workdir / "preprocessed.onnx"
    try:
        # The loaded model (external data already read and checked), not the path: ORT's
        # pre-processing copies a path into a temp folder without its external data file.
        quant_pre_process(model, str(pre), skip_symbolic_shape=True)
    except Exception as exc:
        raise CheckFailed(f"ONNX Runtime's quantization pre-processing failed on {model_path}: {one_line(exc, 200)}") from exc
    pre_model = onnx.load(str(pre))
    want_grouped = onnx_grouped_conv_count(model)
    want_concats = onnx_concat_count(model)
    if onnx_grouped_conv_count(pre_model) != want_grouped:
        raise CheckFailed(f"ORT's pre-processing changed the number of grouped convolutions of {model_path.name}")
    bn_rewritten = batchnorm_as_depthwise(pre_model) if recipe.batchnorm_as_depthwise else 0
    if bn_rewritten:
        # the rewritten graph must still compute the same thing, to float rounding
        probe = calib.holdout[: min(4, len(calib.holdout))]
        before = run_onnx(pre, probe, batch)
        onnx.save(pre_model, str(pre))
        drift = compare_outputs(before, run_onnx(pre, probe, batch), model.graph.output[0].name, REWRITE_TOLERANCE)
        if not drift.passed:
            raise CheckFailed(f"rewriting BatchNormalization as depthwise Conv changed the outputs: {'; '.join(drift.failures)}")

    stage("calibrate + quantize")
    types = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    extra = {"ActivationSymmetric": recipe.activation_symmetric, "WeightSymmetric": True}
    if recipe.method == "percentile":
        extra["CalibPercentile"] = 99.999
    quantized_tmp = workdir / "quantized.onnx"
    reader = _Reader(input_name, calib.tensors, batch, lambda i, n: progress("calibrate", i, n))
    started = time.perf_counter()
    try:
        # ORT's calibrators print progress to stdout; only the cli package prints.
        # ...and warn through the root logger about every BatchNormalization they cannot quantize per channel.
        with contextlib.redirect_stdout(io.StringIO()), _quiet_root_logger():
            quantize_static(
                str(pre), str(quantized_tmp), reader,
                quant_format=QuantFormat.QDQ,
                per_channel=recipe.per_channel,
                reduce_range=recipe.reduce_range,
                activation_type=types[recipe.activation_type],
                weight_type=types[recipe.weight_type],
                nodes_to_exclude=excluded or None,
                calibrate_method=methods[recipe.method],
                extra_options=extra,
            )
    except Exception as exc:
        raise CheckFailed(f"quantize_static failed on {model_path}: {one_line(exc, 200)}") from exc
    calibration_seconds = time.perf_counter() - started

    stage("checks")
    quantized = onnx.load(str(quantized_tmp))
    ops = op_counts(quantized)
    if not (ops.get("QuantizeLinear") and ops.get("DequantizeLinear")):
        raise CheckFailed("the output of quantize_static has no QuantizeLinear/DequantizeLinear nodes: it is not quantized")
    from onnx import TensorProto

    int8_weights = sum(1 for t in quantized.graph.initializer if t.data_type in (TensorProto.INT8, TensorProto.UINT8) and len(t.dims) >= 2)
    if not int8_weights:
        raise CheckFailed("the quantized graph has no 8-bit weight initializers")
    grouped = onnx_grouped_conv_count(quantized)
    concats = onnx_concat_count(quantized)
    if grouped != want_grouped + bn_rewritten:
        raise CheckFailed(
            f"grouped convolutions not preserved: {want_grouped} in {model_path.name} (+{bn_rewritten} depthwise "
            f"from BatchNormalization), {grouped} after quantization"
        )
    if concats < want_concats:
        raise CheckFailed(f"concatenations not preserved: {want_concats} Concat in {model_path.name}, {concats} after quantization")

    parent_meta = dict(metadata or {})
    new_meta = {
        **parent_meta,
        "precision": "int8",
        "parent": {"file": model_path.name, "sha256": sha256_file(model_path), "metadata": bool(metadata)},
        "calibration": calib.to_metadata(),
        "recipe": {
            **recipe.to_dict(), "format": "QDQ", "excluded_nodes": excluded, "batchnorm_rewritten": bn_rewritten,
            "session_options": recipe.session_options(),
        },
    }
    if not metadata:
        new_meta["preprocessing"] = preprocessing.to_dict()
    new_meta["versions"] = library_versions()
    write_metadata(quantized, new_meta)
    staged.save(quantized)

    # Everything below runs on the staged file: what will ship.
    coverage, _optimized_ops = int8_coverage(staged.path, workdir)
    cpu = this_cpu()
    # an explicit --target says where the file will run; `auto` is this CPU
    judgement = judge_int8(new_meta["recipe"], cpu, None if explicit_target == "auto" else explicit_target)
    if judgement.note:
        notes.append(judgement.note)
    output_name = model.graph.output[0].name
    fp32_out = run_onnx(model_path, calib.holdout, batch)
    holdout = compare_outputs(fp32_out, run_onnx(staged.path, calib.holdout, batch, judgement.gate_session), output_name, tolerance)
    holdout_default = None
    if judgement.gate_session is not None and judgement.also_default:
        holdout_default = compare_outputs(fp32_out, run_onnx(staged.path, calib.holdout, batch), output_name, tolerance)
    if not holdout.passed:
        raise CheckFailed(
            f"int8 model is not accurate enough against fp32 on {calib.holdout_description}"
            + (" (run with session.x64quantprecision=1, as its target computes)" if judgement.gate_session else "")
            + ": " + "; ".join(holdout.failures)
            + "; nothing was written",
            hint="try --method entropy/percentile, more calibration data, or --exclude the sensitive nodes",
        )
    new_meta["quantization_report"] = {
        "holdout_top1_agreement": holdout.top1_agreement,
        "holdout_sqnr_db": holdout.sqnr_db,
        "gated_session_options": judgement.gate_session or {},
        "cpu": cpu.to_dict(),
        "coverage_int8": coverage.int8,
        "coverage_total": coverage.total,
    }
    if holdout_default is not None:
        new_meta["quantization_report"]["holdout_sqnr_db_default_kernels"] = holdout_default.sqnr_db
        new_meta["quantization_report"]["holdout_top1_agreement_default_kernels"] = holdout_default.top1_agreement
    write_metadata(quantized, new_meta)
    staged.save(quantized)
    fp32_bytes = artifact_bytes(model_path)
    int8_bytes = artifact_bytes(staged.path)
    return QuantizeResult(
        path=staged.final,
        parent=model_path,
        recipe=recipe,
        excluded=excluded,
        calibration=calib,
        calibration_seconds=calibration_seconds,
        fp32_bytes=fp32_bytes,
        int8_bytes=int8_bytes,
        ops=dict(ops),
        coverage=coverage,
        grouped_convs=grouped - bn_rewritten,
        concats=concats,
        batchnorm_rewritten=bn_rewritten,
        holdout=holdout,
        metadata=new_meta,
        cpu=cpu,
        judgement=judgement,
        holdout_default=holdout_default,
        notes=notes,
    )


@contextlib.contextmanager
def _quiet_root_logger():
    import logging

    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)

