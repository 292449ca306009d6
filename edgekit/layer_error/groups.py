"""QDQ groups of an int8 QDQ file, and reverting some of them to fp32 inside the quantized graph.

A group is a quantizer (the QuantizeLinear/DequantizeLinear pair on an activation) and every op its DequantizeLinear
feeds, merged with every other quantizer those ops read: a residual Add or a Concat goes back to float together with
all of its quantized inputs (NNCF's quantizer groups). The DequantizeLinear of a weight or bias belongs to the op it
feeds. Groups are numbered in the graph's topological order (the first QuantizeLinear of each).

`revert(int8, fp32_parent, groups)` takes those groups back to float in the quantized graph: their Q/DQ pairs are
removed (a Relu/Clip the quantizer folded into its range is put back as a node), and the ops read their original
float weights from the fp32 parent by initializer name (the quantized initializer `W_quantized` was `W`). Nothing is
calibrated or quantized again. A weight that the parent does not hold (quantize's pre-processing folded or rewrote
it: a BatchNormalization as a depthwise Conv) stays as its dequantized value, and the group says so in `notes`.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

from edgekit.core.errors import BadInput
from edgekit.layer_error.graphs import _Graphs

QDQ = ("QuantizeLinear", "DequantizeLinear")
QUANTIZED_SUFFIX = "_quantized"
DEPTHWISE_SUFFIX = "_as_depthwise"  # quantize/rewrites.py names a BatchNormalization rewritten as a Conv so


@dataclass
class Group:
    """One QDQ group: the activations it quantizes, the ops they feed, and their names in the fp32 parent."""

    index: int
    activations: list[str]  # tensors a QuantizeLinear of the group reads
    nodes: list[str]  # the int8 graph's ops fed by the group's DequantizeLinear nodes
    writers: list[str]  # int8 graph nodes writing the activations (a graph input writes none)
    fp32_nodes: list[str] = field(default_factory=list)  # the ops' names as quantize's --exclude knows them
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"index": self.index, "activations": self.activations, "nodes": self.nodes, "writers": self.writers,
                "exclude": self.fp32_nodes, "notes": self.notes}

    def describe(self) -> str:
        ops = ", ".join(self.fp32_nodes or self.nodes)
        return f"group {self.index}: {ops} (quantizing {', '.join(self.activations)})"


def _find(parent: dict, x):
    while parent[x] != x:
        parent[x] = parent[parent[x]]
        x = parent[x]
    return x


def qdq_groups(int8_model, fp32_model) -> list[Group]:
    """The QDQ groups of an int8 QDQ model, topologically ordered. BadInput when it has no activation quantizer."""
    graphs = _Graphs(fp32_model, int8_model)
    nodes = list(int8_model.graph.node)
    position = {id(n): i for i, n in enumerate(nodes)}
    inits = graphs.initializers
    quantizers = [n for n in nodes if n.op_type == "QuantizeLinear" and n.input[0] not in inits]
    if not quantizers:
        raise BadInput("the file has no QuantizeLinear on an activation: not an int8 QDQ file",
                       hint="debug takes a QDQ file written by edgekit quantize (or quantize_static)")
    parent: dict = {}
    members: dict = {}
    for q in quantizers:
        key = ("q", position[id(q)])
        parent.setdefault(key, key)
        for dq in graphs.consumers.get(q.output[0], []):
            if dq.op_type != "DequantizeLinear":
                continue
            for op in graphs.consumers.get(dq.output[0], []):
                if op.op_type in QDQ:
                    continue
                okey = ("o", position[id(op)])
                parent.setdefault(okey, okey)
                parent[_find(parent, okey)] = _find(parent, key)
    for key in parent:
        members.setdefault(_find(parent, key), []).append(key)
    fp32_names = {n.name for n in fp32_model.graph.node if n.name}
    groups = []
    for keys in sorted(members.values(), key=lambda ks: min(k[1] for k in ks)):
        qs = [nodes[i] for kind, i in sorted(keys, key=lambda k: k[1]) if kind == "q"]
        ops = [nodes[i] for kind, i in sorted(keys, key=lambda k: k[1]) if kind == "o"]
        activations = list(dict.fromkeys(q.input[0] for q in qs))
        writers = [graphs.producer[a].name for a in activations if a in graphs.producer]
        group = Group(len(groups), activations, [op.name or op.output[0] for op in ops], writers)
        for op in ops:
            name = _fp32_name(op, graphs, fp32_names)
            if name is None:
                group.notes.append(f"{op.name or op.output[0]} ({op.op_type}) has no node in the fp32 parent")
            elif name not in group.fp32_nodes:
                group.fp32_nodes.append(name)
        groups.append(group)
    return groups


def _fp32_name(op, graphs: _Graphs, fp32_names: set[str]) -> str | None:
    """The name quantize's --exclude takes for an int8 op: its own, the node a rewrite replaced, or the fp32 node
    writing the same tensor."""
    if op.name in fp32_names:
        return op.name
    if op.name.endswith(DEPTHWISE_SUFFIX) and op.name[: -len(DEPTHWISE_SUFFIX)] in fp32_names:
        return op.name[: -len(DEPTHWISE_SUFFIX)]  # quantize maps --exclude NAME to NAME_as_depthwise
    for out in op.output:
        if out in graphs.fp32_producer and graphs.fp32_producer[out][1].name:
            return graphs.fp32_producer[out][1].name
    return None


def revert(int8_model, fp32_model, groups: list[Group]):
    """A copy of `int8_model` with `groups` back in fp32 (see the module docstring); checked with onnx.checker.
    Each group's `notes` gains a line for a weight it could not restore from the parent."""
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    model = copy.deepcopy(int8_model)
    graph = model.graph
    graphs = _Graphs(fp32_model, model)
    fp32_inits = {t.name: t for t in fp32_model.graph.initializer}
    inits = {t.name: t for t in graph.initializer}
    outputs = {o.name for o in graph.output}
    wanted_acts = {a for g in groups for a in g.activations}
    wanted_ops = {n for g in groups for n in g.nodes}
    note_of = {n: g for g in groups for n in g.nodes}
    renamed: dict[str, str] = {}  # a DequantizeLinear output -> the float tensor that replaces it
    dropped: set[int] = set()
    added = []
    taken = {o for n in graph.node for o in n.output} | set(inits) | {i.name for i in graph.input}

    def fresh(name: str) -> str:
        base, k = name, 0
        while name in taken:
            k += 1
            name = f"{base}_fp32" if k == 1 else f"{base}_fp32_{k}"
        taken.add(name)
        return name

    for q in graph.node:
        if q.op_type != "QuantizeLinear" or q.input[0] not in wanted_acts:
            continue
        act = q.input[0]
        source = act
        bounds = graphs.folded.get(act) or graphs.folded.get(_activation_name(act))
        if bounds is not None:  # the quantizer's range applied the Relu/Clip: put it back as a node
            low, high = bounds
            source = fresh(act + "_relu" if (low, high) == (0.0, float("inf")) else act + "_clip")
            if (low, high) == (0.0, float("inf")):
                added.append((q, helper.make_node("Relu", [act], [source], name=source)))
            else:
                names = []
                for label, value in (("min", low), ("max", high)):
                    if value in (float("inf"), float("-inf")):
                        names.append("")
                        continue
                    init = numpy_helper.from_array(np.array(value, dtype=np.float32), fresh(f"{source}_{label}"))
                    graph.initializer.append(init)
                    names.append(init.name)
                while names and not names[-1]:
                    names.pop()
                added.append((q, helper.make_node("Clip", [act, *names], [source], name=source)))
        for dq in graphs.consumers.get(q.output[0], []):
            if dq.op_type != "DequantizeLinear":
                continue
            if dq.output[0] in outputs:  # the graph output keeps its name: an Identity of the float tensor
                added.append((q, helper.make_node("Identity", [source], [dq.output[0]], name=fresh(dq.output[0]))))
            else:
                renamed[dq.output[0]] = source
            dropped.add(id(dq))
        if all(c.op_type == "DequantizeLinear" and id(c) in dropped for c in graphs.consumers.get(q.output[0], [])):
            dropped.add(id(q))
    # the ops' weights: their DequantizeLinear (of an initializer) replaced by the parent's float initializer
    for node in graph.node:
        if (node.name or node.output[0]) not in wanted_ops:
            continue
        for i, name in enumerate(node.input):
            dq = graphs.producer.get(name)
            if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] not in inits:
                continue
            quantized = dq.input[0]
            original = quantized[: -len(QUANTIZED_SUFFIX)] if quantized.endswith(QUANTIZED_SUFFIX) else None
            want = tuple(inits[quantized].dims)
            if original is None or original not in fp32_inits or tuple(fp32_inits[original].dims) != want:
                note_of[node.name or node.output[0]].notes.append(
                    f"{quantized} is not in the fp32 parent (quantize's pre-processing folded or rewrote it): "
                    "kept as its dequantized value")
                continue
            restored = numpy_helper.to_array(fp32_inits[original])
            tensor = numpy_helper.from_array(restored, fresh(original))
            graph.initializer.append(tensor)
            node.input[i] = tensor.name
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in renamed:
                node.input[i] = renamed[name]
    kept = []
    for node in graph.node:  # a folded activation's new node goes where its QuantizeLinear was (after its writer)
        kept.extend(new for q, new in added if q is node)
        if id(node) not in dropped:
            kept.append(node)
    del graph.node[:]
    graph.node.extend(kept)
    _drop_unused(graph)
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        from edgekit.core.errors import one_line

        raise BadInput(f"groups {[g.index for g in groups]} do not revert to a valid graph: {one_line(exc, 300)}") \
            from None
    return model


def _activation_name(tensor: str) -> str:
    from onnxruntime.quantization.quant_utils import QUANT_INPUT_SUFFIX

    return tensor[: -len(QUANT_INPUT_SUFFIX)] if tensor.endswith(QUANT_INPUT_SUFFIX) else tensor


def _drop_unused(graph) -> None:
    """Remove nodes whose outputs nothing reads (the weights' orphaned DequantizeLinear) and unused initializers."""
    outputs = {o.name for o in graph.output}
    while True:
        used = {name for n in graph.node for name in n.input} | outputs
        keep = [n for n in graph.node if n.op_type not in QDQ or any(o in used for o in n.output)]
        if len(keep) == len(graph.node):
            break
        del graph.node[:]
        graph.node.extend(keep)
    used = {name for n in graph.node for name in n.input} | outputs
    keep_inits = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep_inits)


def exclude_arguments(groups: list[Group]) -> list[str]:
    """The fp32 node names of `groups`, in order, each once: quantize's --exclude / ORT's nodes_to_exclude."""
    return list(dict.fromkeys(n for g in groups for n in g.fp32_nodes))
