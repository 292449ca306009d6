"""fp16 conversion (onnxconverter-common's float16 converter) and the checks that make it trustworthy:
really fp16, structure kept, runs in ONNX Runtime, and measured against the PyTorch fp32 model the
file came from with the fp16 gates, before anything is written. Its knobs are ConvertOptions (below)."""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from edgekit.onnxfile.artifact import (
    artifact_bytes,
    derived_output,
    resolve_output,
    sha256_file,
    stage_output,
    write_metadata,
)
from edgekit.data.images import DEFAULT_CALIBRATION_DIR, load_image_folder
from edgekit.judge.compare import OutputMetrics, Tolerance, compare_outputs, resolve_tolerance
from edgekit.core.errors import BadInput, CheckFailed, EnvironmentUnavailable, GateFailed, InvariantBroken, one_line
from edgekit.core.knobs import knob, with_knobs
from edgekit.onnxfile.graph import detect_precision, input_spec, is_quantized
from edgekit.data.preprocessing import Preprocessing
from edgekit.onnxfile import OnnxFile
from edgekit.core.provenance import library_versions
from edgekit.onnxfile.structure import onnx_concat_count, onnx_grouped_conv_count

CONVERTER = "onnxconverter-common"
# The converter clamps float32 values fp16 cannot hold. Its defaults (1e-7, 1e4) move weights fp16
# represents exactly (any |w| in [1e4, 65504]); edgekit clamps at fp16's own limits instead: values
# below the smallest subnormal become it (not zero: a variance or scale must not vanish), values
# past the largest finite become it (not inf).
FP16_MIN_POSITIVE = float(np.finfo(np.float16).smallest_subnormal)  # 5.96e-08
FP16_MAX_FINITE = float(np.finfo(np.float16).max)  # 65504
PRECISIONS = ("fp16",)


@dataclass(frozen=True)
class ConvertOptions:
    """The knobs of `convert`, with the defaults and help `edgekit convert` shows (cli/convert_cmd.py; knobs
    without help take it from the option several commands share, cli/options.py). `precision` is what
    `--fp16` asks for; the gates default to the fp16 ones."""

    precision: str = knob("fp16", "convert to fp16 (onnxconverter-common), for GPU/NPU targets")
    output: Path | None = knob(None)
    keep_io_types: bool = knob(True, "keep float32 inputs/outputs (Casts inside) or make them float16")
    images: Path | None = knob(None)
    min_top1_agreement: float | None = knob(None)
    min_sqnr: float | None = knob(None)
    model: str | None = knob(None, "your own model the file was exported from (file.py:factory, package.module:factory), "
                                   "named again: code a file names is never imported by itself")


@dataclass
class ActivationPeak:
    """The largest magnitude any float activation of the fp32 model reaches on the photos.

    ONNX Runtime's CPU provider runs an fp16 file in fp32 between casts it removes again, so no CPU
    run shows an activation overflowing fp16; a GPU or NPU computing in fp16 would turn it into inf.
    This is measured on the fp32 parent (every intermediate tensor made a graph output)."""

    max_abs: float
    tensor: str
    tensors: int  # float activations looked at
    limit: float = FP16_MAX_FINITE

    @property
    def headroom(self) -> float:
        return self.limit / self.max_abs if self.max_abs > 0 else float("inf")

    @property
    def fits(self) -> bool:
        return bool(np.isfinite(self.max_abs)) and self.max_abs <= self.limit

    def to_dict(self) -> dict:
        return {"max_abs": self.max_abs, "tensor": self.tensor, "tensors": self.tensors, "limit": self.limit,
                "headroom": self.headroom, "fits": self.fits}


def activation_peak(model, inputs: np.ndarray, batch: int | None) -> ActivationPeak:
    """Run the fp32 `model` (a ModelProto) with every float intermediate tensor as an output and take
    the largest magnitude over `inputs`."""
    import onnx
    from onnx import TensorProto, helper

    from edgekit.runtimes.runners import run_batched
    from edgekit.runtimes.ort import create_session

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    inferred = onnx.shape_inference.infer_shapes(probe)
    float_values = {v.name for v in inferred.graph.value_info if v.type.tensor_type.elem_type == TensorProto.FLOAT}
    existing = {o.name for o in probe.graph.output}
    names = [o for n in probe.graph.node for o in n.output if o in float_values and o not in existing]
    for name in names:
        probe.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    session = create_session(probe.SerializeToString(), "cpu", optimization="basic")
    order = session.output_names
    peaks = np.zeros(len(order))
    for start in range(len(inputs)):
        outs = run_batched(lambda x: session.run({session.input_name: x}), inputs[start : start + 1], batch)
        peaks = np.maximum(peaks, [float(np.max(np.abs(o))) if o.size else 0.0 for o in outs])
    worst = int(np.argmax(peaks))
    return ActivationPeak(max_abs=float(peaks[worst]), tensor=order[worst], tensors=len(order))


@dataclass
class ConvertResult:
    """What `convert` did and measured."""

    path: Path
    parent: Path
    precision: str  # fp16
    keep_io_types: bool
    tool: str
    tool_version: str
    parent_bytes: int
    bytes: int
    grouped_convs: int
    concats: int
    casts: int  # Cast nodes in the converted graph (the float32 I/O casts when keep_io_types)
    clamped: dict[str, int]  # float32 values fp16 cannot hold: {"tiny": n, "huge": n}
    reference: str  # what the file was compared with
    inputs: str
    tolerance: Tolerance
    tolerance_source: str
    comparison: OutputMetrics  # the gated one: against the PyTorch fp32 reference (or the fp32 parent)
    vs_parent: OutputMetrics  # against the fp32 parent file in ONNX Runtime: the conversion's own error
    activations: ActivationPeak | None  # None when the graph is too large to probe
    batches: list[int]
    metadata: dict
    seconds: float
    notes: list[str] = field(default_factory=list)

    @property
    def size_ratio(self) -> float:
        return self.parent_bytes / self.bytes

    @property
    def passed(self) -> bool:
        return self.comparison.passed

    def to_dict(self) -> dict:
        return {
            "path": str(self.path), "parent": str(self.parent), "precision": self.precision,
            "keep_io_types": self.keep_io_types, "tool": self.tool, "tool_version": self.tool_version,
            "parent_bytes": self.parent_bytes, "bytes": self.bytes, "size_ratio": self.size_ratio,
            "grouped_convs": self.grouped_convs, "concats": self.concats, "casts": self.casts, "clamped": self.clamped,
            "reference": self.reference, "inputs": self.inputs, "tolerance": self.tolerance.to_dict(),
            "tolerance_source": self.tolerance_source, "comparison": self.comparison.to_dict(),
            "vs_parent": self.vs_parent.to_dict(),
            "activations": self.activations.to_dict() if self.activations else None, "batches": self.batches, "passed": self.passed,
            "seconds": self.seconds, "notes": self.notes, "metadata": self.metadata,
        }


def _converter():
    try:
        from onnxconverter_common import float16
    except ImportError as exc:
        raise EnvironmentUnavailable(
            f"{CONVERTER} cannot be imported: {one_line(exc, 200)}", hint="pip install onnxconverter-common"
        ) from None
    from importlib.metadata import PackageNotFoundError, version

    try:
        tool_version = version(CONVERTER)
    except PackageNotFoundError:
        tool_version = "unknown"
    return float16, tool_version


def _float_tensors(model):
    """Every float32 tensor of the graph: initializers and Constant-node attributes (what the converter rewrites)."""
    from onnx import TensorProto

    for tensor in model.graph.initializer:
        if tensor.data_type == TensorProto.FLOAT:
            yield tensor
    for node in model.graph.node:
        for attr in node.attribute:
            if attr.t.data_type == TensorProto.FLOAT:
                yield attr.t
            for t in attr.tensors:
                if t.data_type == TensorProto.FLOAT:
                    yield t


def clamp_counts(model, min_positive: float = FP16_MIN_POSITIVE, max_finite: float = FP16_MAX_FINITE) -> dict[str, int]:
    """How many finite non-zero float32 values lie below `min_positive` or above `max_finite` in
    magnitude: the values the conversion moves rather than rounds."""
    from onnx import numpy_helper

    tiny = huge = 0
    for tensor in _float_tensors(model):
        values = np.abs(numpy_helper.to_array(tensor).astype(np.float32, copy=False))
        finite = np.isfinite(values)
        tiny += int(np.count_nonzero((values > 0) & (values < min_positive)))
        huge += int(np.count_nonzero(finite & (values > max_finite)))
    return {"tiny": tiny, "huge": huge}


def _refuse_non_fp32(model, meta: dict | None, path: Path) -> None:
    recorded = (meta or {}).get("precision")
    if is_quantized(model) or recorded == "int8":
        raise BadInput(
            f"{path} is int8 (quantized); fp16 conversion takes an fp32 file", hint="convert the fp32 file it came from"
        )
    if recorded == "fp16" or detect_precision(model) == "fp16" or input_spec(model, path).dtype == "float16":
        raise BadInput(f"{path} is already fp16", hint="convert the fp32 file it came from")
    if recorded not in (None, "fp32"):
        raise BadInput(f"{path} is {recorded}, not fp32; fp16 conversion takes an fp32 file")


def convert(
    model_path: Path,
    options: ConvertOptions | None = None,
    *,
    on_stage: Callable[[str], None] | None = None,
    **knobs,
) -> ConvertResult:
    """Convert an fp32 ONNX file to fp16 (float32 inputs/outputs kept unless `keep_io_types` is False);
    nothing is written unless every check passes. OPTIONS (ConvertOptions) with any keyword KNOBS replaced:
    `convert(path, output=o)` is `convert(path, ConvertOptions(output=o))`."""
    o = with_knobs(ConvertOptions, options, knobs)
    precision, output, keep_io_types, images = o.precision, o.output, o.keep_io_types, o.images
    min_top1_agreement, min_sqnr = o.min_top1_agreement, o.min_sqnr
    started = time.perf_counter()
    stage = on_stage or (lambda _s: None)
    model_path = Path(model_path)
    if precision not in PRECISIONS:
        raise BadInput(f"cannot convert to {precision!r}", hint=f"edgekit converts to {', '.join(PRECISIONS)} (int8: edgekit quantize)")
    tolerance, tolerance_source = resolve_tolerance("fp16", min_top1_agreement=min_top1_agreement, min_sqnr=min_sqnr)
    float16, tool_version = _converter()
    stage("loading the file")
    source = OnnxFile.open(model_path)
    model, meta, spec = source.proto, source.metadata, source.spec
    _refuse_non_fp32(model, meta, model_path)
    preprocessing = source.preprocessing()
    final = resolve_output(output, derived_output(model_path, "fp16"))
    if final.resolve() == model_path.resolve():
        raise BadInput(f"output {final} is the input file itself", hint="choose another -o")
    staged = stage_output(final)
    try:
        result = _convert_staged(
            model_path, model, meta, spec, preprocessing, keep_io_types, images, tolerance, tolerance_source,
            float16, tool_version, staged, stage, o.model,
        )
        staged.commit()
    except BaseException:
        staged.discard()
        raise
    result.seconds = time.perf_counter() - started
    return result


def _convert_staged(
    model_path: Path, model, meta, spec, preprocessing: Preprocessing, keep_io_types: bool, images: Path | None,
    tolerance: Tolerance, tolerance_source: str, float16, tool_version: str, staged, stage, model_name: str | None = None,
) -> ConvertResult:
    """The steps of one conversion, in order: the clamp counts, the photos and the reference (a bad folder or a
    missing weights file fails before any work), the activation range, convert, the checks, the metadata, save,
    then the ONNX checker and the gates on the saved bytes. Each step raises (nothing is written) or hands on."""
    notes: list[str] = []
    want_grouped, want_concats = onnx_grouped_conv_count(model), onnx_concat_count(model)
    output_name = model.graph.output[0].name
    clamped = clamp_counts(model)
    notes += _clamp_notes(clamped)
    stage("loading the photos")
    photos, inputs_description = _load_photos(images, preprocessing, spec, notes)
    ref, reference = _open_reference(model_path, model, meta, model_name, notes)
    stage("activation range")
    peak = _check_activations(model, photos.tensors, spec, model_path, inputs_description, notes)
    stage("converting")
    converted = _converted(float16, model, keep_io_types, model_path)
    del model
    stage("checks")
    grouped, concats, casts = _check_converted(converted, want_grouped, want_concats, model_path)
    new_meta = _fp16_metadata(meta, model_path, preprocessing, tool_version, keep_io_types, clamped)
    write_metadata(converted, new_meta)
    staged.save(converted)
    del converted
    batches, comparison, vs_parent = _check_saved(staged.path, model_path, photos.tensors, ref, reference,
                                                  inputs_description, output_name, tolerance, stage)
    return ConvertResult(
        path=staged.final, parent=model_path, precision="fp16", keep_io_types=keep_io_types, tool=CONVERTER,
        tool_version=tool_version, parent_bytes=artifact_bytes(model_path), bytes=artifact_bytes(staged.path),
        grouped_convs=grouped, concats=concats, casts=casts, clamped=clamped, reference=reference,
        inputs=inputs_description, tolerance=tolerance, tolerance_source=tolerance_source, comparison=comparison,
        vs_parent=vs_parent, activations=peak, batches=batches, metadata=new_meta, seconds=0.0, notes=notes,
    )


def _clamp_notes(clamped: dict[str, int]) -> list[str]:
    """What the conversion moves rather than rounds, said once in numbers."""
    notes = []
    if clamped["huge"]:
        notes.append(
            f"{clamped['huge']} weight value(s) exceed fp16's largest finite value and were clamped to "
            f"{FP16_MAX_FINITE:g}"
        )
    if clamped["tiny"]:
        notes.append(
            f"{clamped['tiny']} non-zero weight value(s) are below fp16's smallest subnormal and were raised "
            f"to {FP16_MIN_POSITIVE:.3g} (not flushed to zero)"
        )
    return notes


def _load_photos(images: Path | None, preprocessing: Preprocessing, spec, notes: list[str]):
    """The photos through the file's preprocessing, checked against its input: (the photos, what they are)."""
    folder = Path(images) if images is not None else DEFAULT_CALIBRATION_DIR
    photos = load_image_folder(folder, preprocessing)
    if tuple(photos.tensors.shape[1:]) != tuple(spec.chw):
        raise BadInput(
            f"the model's preprocessing makes {tuple(photos.tensors.shape[1:])} tensors, but its input expects "
            f"(N, {', '.join(map(str, spec.chw))})",
            hint="its metadata disagrees with its graph; re-export it",
        )
    if photos.corrupt:
        notes.append(f"skipped {len(photos.corrupt)} unreadable image(s) in {folder}")
    return photos, f"{len(photos)} images from {folder}"


def _open_reference(model_path: Path, model, meta, model_name: str | None, notes: list[str]):
    """The reference verify uses: PyTorch rebuilt from the metadata (a user's module only when named again with
    --model), or, for an imported file, the original it was normalised from, in ONNX Runtime; none for a file
    without metadata (its fp32 self is the reference). Returns (the reference or None, what it is)."""
    if meta:
        from edgekit.reference.runner import open_reference

        ref = open_reference(model_path, model, meta, model=model_name)
        return ref, ref.describe()
    notes.append(f"{model_path.name} has no edgekit metadata: compared with its fp32 self in ONNX Runtime, not PyTorch")
    return None, "the fp32 parent file in ONNX Runtime (it carries no edgekit metadata, so no PyTorch reference)"


def _check_activations(model, photos: np.ndarray, spec, model_path: Path, inputs_description: str,
                       notes: list[str]) -> ActivationPeak | None:
    """No activation of the fp32 model may pass fp16's largest finite value on the photos."""
    try:
        peak = activation_peak(model, photos, spec.batch)
    except ValueError:  # protobuf cannot serialise past 2 GiB: no probe copy of such a graph
        notes.append("the graph is too large to probe its activations; fp16 overflow of activations is not checked")
        return None
    if not peak.fits:
        raise GateFailed(
            f"activation {peak.tensor!r} of {model_path.name} reaches {peak.max_abs:.4g} on {inputs_description}, "
            f"past fp16's largest finite value {FP16_MAX_FINITE:g}: an fp16 device would compute inf there; "
            "nothing was written",
            hint="keep this model in fp32 for this target, or use int8 (edgekit quantize)",
        )
    return peak


def _converted(float16, model, keep_io_types: bool, model_path: Path):
    """The converter's fp16 graph, clamped at fp16's own limits."""
    with warnings.catch_warnings():
        # the converter warns once per clamped tensor; clamp_counts says it once, in numbers
        warnings.simplefilter("ignore")
        try:
            return float16.convert_float_to_float16(
                model, min_positive_val=FP16_MIN_POSITIVE, max_finite_val=FP16_MAX_FINITE, keep_io_types=keep_io_types,
            )
        except Exception as exc:
            raise CheckFailed(f"{CONVERTER} failed to convert {model_path}: {one_line(exc, 300)}") from exc


def _check_converted(converted, want_grouped: int, want_concats: int, model_path: Path) -> tuple[int, int, int]:
    """Really fp16, with the parent's grouped convolutions and concatenations: (grouped convs, concats, casts)."""
    if detect_precision(converted) != "fp16":
        raise InvariantBroken(f"the converted graph has no float16 weights: {CONVERTER} did not convert {model_path.name}")
    grouped = onnx_grouped_conv_count(converted)
    concats = onnx_concat_count(converted)
    if grouped != want_grouped:
        raise InvariantBroken(f"grouped convolutions not preserved: {want_grouped} in {model_path.name}, {grouped} in fp16")
    if concats != want_concats:
        raise InvariantBroken(f"concatenations not preserved: {want_concats} Concat in {model_path.name}, {concats} in fp16")
    return grouped, concats, sum(1 for n in converted.graph.node if n.op_type == "Cast")


def _fp16_metadata(meta, model_path: Path, preprocessing: Preprocessing, tool_version: str, keep_io_types: bool,
                   clamped: dict[str, int]) -> dict:
    """The parent's metadata, now fp16, with the parent (sha256) and the conversion recorded."""
    new_meta = {
        **dict(meta or {}),
        "precision": "fp16",
        "parent": {"file": model_path.name, "path": str(model_path.resolve()), "sha256": sha256_file(model_path),
                   "metadata": bool(meta)},
        "conversion": {
            "tool": CONVERTER, "version": tool_version, "keep_io_types": keep_io_types,
            "min_positive_val": FP16_MIN_POSITIVE, "max_finite_val": FP16_MAX_FINITE, "clamped": clamped,
        },
    }
    if not meta:
        new_meta["preprocessing"] = preprocessing.to_dict()
    new_meta["versions"] = {**library_versions(), CONVERTER: tool_version}
    return new_meta


def _check_saved(path: Path, model_path: Path, photos: np.ndarray, ref, reference: str, inputs_description: str,
                 output_name: str, tolerance: Tolerance, stage):
    """The checks on the staged file, the bytes that will ship: the ONNX checker, ONNX Runtime loads it, and at every
    batch size it takes the fp16 gates against the reference. Returns (the batch sizes, the worst batch's comparison,
    the comparison with the fp32 parent file)."""
    import onnx

    from edgekit.runtimes.runners import batch_sizes, run_onnx, run_session
    from edgekit.runtimes.ort import create_session

    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as exc:
        raise CheckFailed(f"the fp16 file fails the ONNX checker: {one_line(exc, 300)}") from exc
    try:
        session = create_session(path, "cpu")
    except BadInput as exc:
        raise CheckFailed(f"ONNX Runtime cannot load the fp16 file: {exc.message}") from None
    batches = batch_sizes(session)
    stage("comparing")
    parent_out = run_onnx(model_path, photos, batches[0])
    if ref is not None:
        stage(f"the reference ({ref.short})")
    expected = ref.run(photos) if ref is not None else parent_out
    if not np.isfinite(expected).all():
        raise CheckFailed("the fp32 reference itself produced NaN/Inf on the photos; nothing to compare against")
    comparison = vs_parent = None
    for batch in batches:
        out = run_session(session, photos, batch)[0]
        metrics = compare_outputs(expected, out, output_name, tolerance)
        if comparison is None or not metrics.passed or metrics.sqnr_db < comparison.sqnr_db:
            comparison = metrics  # the worst batch size is the one reported
        if vs_parent is None:
            vs_parent = compare_outputs(parent_out, out, output_name, tolerance)
        if not metrics.passed:
            raise GateFailed(
                f"the fp16 file does not pass the fp16 gates against {reference.split(' (')[0]} on {inputs_description}"
                f" (batch {batch}): " + "; ".join(metrics.failures) + "; nothing was written",
                hint="keep this model in fp32 for this target, or use int8 (edgekit quantize)",
            )
    return batches, comparison, vs_parent
