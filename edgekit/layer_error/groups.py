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
# Ops whose own output ONNX Runtime's QDQ quantizer quantizes (a Relu/Clip folded into the range, and the ops that
# pass int8 through: their output shares their input's scale). To keep a group's activation float, quantize's
# --exclude must name that writer too, not only the ops the activation feeds.
OUTPUT_QUANTIZED = {"Relu", "Clip", "MaxPool", "AveragePool", "GlobalAveragePool", "Flatten", "Reshape", "Transpose",
                    "Squeeze", "Unsqueeze", "Resize", "Concat", "Split", "Gather", "Slice", "Pad"}


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


def find_root(parent: dict, x):
    """The root of X in a union-find forest kept as {member: parent} (X joins as its own root when new); paths are
    halved as they are walked."""
    while parent.setdefault(x, x) != x:
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
                parent[find_root(parent, okey)] = find_root(parent, key)
    for key in parent:
        members.setdefault(find_root(parent, key), []).append(key)
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
        for act in activations:  # ORT puts this quantizer on the writer's output: excluding the writer drops it
            writer = graphs.fp32_producer.get(act, (None, None))[1]
            if writer is None or not writer.name or not (writer.op_type in OUTPUT_QUANTIZED or act in graphs.folded):
                continue
            names = [writer.name]
            if act in graphs.folded and act in graphs.producer and graphs.producer[act].name in fp32_names:
                # ORT quantizes a quantized op's output in front of an excluded Relu: the op goes too
                names.insert(0, graphs.producer[act].name)
            group.fp32_nodes.extend(n for n in names if n not in group.fp32_nodes)
        groups.append(group)
    return groups


def _fp32_name(op, graphs: _Graphs, fp32_names: set[str]) -> str | None:
    """The name quantize's --exclude takes for an int8 op: its own, the node a rewrite replaced, or the fp32 node
    writing the same tensor."""
    if op.name in fp32_names:
        return op.name
    if op.name.endswith(DEPTHWISE_SUFFIX) and op.name[: -len(DEPTHWISE_SUFFIX)] in fp32_names:
        return op.name[: -len(DEPTHWISE_SUFFIX)]  # quantize maps --exclude NAME to NAME_as_depthwise
    frontier = [op]
    for _hop in range(6):  # an op of a function ORT's pre-processing inlined (HardSwish as HardSigmoid and Mul):
        after = []         # the parent node writing the first tensor downstream that the parent also has
        for node in frontier:
            for out in node.output:
                if out in graphs.fp32_producer and graphs.fp32_producer[out][1].name:
                    return graphs.fp32_producer[out][1].name
                after.extend(graphs.consumers.get(out, []))
        frontier = after
    return None


class ParentWeights:
    """Each int8 weight's fp32 parent value (or why there is none) for one pair of models, found once per weight: a
    search that reverts many sets keeps one and passes it to every revert."""

    def __init__(self, fp32_model):
        self.fp32_model = fp32_model
        self._by_key: dict[tuple, tuple] = {}
        self._initializers: dict | None = None

    def get(self, dq, inits) -> tuple:
        """(value, None) or (None, why) for the weight DQ dequantizes (the same bytes on every copy of the int8
        graph, so keyed by DQ's inputs)."""
        key = tuple(dq.input)
        if key not in self._by_key:
            if self._initializers is None:
                self._initializers = {t.name: t for t in self.fp32_model.graph.initializer}
            self._by_key[key] = _parent_weight(dq, inits, self.fp32_model, self._initializers)
        return self._by_key[key]


def revert(int8_model, fp32_model, groups: list[Group], weights: ParentWeights | None = None, *,
           check: bool = True):
    """A copy of `int8_model` with `groups` back in fp32 (see the module docstring); checked with onnx.checker
    unless CHECK is False (the caller then checks the bytes it serializes anyway: checked_bytes). Each group's
    `notes` gains a line for a weight it could not restore from the parent. WEIGHTS: the ParentWeights of this pair
    of models the caller keeps across calls (a search reverts many sets)."""
    model = copy.deepcopy(int8_model)
    edit = _Edit(model, fp32_model, weights or ParentWeights(fp32_model))
    edit.drop_quantizers({a for g in groups for a in g.activations})
    edit.restore_weights({n: g for g in groups for n in g.nodes})
    edit.apply()
    _drop_unused(model.graph)
    if check:
        checked_bytes(model, groups)
    return model


def checked_bytes(model, groups: list[Group]) -> bytes:
    """A reverted graph serialized once and checked with onnx.checker on those bytes (what a session or a file
    takes): BadInput naming GROUPS where it is not a valid graph."""
    import onnx

    data = model.SerializeToString()
    try:
        onnx.checker.check_model(data)
    except onnx.checker.ValidationError as exc:
        from edgekit.core.errors import one_line

        raise BadInput(f"groups {[g.index for g in groups]} do not revert to a valid graph: {one_line(exc, 300)}") \
            from None
    return data


class _Edit:
    """One revert's edits of a copied int8 graph: quantizers dropped (with a Relu/Clip put back where the range had
    folded one), DequantizeLinear outputs renamed to the float tensors replacing them, weights restored from the
    fp32 parent; applied in one pass that keeps the topological order."""

    def __init__(self, model, fp32_model, weights: ParentWeights):
        self.graph, self.fp32_model, self.weights = model.graph, fp32_model, weights
        self.graphs = _Graphs(fp32_model, model)
        self.inits = {t.name: t for t in self.graph.initializer}
        self.renamed: dict[str, str] = {}  # a DequantizeLinear output -> the float tensor that replaces it
        self.dropped: set[int] = set()
        self.added: list = []  # (the QuantizeLinear it replaces, a new node)
        self.taken = {o for n in self.graph.node for o in n.output} | set(self.inits) | {i.name for i in self.graph.input}

    def fresh(self, name: str) -> str:
        base, k = name, 0
        while name in self.taken:
            k += 1
            name = f"{base}_fp32" if k == 1 else f"{base}_fp32_{k}"
        self.taken.add(name)
        return name

    def drop_quantizers(self, wanted_acts: set[str]) -> None:
        """The QuantizeLinear of each activation in WANTED_ACTS and its DequantizeLinear consumers go; a graph
        output keeps its name through an Identity."""
        from onnx import helper

        graphs, outputs = self.graphs, {o.name for o in self.graph.output}
        for q in self.graph.node:
            if q.op_type != "QuantizeLinear" or q.input[0] not in wanted_acts:
                continue
            act = q.input[0]
            source = self._folded_activation(q, act)
            for dq in graphs.consumers.get(q.output[0], []):
                if dq.op_type != "DequantizeLinear":
                    continue
                if dq.output[0] in outputs:  # the graph output keeps its name: an Identity of the float tensor
                    self.added.append((q, helper.make_node("Identity", [source], [dq.output[0]],
                                                           name=self.fresh(dq.output[0]))))
                else:
                    self.renamed[dq.output[0]] = source
                self.dropped.add(id(dq))
            if all(c.op_type == "DequantizeLinear" and id(c) in self.dropped for c in graphs.consumers.get(q.output[0], [])):
                self.dropped.add(id(q))

    def _folded_activation(self, q, act: str) -> str:
        """The float tensor that replaces ACT's quantizer: ACT itself, or a Relu/Clip of it put back as a node where
        the quantizer's range applied one."""
        import numpy as np
        from onnx import helper, numpy_helper

        bounds = self.graphs.folded.get(act) or self.graphs.folded.get(_activation_name(act))
        if bounds is None:
            return act
        low, high = bounds
        if (low, high) == (0.0, float("inf")):
            source = self.fresh(act + "_relu")
            self.added.append((q, helper.make_node("Relu", [act], [source], name=source)))
            return source
        source = self.fresh(act + "_clip")
        names = []
        for label, value in (("min", low), ("max", high)):
            if value in (float("inf"), float("-inf")):
                names.append("")
                continue
            init = numpy_helper.from_array(np.array(value, dtype=np.float32), self.fresh(f"{source}_{label}"))
            self.graph.initializer.append(init)
            names.append(init.name)
        while names and not names[-1]:
            names.pop()
        self.added.append((q, helper.make_node("Clip", [act, *names], [source], name=source)))
        return source

    def restore_weights(self, group_of: dict[str, Group]) -> None:
        """The weights of the ops in GROUP_OF (name -> group): their DequantizeLinear (of an initializer) replaced by
        the parent's float initializer; a weight the parent cannot give stays dequantized, said in its group."""
        from onnx import numpy_helper

        for node in self.graph.node:
            group = group_of.get(node.name or node.output[0])
            if group is None:
                continue
            for i, name in enumerate(node.input):
                dq = self.graphs.producer.get(name)
                if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] not in self.inits:
                    continue
                quantized = dq.input[0]
                restored, why = self.weights.get(dq, self.inits)
                if restored is None:
                    line = f"{quantized} kept as its dequantized value: {why}"
                    if line not in group.notes:
                        group.notes.append(line)
                    continue
                original = quantized[: -len(QUANTIZED_SUFFIX)] if quantized.endswith(QUANTIZED_SUFFIX) else quantized
                tensor = numpy_helper.from_array(restored, self.fresh(original))
                self.graph.initializer.append(tensor)
                node.input[i] = tensor.name

    def apply(self) -> None:
        """Inputs renamed, dropped nodes out, each new node where its QuantizeLinear was (after its writer)."""
        for node in self.graph.node:
            for i, name in enumerate(node.input):
                if name in self.renamed:
                    node.input[i] = self.renamed[name]
        kept = []
        for node in self.graph.node:
            kept.extend(new for q, new in self.added if q is node)
            if id(node) not in self.dropped:
                kept.append(node)
        del self.graph.node[:]
        self.graph.node.extend(kept)


def _dequantized(dq, inits):
    """The float value a weight's DequantizeLinear computes: (q - zero point) * scale along its axis."""
    import numpy as np
    from onnx import numpy_helper

    q = numpy_helper.to_array(inits[dq.input[0]]).astype(np.float64)
    scale = numpy_helper.to_array(inits[dq.input[1]]).astype(np.float64) if dq.input[1] in inits else None
    zero = numpy_helper.to_array(inits[dq.input[2]]).astype(np.float64) if len(dq.input) > 2 and dq.input[2] in inits \
        else np.zeros(1)
    if scale is None:
        return None, None
    axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)
    if scale.ndim == 1 and scale.size > 1:
        shape = [1] * q.ndim
        shape[axis] = scale.size
        scale, zero = scale.reshape(shape), zero.reshape(shape) if zero.size > 1 else zero
    return (q - zero) * scale, np.broadcast_to(scale, q.shape)


def _parent_weight(dq, inits, fp32_model, parent: dict):
    """(the fp32 parent's value of the weight a DequantizeLinear reads, None) or (None, why not). The parent's
    tensor of the same name (`W` for `W_quantized`), or the one quantize's rewrites made from it (a merged grouped
    Conv's zero-filled weight, a BatchNormalization or AveragePool as a depthwise Conv), accepted only where it
    agrees with the int8 weight to rounding for most elements (a parent tensor of that name holding other values,
    a Conv weight ORT's pre-processing folded a BatchNormalization into, is refused, not restored). PARENT: the
    parent's initializers by name."""
    import re

    import numpy as np
    from onnx import numpy_helper

    name = dq.input[0]
    base = name[: -len(QUANTIZED_SUFFIX)] if name.endswith(QUANTIZED_SUFFIX) else name
    want = tuple(inits[name].dims)
    value = None
    if base in parent:
        value = numpy_helper.to_array(parent[base])
    elif (merged := re.fullmatch(r"(.+)_merged_g(\d+)", base)) and merged.group(1) in parent:
        weight = numpy_helper.to_array(parent[merged.group(1)])
        groups_now, group_in = int(merged.group(2)), weight.shape[1]
        factor = want[1] // group_in if len(want) > 1 and group_in else 0
        if factor >= 1 and want[0] == weight.shape[0] and (weight.shape[0] % (groups_now * factor) == 0):
            group_out = weight.shape[0] // (groups_now * factor)
            value = np.zeros(want, dtype=weight.dtype)
            for o in range(weight.shape[0]):
                slot = (o // group_out) % factor
                value[o, slot * group_in:(slot + 1) * group_in] = weight[o]
    elif (rewritten := re.fullmatch(r"(.+)" + DEPTHWISE_SUFFIX + r"\.(weight|bias)", base)):
        value = _depthwise_of(rewritten.group(1), rewritten.group(2), fp32_model, want)
    if value is None:
        return None, "the fp32 parent holds no tensor it was made from"
    if tuple(value.shape) != want:
        return None, f"the fp32 parent's tensor has shape {tuple(value.shape)}, the int8 one {want}"
    dequantized, scale = _dequantized(dq, inits)
    if dequantized is not None:
        off = np.abs(value.astype(np.float64) - dequantized) > scale * 0.5 + 1e-12 + 1e-6 * np.abs(dequantized)
        if off.mean() > 0.5:
            return None, (f"the fp32 parent's values differ from the int8 weights beyond rounding in {off.mean():.0%} "
                          "of them (folded or changed after the parent was written)")
    return value.astype(np.float32), None


def _depthwise_of(node_name: str, part: str, fp32_model, shape):
    """The weight or bias of quantize's depthwise Conv standing for the parent's BatchNormalization or
    AveragePool `node_name` (quantize/rewrites.py), computed the same way from the parent's own tensors."""
    import numpy as np
    from onnx import numpy_helper

    node = next((n for n in fp32_model.graph.node if n.name == node_name), None)
    if node is None:
        return None
    inits = {t.name: t for t in fp32_model.graph.initializer}
    if node.op_type == "BatchNormalization" and all(p in inits for p in node.input[1:5]):
        scale, bias, mean, var = (numpy_helper.to_array(inits[p]).astype(np.float64) for p in node.input[1:5])
        eps = next((a.f for a in node.attribute if a.name == "epsilon"), 1e-5)
        weight = scale / np.sqrt(var + eps)
        if part == "weight":
            return weight.reshape(len(weight), 1, 1, 1).astype(np.float32)
        return (bias - weight * mean).astype(np.float32)
    if node.op_type == "AveragePool" and part == "weight" and len(shape) == 4:
        return np.full(shape, 1.0 / (shape[2] * shape[3]), dtype=np.float32)
    return None


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
    for i in reversed(range(len(graph.initializer))):  # in place: the kept tensors' bytes are not copied again
        if graph.initializer[i].name not in used:
            del graph.initializer[i]


def exclude_arguments(groups: list[Group]) -> list[str]:
    """The fp32 node names of `groups`, in order, each once: quantize's --exclude / ORT's nodes_to_exclude."""
    return list(dict.fromkeys(n for g in groups for n in g.fp32_nodes))
