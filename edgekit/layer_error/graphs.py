"""How an int8 QDQ graph maps onto its fp32 parent: which fp32 node each quantized tensor belongs to, its depth,
its consumers, and the activation bounds a node implies (for the per-layer error, layer_error/measure.py)."""

from __future__ import annotations

import math


class _Graphs:
    """What the int8 (QDQ) graph and the fp32 graph say about tensors and nodes."""

    def __init__(self, fp32_model, int8_model):
        from onnxruntime.quantization.quant_utils import QUANT_INPUT_SUFFIX

        self.initializers = {t.name for t in int8_model.graph.initializer}
        self.graph_inputs = {i.name for i in int8_model.graph.input}
        self.producer = {o: n for n in int8_model.graph.node for o in n.output}
        self.consumers: dict[str, list] = {}
        for node in int8_model.graph.node:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)
        self.fp32_index = {n.name: i for i, n in enumerate(fp32_model.graph.node) if n.name}
        self.fp32_producer = {o: (i, n) for i, n in enumerate(fp32_model.graph.node) for o in n.output}
        # activation name (qdq_loss_debug's naming) -> the tensor its QuantizeLinear reads, and the
        # DequantizeLinear output(s) carrying it
        self.pre: dict[str, str] = {}
        self.dequantized: dict[str, list[str]] = {}
        self.canonical: dict[str, str] = {}  # DQ output -> activation name
        for node in int8_model.graph.node:
            if node.op_type != "QuantizeLinear":
                continue
            name = node.input[0]
            if name.endswith(QUANT_INPUT_SUFFIX):
                name = name[: -len(QUANT_INPUT_SUFFIX)]
            self.pre.setdefault(name, node.input[0])
            for dq in self.consumers.get(node.output[0], []):
                if dq.op_type == "DequantizeLinear":
                    self.dequantized.setdefault(name, []).append(dq.output[0])
                    self.canonical[dq.output[0]] = name
        # activations whose fp32 Relu/Clip the quantizer folded into the Q range: the producer writes the
        # value before the activation function, and the QuantizeLinear clamp applies it
        self.folded: dict[str, tuple[float, float]] = {}
        fp32_inits = {t.name: t for t in fp32_model.graph.initializer}
        for name in self.pre:
            fp32_node = self.fp32_producer.get(name, (None, None))[1]
            node = self.compute_node(name)
            if fp32_node is None or node is None or node.op_type == fp32_node.op_type:
                continue
            bounds = _activation_bounds(fp32_node, fp32_inits)
            if bounds is not None:
                self.folded[name] = bounds

    def compute_node(self, activation: str):
        """The node that computes an activation in the int8 graph (None for a graph input)."""
        tensor = self.pre.get(activation, activation)
        if tensor in self.graph_inputs:
            return None
        return self.producer.get(tensor)

    def fp32_name(self, node, activation: str) -> tuple[str | None, int]:
        """(fp32 node name usable in nodes_to_exclude, its topological index in the fp32 graph)."""
        if node is not None and node.name in self.fp32_index:
            return node.name, self.fp32_index[node.name]
        if activation not in self.fp32_producer:
            return None, -1
        # renamed in the int8 graph (edgekit rewrites DenseNet's BatchNormalization as a Conv): the fp32
        # node writing the same tensor, stepping back over a Relu/Clip the quantizer folded into it
        index, fp32_node = self.fp32_producer[activation]
        if activation in self.folded and fp32_node.input and fp32_node.input[0] in self.fp32_producer:
            index, fp32_node = self.fp32_producer[fp32_node.input[0]]
        return (fp32_node.name or None), index

    def quantized_inputs(self, node, matched: set[str]) -> list[str]:
        """The quantized activations a node reads, looking through float-only nodes in between."""
        found: list[str] = []
        seen: set[str] = set()

        def visit(tensor: str) -> None:
            if tensor in seen or not tensor:
                return
            seen.add(tensor)
            if tensor in self.canonical:
                name = self.canonical[tensor]
                if name in matched:
                    found.append(name)
                    return
                tensor = self.pre.get(name, name)  # not in the fp32 file: look further up
            if tensor in self.initializers or tensor in self.graph_inputs:
                return  # constants and an unquantized graph input carry no int8 error
            producer = self.producer.get(tensor)
            if producer is None:
                return
            if producer.op_type == "DequantizeLinear":  # of an initializer: a weight, part of the node's own error
                return
            for upstream in producer.input:
                visit(upstream)

        for tensor in node.input:
            visit(tensor)
        return found


def _activation_bounds(node, initializers) -> tuple[float, float] | None:
    """(low, high) a Relu / Clip applies, or None for any other op or a Clip with non-constant bounds."""
    from onnx import numpy_helper

    if node.op_type == "Relu":
        return 0.0, math.inf
    if node.op_type != "Clip":
        return None
    low, high = -math.inf, math.inf
    for attr in node.attribute:  # opset < 11
        if attr.name == "min":
            low = attr.f
        elif attr.name == "max":
            high = attr.f
    for index, name in enumerate(node.input[1:3], start=1):
        if not name:
            continue
        if name not in initializers:
            return None
        value = float(numpy_helper.to_array(initializers[name]).reshape(-1)[0])
        low, high = (value, high) if index == 1 else (low, value)
    return low, high
