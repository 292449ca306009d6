"""What an ONNX file is, read from its graph: its input (name, batch, CHW, dtype) and its precision.

edgekit handles single-input float image models (N, C, H, W), square or not; `input_spec` is the one place that
reads the input's geometry, and says so clearly when a graph is something else.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edgekit.core.errors import BadInput

PRECISIONS = ("fp32", "fp16", "int8")
# Ops that only a quantized graph has (QDQ or QOperator form, static or dynamic).
QUANTIZED_OPS = frozenset({
    "QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger",
    "QLinearConcat", "QGemm", "QLinearAdd", "DynamicQuantizeLinear",
})
_ELEM_TYPES = {1: "float32", 10: "float16", 11: "float64", 7: "int64", 6: "int32", 2: "uint8", 3: "int8"}


@dataclass(frozen=True)
class InputSpec:
    """The model's image input."""

    name: str
    batch: int | None  # None: dynamic
    chw: tuple[int | None, int | None, int | None]  # None where a dimension is dynamic
    dtype: str  # float32 | float16 | ...

    @property
    def spatial(self) -> int | None:
        """H (= W) when static and square, else None (a non-square input: see `hw`)."""
        c, h, w = self.chw
        return h if h is not None and h == w else None

    @property
    def hw(self) -> tuple[int, int] | None:
        """(H, W) when both are static (square or not), else None."""
        c, h, w = self.chw
        return (h, w) if h is not None and w is not None else None


def _dims(value_info) -> list[int | None]:
    return [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
            for d in value_info.type.tensor_type.shape.dim]


def graph_dims(value_info) -> list[int | str | None]:
    """A graph value's dims: an int when fixed, its name (or None) when dynamic."""
    return [
        d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
        for d in value_info.type.tensor_type.shape.dim
    ]


def graph_inputs(model) -> list:
    """The graph inputs that are not initializers (old exporters list weights as inputs too)."""
    weights = {t.name for t in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in weights]


def input_spec(model, where: Path | str = "the model") -> InputSpec:
    """The single image input of the graph; a graph of another signature is BadInput (exit 2)."""
    inputs = graph_inputs(model)
    if len(inputs) != 1 or not model.graph.output:
        raise BadInput(
            f"{where} has {len(inputs)} input(s) and {len(model.graph.output)} output(s); edgekit handles "
            "classifiers with one image input and at least one output"
        )
    value = inputs[0]
    elem = value.type.tensor_type.elem_type
    dtype = _ELEM_TYPES.get(elem, f"type {elem}")
    dims = _dims(value)
    if len(dims) != 4 or dtype not in ("float32", "float16"):
        raise BadInput(
            f"{where}: input {value.name!r} is {dtype} of rank {len(dims)}; edgekit handles image classifiers "
            "with one float32 (N, C, H, W) input"
        )
    return InputSpec(value.name, dims[0], (dims[1], dims[2], dims[3]), dtype)


def static_batch(model) -> int | None:
    """The fixed batch size of the model's first input, or None when that axis is dynamic."""
    return _dims(graph_inputs(model)[0])[0]


def output_classes(model) -> int | None:
    """The static class count of a (N, classes) first output, where the graph says it."""
    dims = _dims(model.graph.output[0])
    return dims[1] if len(dims) == 2 else None


def is_quantized(model) -> bool:
    """Quantization ops in the graph, or 8-bit weight initializers."""
    from onnx import TensorProto

    if any(n.op_type in QUANTIZED_OPS for n in model.graph.node):
        return True
    return any(t.data_type in (TensorProto.INT8, TensorProto.UINT8) for t in model.graph.initializer)


def detect_precision(model) -> str:
    """int8 when the graph quantizes, fp16 when its float weights are half, else fp32."""
    if is_quantized(model):
        return "int8"
    from onnx import TensorProto

    if any(t.data_type == TensorProto.FLOAT16 for t in model.graph.initializer):
        return "fp16"
    return "fp32"


def precision_of(model, meta: dict | None) -> str:
    """The precision the metadata records, else what the graph shows."""
    if meta and "precision" in meta:
        return str(meta["precision"])
    return detect_precision(model)
