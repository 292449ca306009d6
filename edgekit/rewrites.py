"""Graph rewrites before quantization, each checked by its caller to compute the same function in float."""

from __future__ import annotations

import numpy as np


def batchnorm_as_depthwise(model) -> int:
    """Rewrite each 4-D BatchNormalization (inference form) as the depthwise 1x1 Conv it equals:
    weight gamma/sqrt(var+eps) per channel, bias beta - weight*mean. Returns how many were rewritten.

    Run after ORT's pre-processing, which has already folded every BN that follows a Conv; what is
    left (DenseNet's pre-activation BN after each Concat) has no int8 kernel, but a depthwise
    QLinearConv does.
    """
    from onnx import helper, numpy_helper

    initializers = {t.name: t for t in model.graph.initializer}
    rewritten = 0
    nodes = []
    for node in model.graph.node:
        params = node.input[1:5]
        if node.op_type != "BatchNormalization" or len(node.output) != 1 or not all(p in initializers for p in params):
            nodes.append(node)
            continue
        scale, bias, mean, var = (numpy_helper.to_array(initializers[p]).astype(np.float64) for p in params)
        eps = next((a.f for a in node.attribute if a.name == "epsilon"), 1e-5)
        weight = scale / np.sqrt(var + eps)
        channels = len(weight)
        base = (node.name or node.output[0]) + "_as_depthwise"
        model.graph.initializer.extend([
            numpy_helper.from_array(weight.reshape(channels, 1, 1, 1).astype(np.float32), base + ".weight"),
            numpy_helper.from_array((bias - weight * mean).astype(np.float32), base + ".bias"),
        ])
        nodes.append(helper.make_node(
            "Conv", [node.input[0], base + ".weight", base + ".bias"], list(node.output),
            name=base, group=channels, kernel_shape=[1, 1],
        ))
        rewritten += 1
    if rewritten:
        del model.graph.node[:]
        model.graph.node.extend(nodes)
        used = {name for n in model.graph.node for name in n.input}
        kept = [t for t in model.graph.initializer if t.name in used]
        del model.graph.initializer[:]
        model.graph.initializer.extend(kept)
    return rewritten
