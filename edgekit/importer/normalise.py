"""What `edgekit import` changes in a foreign ONNX graph, one step per function; each returns the words for
`imported.changes` (None when the step had nothing to do). The graph's meaning never changes: every step is
checked afterwards against the original file in ONNX Runtime (importer/__init__.py).

- the input's dimensions pinned to --input-shape (the batch may stay dynamic);
- `Constant` nodes that hold weights turned into initializers (Paddle2ONNX writes weights that way, and
  quantize_static quantizes initializers only);
- the opset raised to QDQ_MIN_OPSET with onnx.version_converter (per-channel QDQ needs QuantizeLinear's `axis`);
- shape-only subgraphs folded with onnxsim (a Reshape's shape computed from Shape/Gather/Concat becomes a
  constant), grouped convolutions and feature-map concatenations counted before and after.
"""

from __future__ import annotations

import contextlib
import io

from edgekit.core.errors import BadInput, InvariantBroken, one_line
from edgekit.onnxfile.graph import graph_inputs
from edgekit.onnxfile.structure import onnx_concat_count, onnx_grouped_conv_count

QDQ_MIN_OPSET = 13  # QuantizeLinear/DequantizeLinear take `axis` (per-channel weights) from opset 13
DYNAMIC_BATCH_NAME = "batch"
MAX_INPUT_SHAPE_TEXT = 100


def parse_input_shape(text: str) -> tuple[int | None, int, int, int]:
    """--input-shape "1,3,48,192" (or "N,3,48,192" / "-1,3,48,192": the batch stays dynamic) -> (batch or None,
    C, H, W). BadInput naming the option for anything else."""
    from edgekit.core.limits import MAX_BATCH, MAX_INPUT_SIZE

    raw = str(text).strip()
    parts = [p.strip() for p in raw[:MAX_INPUT_SHAPE_TEXT].replace("x", ",").split(",")]
    example = "give N,C,H,W such as 1,3,48,192 (N or -1 for a dynamic batch)"
    if len(raw) > MAX_INPUT_SHAPE_TEXT or len(parts) != 4:
        raise BadInput(f"--input-shape {raw[:40]!r}: {example}")
    batch: int | None
    if parts[0].lower() in ("n", "-1", "batch", "?"):
        batch = None
    else:
        batch = _whole(parts[0], raw, example)
        if not 1 <= batch <= MAX_BATCH:
            raise BadInput(f"--input-shape {raw!r}: the batch must be 1 to {MAX_BATCH}, or N for a dynamic batch")
    c, h, w = (_whole(p, raw, example) for p in parts[1:])
    if c not in (1, 3):
        raise BadInput(f"--input-shape {raw!r}: edgekit feeds images of 1 or 3 channels, not {c}")
    for side in (h, w):
        if not 1 <= side <= MAX_INPUT_SIZE:
            raise BadInput(f"--input-shape {raw!r}: height and width must be 1 to {MAX_INPUT_SIZE} pixels")
    return batch, c, h, w


def _whole(part: str, raw: str, example: str) -> int:
    if not part.lstrip("+").isdigit():
        raise BadInput(f"--input-shape {raw!r}: {part!r} is not a whole number; {example}")
    return int(part)


def pin_input(model, where: str, pinned: tuple[int | None, int, int, int] | None) -> tuple[list, str | None]:
    """Fix the input's dims: to `pinned` where given (each must agree with the graph's static dims), else the
    graph's own, which must then be static apart from the batch. Returns ([batch or "batch", C, H, W], change)."""
    value = graph_inputs(model)[0]
    dims = value.type.tensor_type.shape.dim
    graph = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in dims]
    shown = "(" + ", ".join(str(g) if g is not None else (d.dim_param or "?") for g, d in zip(graph, dims)) + ")"
    if pinned is None:
        if any(g is None for g in graph[1:]):
            which = [n for n, g in zip(("channels", "height", "width"), graph[1:]) if g is None]
            raise BadInput(f"{where}: input {value.name!r} has dynamic {' and '.join(which)} {shown}; pass "
                           "--input-shape N,C,H,W with the size the model expects (e.g. --input-shape 1,3,48,192)")
        pinned = (graph[0], graph[1], graph[2], graph[3])
    else:
        for i, (name, want, have) in enumerate(zip(("batch", "channels", "height", "width"), pinned, graph)):
            if have is not None and want is not None and want != have:
                raise BadInput(f"{where}: --input-shape gives {name} {want} but input {value.name!r} is {shown}; "
                               f"give {have} there")
            if i == 0 and want is None and have is not None:
                raise BadInput(f"{where}: --input-shape asks for a dynamic batch but input {value.name!r} is {shown} "
                               f"(batch {have} fixed); give {have} there")
    before = [d.dim_value if d.HasField("dim_value") else d.dim_param for d in dims]
    batch, c, h, w = pinned
    for dim, target in zip(dims, (batch, c, h, w)):
        dim.Clear()
        if target is None:
            dim.dim_param = DYNAMIC_BATCH_NAME
        else:
            dim.dim_value = int(target)
    shape = [DYNAMIC_BATCH_NAME if batch is None else batch, c, h, w]
    change = None
    if before != shape:
        change = f"input {value.name!r} pinned from {shown} to ({', '.join(map(str, shape))})"
    return shape, change


def constants_to_initializers(model) -> str | None:
    """Top-level Constant nodes holding a tensor become initializers of the same name (the graph is unchanged:
    the value is the same tensor under the same name)."""
    from onnx import helper, numpy_helper
    import numpy as np

    kept, moved = [], 0
    for node in model.graph.node:
        tensor = None
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx") and len(node.attribute) == 1:
            attr = node.attribute[0]
            if attr.name == "value":
                tensor = attr.t
            elif attr.name in ("value_float", "value_floats", "value_int", "value_ints"):
                raw = helper.get_attribute_value(attr)
                dtype = np.float32 if attr.name.startswith("value_float") else np.int64
                tensor = numpy_helper.from_array(np.asarray(raw, dtype=dtype))
        if tensor is None:
            kept.append(node)
            continue
        init = model.graph.initializer.add()
        init.CopyFrom(tensor)
        init.name = node.output[0]
        if model.ir_version < 4:  # before IR 4 every initializer is also a graph input
            model.graph.input.append(helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
        moved += 1
    if not moved:
        return None
    del model.graph.node[:]
    model.graph.node.extend(kept)
    return f"{moved} Constant node(s) turned into initializers"


def upgrade_opset(model, opset: int, where: str):
    """The model at QDQ_MIN_OPSET when it declares less (onnx.version_converter); returns (model, change)."""
    if opset >= QDQ_MIN_OPSET:
        return model, None
    from onnx import version_converter

    try:
        converted = version_converter.convert_version(model, QDQ_MIN_OPSET)
    except Exception as exc:  # the converter raises bare RuntimeError/ValueError with C++ text
        raise BadInput(f"{where}: onnx.version_converter cannot raise opset {opset} to {QDQ_MIN_OPSET} "
                       f"({one_line(exc, 200)}); export the model at opset {QDQ_MIN_OPSET} or newer") from None
    return converted, f"opset {opset} upgraded to {QDQ_MIN_OPSET} (onnx.version_converter)"


def structure_counts(model) -> dict[str, int]:
    """What folding must keep: grouped convolutions and feature-map concatenations, and the node count."""
    return {"grouped_convs": onnx_grouped_conv_count(model), "concats": onnx_concat_count(model),
            "nodes": len(model.graph.node)}


def fold_shapes(model, where: str):
    """onnxsim on the pinned graph: shape-only subgraphs folded into constants. Returns (model, change).
    Grouped convolutions and feature-map concatenations must survive (InvariantBroken, exit 1, if not)."""
    import onnxsim

    before = structure_counts(model)
    sink = io.StringIO()
    try:
        with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            simplified, _ = onnxsim.simplify(model, check_n=0)
    except Exception as exc:
        raise BadInput(f"{where}: onnxsim cannot fold the graph ({one_line(exc, 200)}); nothing was written",
                       hint="check that the file runs in ONNX Runtime at this input shape") from None
    after = structure_counts(simplified)
    for key, what in (("grouped_convs", "grouped convolutions"), ("concats", "feature-map concatenations")):
        if after[key] != before[key]:
            raise InvariantBroken(f"{where}: folding changed the {what} from {before[key]} to {after[key]}; "
                                  "nothing was written")
    if after["nodes"] == before["nodes"] and len(simplified.graph.initializer) == len(model.graph.initializer):
        return simplified, None
    return simplified, (f"shape-only subgraphs folded with onnxsim: {before['nodes']} -> {after['nodes']} nodes "
                        f"({after['grouped_convs']} grouped conv(s), {after['concats']} feature-map concat(s) kept)")
