"""The --exclude list for quantize: the names that keep the culprit groups float when the parent is quantized again.

A group is reverted by removing the Q/DQ pairs on its activations (layer_error/groups.py). `quantize --exclude NAME`
works on ops, not tensors: ONNX Runtime's QDQ quantizer quantizes every input AND every output of each op it
quantizes (QDQOperatorBase.quantize, QDQConv: outputs too, unless OpTypesToExcludeOutputQuantization lists the op
type, which edgekit's recipes do not). An activation therefore stays float only when its writer is excluded along
with the ops it feeds. Group.fp32_nodes names the ops a group feeds, and the writer only where it is a folded
Relu/Clip or a pass-through op; a Conv, Add or Mul writing a culprit's activation kept its output quantizer, and the
re-quantized file was not the graph the search judged (torchvision's mobilenet_v3_small imported under the
trained-weight gates: reverted 100 % top-1 agreement, re-quantized with the list 83 %; with the writers 100 %).
"""

from __future__ import annotations

from edgekit.layer_error.groups import exclude_arguments

QDQ = ("QuantizeLinear", "DequantizeLinear")


def exclusion_list(culprits, int8_model, parent_model, notes: list[str]) -> list[str]:
    """Group.fp32_nodes of `culprits`, then the parent's name of the writer of each activation they quantize (a
    graph input has none), each once. A writer the parent cannot name is said in `notes`."""
    names = exclude_arguments(culprits)
    parent_names = {n.name for n in parent_model.graph.node if n.name}
    parent_writer = {o: n.name for n in parent_model.graph.node if n.name for o in n.output}
    writer = {o: n for n in int8_model.graph.node for o in n.output}
    consumers: dict[str, list] = {}
    for node in int8_model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    graph_inputs = {i.name for i in int8_model.graph.input}
    for group in culprits:
        for act in group.activations:
            if act in graph_inputs or act not in writer:
                continue
            name = _parent_name(act, writer[act], parent_writer, parent_names, consumers)
            if name is None:
                notes.append(f"the op writing {act} has no node in the fp32 parent to name with --exclude: "
                             "quantize may keep a quantizer on it")
            elif name not in names:
                names.append(name)
    return names


def _parent_name(act: str, node, parent_writer: dict, parent_names: set, consumers: dict) -> str | None:
    """The parent's node writing `act`; else the int8 writer's own name where the parent has it; else (an op of a
    function ORT's pre-processing inlined, as HardSwish's HardSigmoid) the parent node writing the first tensor
    downstream that the parent has, through Q/DQ pairs, within a few hops."""
    if act in parent_writer:
        return parent_writer[act]
    if node.name in parent_names:
        return node.name
    frontier = list(consumers.get(act, []))
    for _hop in range(8):
        after = []
        for op in frontier:
            for out in op.output:
                if op.op_type not in QDQ and out in parent_writer:
                    return parent_writer[out]
                after.extend(consumers.get(out, []))
        frontier = after
    return None


def writers_group(groups, int8_model):
    """A pseudo-group for revert() that makes the reverted graph the file `quantize --exclude` with exclusion_list's
    names makes: the ops writing `groups`' activations on the parent's weights (an excluded op is float as a
    whole), and every other activation that no op left int8 reads or writes back in float (ORT quantizes a tensor
    only for a quantized op that touches it: with an excluded first conv, the graph input stays float)."""
    from edgekit.layer_error.groups import Group

    def key(node) -> str:
        return node.name or node.output[0]

    writer = {o: n for n in int8_model.graph.node if n.op_type not in QDQ for o in n.output}
    consumers: dict[str, list] = {}
    for node in int8_model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    inside = {n for g in groups for n in g.nodes}
    writers = [key(writer[a]) for g in groups for a in g.activations if a in writer]
    excluded = inside | set(writers)
    initializers = {t.name for t in int8_model.graph.initializer}
    activations = []
    for q in int8_model.graph.node:
        act = q.input[0] if q.op_type == "QuantizeLinear" else None
        if act is None or act in initializers or (act in writer and key(writer[act]) not in excluded):
            continue
        readers = [op for dq in consumers.get(q.output[0], []) if dq.op_type == "DequantizeLinear"
                   for op in consumers.get(dq.output[0], []) if op.op_type not in QDQ]
        if readers and all(key(op) in excluded for op in readers):
            activations.append(act)
    return Group(-1, list(dict.fromkeys(activations)), [n for n in dict.fromkeys(writers) if n not in inside], [])
