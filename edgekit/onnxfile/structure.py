"""Structural facts of a network, counted the same way in PyTorch and in ONNX, so the
invariants (grouped convs stay grouped, DenseNet's concatenations stay Concat) can be checked
after every step: export, simplification, quantization, and ORT's own optimisation."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

# Ops that carry a grouped convolution in ONNX (plain, QDQ-fused by ORT, integer).
_CONV_OPS = {"Conv", "QLinearConv", "ConvInteger", "FusedConv", "NhwcConv", "NchwcConv"}
_CONCAT_OPS = {"Concat", "QLinearConcat"}


def op_counts(model) -> Counter:
    """op_type -> number of nodes in the main graph."""
    return Counter(node.op_type for node in model.graph.node)


def _group(node) -> int:
    for attr in node.attribute:
        if attr.name == "group":
            return int(attr.i)
    return 1


def onnx_grouped_conv_count(model) -> int:
    """Conv-like nodes with group > 1."""
    return sum(1 for n in model.graph.node if n.op_type in _CONV_OPS and _group(n) > 1)


def onnx_concat_count(model) -> int:
    """Concatenations of feature maps: Concat nodes (float or int8) joining two or more tensors, except those that
    only compute a shape (`x.view(x.size(0), -1)` in TorchScript is Shape -> Gather -> Unsqueeze -> Concat ->
    Reshape: an int64 Concat, which ORT's pre-processing or onnxsim folds away)."""
    shape_only = _shape_tensors(model)
    return sum(1 for n in model.graph.node
               if n.op_type in _CONCAT_OPS and _concat_arity(n) >= 2 and not (set(n.output) & shape_only))


# Tensors of these element types are shapes, indices or axes, never feature maps.
_INDEX_TYPES = {6, 7, 12, 13}  # INT32, INT64, UINT32, UINT64 (TensorProto)
# Ops whose output is integer-typed whatever their input; and ops whose output has their first input's type.
_SHAPE_SOURCES = {"Shape", "Size", "NonZero", "ArgMax", "ArgMin"}
_TYPE_KEEPING = {"Gather", "Unsqueeze", "Squeeze", "Concat", "Slice", "Reshape", "Identity", "Add", "Sub", "Mul",
                 "Div", "Neg", "Abs", "Min", "Max", "Expand", "Tile", "Flatten", "Range", "ReduceProd", "Mod"}


def _shape_tensors(model) -> set[str]:
    """Names of integer-typed tensors (shapes, indices, axes) of the main graph: declared so (inputs, initializers,
    Constant values, value_info), made by a shape op or a Cast to an integer type, or carried through a
    type-keeping op from one of them. Nodes are in topological order (ONNX requires it)."""
    graph = model.graph
    ints = {t.name for t in graph.initializer if t.data_type in _INDEX_TYPES}
    for value in (*graph.input, *graph.value_info, *graph.output):
        if value.type.tensor_type.elem_type in _INDEX_TYPES:
            ints.add(value.name)
    for node in graph.node:
        integer = False
        if node.op_type in _SHAPE_SOURCES:
            integer = True
        elif node.op_type == "Constant":
            integer = any(a.name == "value" and a.t.data_type in _INDEX_TYPES for a in node.attribute) or any(
                a.name in ("value_int", "value_ints") for a in node.attribute)
        elif node.op_type == "Cast":
            integer = any(a.name == "to" and a.i in _INDEX_TYPES for a in node.attribute)
        elif node.op_type in _TYPE_KEEPING and node.input:
            data = [i for i in node.input if i]
            # Gather/Slice/Reshape/Expand/Tile/Unsqueeze/Squeeze take integer indices after their data: only the
            # first input says the type; element-wise ops and Concat need every input integer.
            firsts = data[:1] if node.op_type not in ("Concat", "Add", "Sub", "Mul", "Div", "Min", "Max", "Mod") else data
            integer = bool(firsts) and all(i in ints for i in firsts)
        if integer:
            ints.update(o for o in node.output if o)
    return ints


def _concat_arity(node) -> int:
    if node.op_type == "QLinearConcat":
        # inputs: y_scale, y_zero_point, then (tensor, scale, zero_point) triples
        return (len(node.input) - 2) // 3
    return len(node.input)


def torch_grouped_conv_count(model) -> int:
    """nn.Conv2d modules with groups > 1."""
    from torch import nn

    return sum(1 for m in model.modules() if isinstance(m, nn.Conv2d) and m.groups > 1)


def torch_concat_count(model, example) -> int:
    """torch.cat calls of two or more tensors during one forward (one per DenseNet layer)."""
    import torch
    from torch.overrides import TorchFunctionMode

    calls = []

    class CountCat(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            if func in (torch.cat, torch.concat, torch.concatenate) and args and len(args[0]) >= 2:
                calls.append(func)
            return func(*args, **(kwargs or {}))

    with torch.no_grad(), CountCat():
        model(example)
    return len(calls)


@dataclass(frozen=True)
class Structure:
    """What a PyTorch model has that its ONNX file must keep."""

    grouped_convs: int
    concats: int
    params: int


def torch_structure(model, example) -> Structure:
    return Structure(
        grouped_convs=torch_grouped_conv_count(model),
        concats=torch_concat_count(model, example),
        params=sum(p.numel() for p in model.parameters()),
    )


def count_macs(model, input_size: int) -> int:
    """Multiply-accumulates of Conv2d and Linear layers for one image, measured with forward hooks
    on the meta device (shapes only, no arithmetic), so it is instant even for ResNeXt-101."""
    import torch
    from torch import nn

    total = 0

    def hook(module, inputs, output):
        nonlocal total
        if isinstance(module, nn.Conv2d):
            per_output = (module.in_channels // module.groups) * module.kernel_size[0] * module.kernel_size[1]
            total += output.numel() // output.shape[0] * per_output
        elif isinstance(module, nn.Linear):
            total += output.numel() // output.shape[0] * module.in_features

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, input_size, input_size, device=next(model.parameters()).device))
    finally:
        for h in handles:
            h.remove()
    return total
