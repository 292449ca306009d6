"""One static int8 quantization with ONNX Runtime (QDQ) and the checks its output must pass.

Called once for a plain quantize and once per trial by the accuracy-budget fallback.
"""

from __future__ import annotations

import contextlib
import io
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from edgekit.core.errors import BadInput, CheckFailed, InvariantBroken, one_line
from edgekit.runtimes.runners import padded_batches
from edgekit.onnxfile.structure import onnx_concat_count, onnx_grouped_conv_count, op_counts
from edgekit.judge.targets import Recipe

CALIB_PERCENTILE = 99.999  # the percentile calibrator's cut (ORT's CalibPercentile)

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


def quantize_once(
    pre: Path, out: Path, input_name: str, tensors: np.ndarray, batch: int | None, recipe: Recipe,
    excluded: list[str], on_progress: Callable[[int, int], None] | None = None, calibration_cache: Path | None = None,
) -> None:
    """quantize_static on a pre-processed fp32 file, QDQ, with the recipe; `excluded` nodes stay float.

    `calibration_cache`: ORT's own calibration cache (a JSON file of activation ranges). Written by the first call,
    read by the next ones instead of calibrating again. The ranges depend only on the fp32 graph, the calibration
    tensors and the method (the calibrator sees every activation, whatever is excluded), so one cache serves one
    `pre` file, one calibration set and one recipe's method: the fallback's trials."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    types = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    extra = {"ActivationSymmetric": recipe.activation_symmetric, "WeightSymmetric": True}
    if recipe.method == "percentile":
        extra["CalibPercentile"] = CALIB_PERCENTILE
    reader = _Reader(input_name, tensors, batch, on_progress)
    try:
        # ORT's calibrators print progress to stdout; only the cli package prints.
        # ...and warn through the root logger about every BatchNormalization they cannot quantize per channel.
        with contextlib.redirect_stdout(io.StringIO()), _quiet_root_logger(), tempfile.TemporaryDirectory(
                prefix="edgekit-calibrate-") as tmp:
            if recipe.concat_shared_range:  # the ranges first, to give each Concat's activations one range
                calibration_cache = calibration_cache or Path(tmp) / "ranges.json"
                if not calibration_cache.is_file():
                    _calibrate(pre, reader, methods[recipe.method], extra, calibration_cache, Path(tmp))
                overrides = concat_range_overrides(pre, calibration_cache)
                if overrides:
                    extra["TensorQuantOverrides"] = overrides
            quantize_static(
                str(pre), str(out), reader,
                quant_format=QuantFormat.QDQ,
                per_channel=recipe.per_channel,
                reduce_range=recipe.reduce_range,
                activation_type=types[recipe.activation_type],
                weight_type=types[recipe.weight_type],
                nodes_to_exclude=excluded or None,
                calibrate_method=methods[recipe.method],
                extra_options=extra,
                calibration_cache_path=str(calibration_cache) if calibration_cache is not None else None,
            )
    except Exception as exc:
        raise CheckFailed(f"quantize_static failed on {pre.name}: {one_line(exc, 200)}") from exc


def _calibrate(pre: Path, reader: _Reader, method, extra: dict, cache: Path, tmp: Path) -> None:
    """The activation ranges of PRE into CACHE, as quantize_static computes them when its cache is missing: ORT's own
    calibrator over the op types ORT quantizes, with the calibrator options of EXTRA, saved in ORT's cache format."""
    from onnxruntime.quantization.calibrate import TensorsData, create_calibrator, save_tensors_data
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    options = {key: extra[name] for name, key in _CALIBRATOR_OPTIONS if name in extra}
    calibrator = create_calibrator(pre, list(set(QLinearOpsRegistry) | set(QDQRegistry)),
                                   augmented_model_path=str(tmp / "augmented_model.onnx"), calibrate_method=method,
                                   extra_options=options)
    calibrator.collect_data(reader)
    ranges = calibrator.compute_data()
    del calibrator
    if not isinstance(ranges, TensorsData):
        raise TypeError(f"ORT's calibrator gave {type(ranges).__name__}, not TensorsData")
    save_tensors_data(ranges, cache)


# quantize_static's extra options that it hands to its calibrator, and their names there
_CALIBRATOR_OPTIONS = (("CalibTensorRangeSymmetric", "symmetric"), ("CalibMovingAverage", "moving_average"),
                       ("CalibMovingAverageConstant", "averaging_constant"),
                       ("CalibMaxIntermediateOutputs", "max_intermediate_outputs"), ("CalibPercentile", "percentile"))


def concat_range_overrides(pre: Path, cache: Path) -> dict[str, list[dict]]:
    """ORT TensorQuantOverrides that give every activation of a Concat (its inputs and its output, and through them
    every Concat they also feed or come from: DenseNet's whole dense block) one range, the union of their
    calibrated ranges. ORT's QLinearConcat then copies its inputs instead of requantizing each (NNCF's and
    OpenVINO's unified concat scales); {} when the graph has no Concat of activations. An input written by an op
    whose output ORT quantizes with its own input's range (MaxPool, Reshape, ...: DenseNet's stem pool) keeps that
    range, and its Concat requantizes that one input."""
    from onnxruntime.quantization.calibrate import load_tensors_data

    from edgekit.layer_error.groups import find_root
    from edgekit.onnxfile.artifact import load_work_file

    model = load_work_file(pre, external_data=False)
    constant = {t.name for t in model.graph.initializer}
    parent: dict[str, str] = {}
    root = lambda name: find_root(parent, name)  # noqa: E731

    for node in model.graph.node:
        if node.op_type == "Concat":
            for name in [*node.input, *node.output]:
                if name and name not in constant:
                    parent[root(name)] = root(node.output[0])
    if not parent:
        return {}
    ranges = load_tensors_data(cache)
    members: dict[str, list[str]] = {}
    for name in parent:  # (an entropy or percentile range is a lowest/highest pair too)
        if name in ranges.data and hasattr(ranges.data[name], "highest"):
            members.setdefault(root(name), []).append(name)
    overrides = {}
    for names in members.values():
        low = min(float(np.min(ranges.data[n].range_value[0])) for n in names)
        high = max(float(np.max(ranges.data[n].range_value[1])) for n in names)
        for name in names:
            overrides[name] = [{"rmin": np.array(low, dtype=np.float32), "rmax": np.array(high, dtype=np.float32)}]
    return overrides


def int8_weight_count(model_or_path) -> int:
    """8-bit weight initializers (rank >= 2) of an ONNX model or file."""
    from onnx import TensorProto

    from edgekit.onnxfile.artifact import load_work_file

    model = load_work_file(model_or_path) if isinstance(model_or_path, Path) else model_or_path
    return sum(1 for t in model.graph.initializer if t.data_type in (TensorProto.INT8, TensorProto.UINT8) and len(t.dims) >= 2)


def check_quantized(quantized, parent_name: str, want_grouped: int, want_concats: int, bn_rewritten: int) -> tuple[int, int]:
    """Really quantized, grouped convs and concats kept; returns (grouped convs, concats) of the int8 graph."""
    ops = op_counts(quantized)
    if not (ops.get("QuantizeLinear") and ops.get("DequantizeLinear")):
        raise InvariantBroken("the output of quantize_static has no QuantizeLinear/DequantizeLinear nodes: it is not quantized")
    if not int8_weight_count(quantized):
        raise InvariantBroken("the quantized graph has no 8-bit weight initializers")
    grouped = onnx_grouped_conv_count(quantized)
    concats = onnx_concat_count(quantized)
    if grouped != want_grouped + bn_rewritten:
        raise InvariantBroken(
            f"grouped convolutions not preserved: {want_grouped} in {parent_name} (+{bn_rewritten} depthwise "
            f"from BatchNormalization), {grouped} after quantization"
        )
    if concats < want_concats:
        raise InvariantBroken(f"concatenations not preserved: {want_concats} Concat in {parent_name}, {concats} after quantization")
    return grouped, concats


def int8_coverage(path: Path, workdir: Path, session_config: dict[str, str] | None = None) -> tuple[Coverage, dict[str, int]]:
    """Run ORT's own optimisation (as a session with the file's own session options does) and count
    what executes in int8."""
    from edgekit.runtimes.ort import create_session

    optimized = workdir / "ort-optimized.onnx"
    create_session(path, "cpu", optimized_model_path=optimized, session_config=session_config or None)
    from edgekit.onnxfile.artifact import load_work_file

    ops = Counter(n.op_type for n in load_work_file(optimized, external_data=False).graph.node)
    int8 = {op: sum(ops[k] for k in kinds) for op, kinds in INT8_KERNELS.items()}
    total = {op: int8[op] + sum(ops[k] for k in FLOAT_KERNELS[op]) for op in INT8_KERNELS}
    return Coverage(int8=int8, total=total), dict(ops)


@contextlib.contextmanager
def _quiet_root_logger():
    import logging

    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)


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


def derived_exclusions(pre: Path, pre_model, parent, excluded: list[str]) -> tuple[list[str], list[str]]:
    """--exclude names as the graph actually quantized knows them: ORT's pre-processing inlines some ops (a HardSwish
    as HardSigmoid and Mul, unnamed or under new `_inlfunc_...` names), so a parent node's name may match nothing in
    PRE, and nodes_to_exclude would silently exclude nothing. Such a name maps to the nodes derived from it (those
    between its inputs and its outputs that the parent does not have), named after it where they have no name (PRE
    is saved); returns (the names to exclude, a note for each mapped name). Nothing derived is left: BadInput."""
    names = {n.name for n in pre_model.graph.node}
    missing = [e for e in excluded if e not in names]
    if not missing:
        return excluded, []
    parent_nodes = {n.name: n for n in parent.graph.node if n.name}
    producer = {o: n for n in pre_model.graph.node for o in n.output}
    resolved, notes, renamed = [e for e in excluded if e in names], [], False
    for item in missing:
        original = parent_nodes.get(item)
        found: list = []
        if original is not None:
            stops, seen = set(original.input), set()
            frontier = [o for o in original.output if o in producer]
            while frontier and len(found) <= 64:
                node = producer.get(frontier.pop())
                if node is None or id(node) in seen or (node.name and node.name in parent_nodes):
                    continue
                seen.add(id(node))
                found.append(node)
                frontier.extend(i for i in node.input if i not in stops and i in producer)
        if not found or len(found) > 64:
            raise BadInput(
                f"--exclude {item!r} names a node ONNX Runtime's pre-processing removed or fused: nothing derived "
                "from it is left in the graph that gets quantized, so excluding it would do nothing",
                hint="exclude the nodes next to it, or its op type",
            )
        derived = []
        for k, node in enumerate(reversed(found)):
            if not node.name:
                node.name = f"{item}/inlined_{k}"
                renamed = True
            derived.append(node.name)
        resolved.extend(derived)
        notes.append(f"--exclude {item}: ONNX Runtime's pre-processing replaced this {original.op_type} by "
                     f"{', '.join(n.op_type for n in reversed(found))} ({', '.join(derived)}); those stay float")
    if renamed:
        import onnx

        onnx.save(pre_model, str(pre))
    return sorted(set(resolved)), notes
