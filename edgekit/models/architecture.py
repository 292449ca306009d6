"""Is this PyTorch module the network an ONNX file holds? Checked before any numeric comparison, so an
unrelated --model is named as such ("FILE is not MODEL: ...") rather than reported as a failed tolerance.

Each 2-D convolution is described by (output channels, input channels, kernel height, kernel width, grouped):
the same in PyTorch and in ONNX, and unchanged by what edgekit and the usual tools do to a graph: onnxsim and
ORT fold BatchNorm into the Conv before it (values change, shapes do not), quantize's group merge keeps the
input channels and group > 1, its pool swap keeps the 1x1 Conv, and fp16/int8 weights keep their shape behind
Cast/DequantizeLinear. The only Convs a graph may have that the module does not call are depthwise ones
(channels in = out, grouped), as quantize writes for a lone BatchNorm (1x1) and an AveragePool (its window). The module's side is recorded from one forward (every conv2d call,
modules and functional alike; a module defined but never called is not counted).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from edgekit.core.errors import BadInput

Signature = tuple  # (out, in, kh, kw, grouped)
_CONV_WEIGHT_INPUT = {"Conv": 1, "ConvInteger": 1, "QLinearConv": 3, "FusedConv": 1, "NhwcConv": 1}
_PASS_THROUGH = {"DequantizeLinear", "Cast", "Identity", "QuantizeLinear"}


def _attr_int(node, name: str, default: int) -> int:
    for attr in node.attribute:
        if attr.name == name:
            return int(attr.i)
    return default


def onnx_conv_signatures(model_proto) -> tuple[Counter, int]:
    """(signatures of the graph's 2-D convolutions, how many have a weight whose shape is not known statically)."""
    shapes = {t.name: list(t.dims) for t in model_proto.graph.initializer}
    producers = {}
    for node in model_proto.graph.node:
        for out in node.output:
            producers[out] = node
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value" and attr.t is not None:
                    shapes[node.output[0]] = list(attr.t.dims)

    def weight_shape(name: str, depth: int = 0):
        if name in shapes:
            return shapes[name]
        node = producers.get(name)
        if node is None or depth > 4 or node.op_type not in _PASS_THROUGH or not node.input:
            return None
        return weight_shape(node.input[0], depth + 1)

    found: Counter = Counter()
    unknown = 0
    for node in model_proto.graph.node:
        index = _CONV_WEIGHT_INPUT.get(node.op_type)
        if index is None or len(node.input) <= index:
            continue
        shape = weight_shape(node.input[index])
        if shape is None:
            unknown += 1
            continue
        if len(shape) != 4:
            continue  # Conv1d/3d: not this chapter's
        group = _attr_int(node, "group", 1)
        found[(int(shape[0]), int(shape[1]) * group, int(shape[2]), int(shape[3]), group > 1)] += 1
    return found, unknown


def torch_conv_signatures(model, example) -> Counter:
    """Signatures of every conv2d a forward on `example` calls."""
    import torch
    import torch.nn.functional as F
    from torch.overrides import TorchFunctionMode

    found: Counter = Counter()

    class Record(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if func in (F.conv2d, torch.conv2d) and len(args) >= 2:
                weight = args[1]
                group = args[6] if len(args) > 6 else kwargs.get("groups", 1)
                if getattr(weight, "ndim", 0) == 4:
                    o, i, kh, kw = (int(d) for d in weight.shape)
                    found[(o, i * int(group), kh, kw, int(group) > 1)] += 1
            return func(*args, **kwargs)

    with torch.no_grad(), Record():
        out = model(example)
    return found, out


def _describe(sig: Signature) -> str:
    o, i, kh, kw, grouped = sig
    return f"{o}x{i}x{kh}x{kw}" + (" grouped" if grouped else "")


def check_architecture(model, graph_convs: Counter | None, unknown: int, graph_classes: int | None, example,
                       where: Path | str, name: str) -> None:
    """BadInput "WHERE is not NAME: ..." when the module's convolutions or classes are not the graph's."""
    mine, out = torch_conv_signatures(model, example)
    hint = "pass the --model (and --weights) the file was made from"
    classes = int(out.shape[1]) if hasattr(out, "ndim") and out.ndim == 2 else None
    if graph_classes is not None and classes is not None and classes != graph_classes:
        raise BadInput(f"{where} is not {name}: it gives {graph_classes} classes, {name} gives {classes}", hint=hint)
    if graph_convs is None:
        return
    missing = mine - graph_convs  # what the module computes that the graph has no Conv for
    # quantize's rewrites add depthwise Convs (a lone BatchNorm, an AveragePool): channel-preserving and grouped
    extra = Counter({s: n for s, n in (graph_convs - mine).items() if not (s[4] and s[0] == s[1])})
    if sum(missing.values()) > unknown or (extra and not unknown):
        total_graph = sum(graph_convs.values()) + unknown
        parts = [f"its graph has {total_graph} convolutions, {name} calls {sum(mine.values())}"]
        if missing:
            parts.append(f"{name}'s {_describe(next(iter(missing)))} is not in it")
        elif extra:
            parts.append(f"its {_describe(next(iter(extra)))} is not in {name}")
        raise BadInput(f"{where} is not {name}: " + "; ".join(parts), hint=hint)
