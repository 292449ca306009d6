"""Which of ONNX Runtime's x86 int8 conv kernels a QLinearConv runs, chosen in the file, exactly.

ORT's QLinearConv (onnxruntime/core/providers/cpu/quantization/qlinearconv.cc) packs a conv whose weights are
symmetric (every weight zero point 0) for MLAS's ConvSym kernels, written for AVX2 / AVX-512 / VNNI; any other
conv runs im2col + MLAS's u8s8 GEMM, whose dispatch on a CPU with AMX is the AMX tile kernel. ConvSym has no AMX
kernel, so on an AMX CPU a conv with a long reduction (K = input channels x kernel area) runs faster as a GEMM.
Measured per node on an Intel Xeon with AMX (docs/bench-openvino.md, "ORT's two conv kernels"): K >= 512 convs
1.3-1.9x faster as a GEMM, 1x1 convs with K <= 256 at high resolution 0.45-0.9x, the RGB stem 1.2-1.5x.

The switch is exact: a weight tensor of codes q with zero point 0 is written as q+1 with zero point 1 (or q-1
with -1), the same real weights and the same integer products, so every CPU computes the same outputs as
before; only the kernel ORT picks changes. Codes that would leave int8 are never shifted (the conv keeps
ConvSym). With 7-bit weights (reduce_range) the shifted codes stay within [-64, 64], so an AVX2 CPU without
VNNI, which sums pairs of u8 x s8 products in int16, still cannot saturate (2 x 255 x 64 < 32767).
"""

from __future__ import annotations

import numpy as np


def _consumers(graph) -> dict[str, list]:
    out: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            out.setdefault(name, []).append(node)
    return out


def _group(node) -> int:
    return next((a.i for a in node.attribute if a.name == "group"), 1)


def gemm_convs(model, min_k: int) -> list[dict]:
    """Rewrite, in place, the weight zero point of every QDQ conv with K >= `min_k` (K per group for a grouped
    conv; depthwise convs are left alone) and of the stem (4 input channels or fewer) from 0 to +-1 so that ORT
    runs it as an int8 GEMM; returns one record per conv ({"conv", "k", "shift"}, or "kept" with the reason where
    the codes leave no room)."""
    from onnx import numpy_helper

    if min_k <= 0:
        return []
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    consumers = _consumers(graph)
    done = []
    for dq in graph.node:
        if dq.op_type != "DequantizeLinear" or len(dq.input) < 3 or dq.input[0] not in inits or dq.input[2] not in inits:
            continue
        convs = [c for c in consumers.get(dq.output[0], []) if c.op_type == "Conv" and c.input[1] == dq.output[0]]
        if len(convs) != 1 or len(consumers[dq.output[0]]) != 1:
            continue
        if len(consumers[dq.input[0]]) != 1 or len(consumers[dq.input[2]]) != 1:
            continue  # a shared code or zero-point tensor: another node would see the shift
        codes = numpy_helper.to_array(inits[dq.input[0]])
        zero = numpy_helper.to_array(inits[dq.input[2]])
        if codes.dtype != np.int8 or codes.ndim != 4 or zero.dtype != np.int8 or np.any(zero != 0):
            continue
        k = int(codes.shape[1] * codes.shape[2] * codes.shape[3])  # the weight's dim 1 is input channels per group
        if codes.shape[1] == 1 and _group(convs[0]) > 1:
            continue  # depthwise: ORT's own depthwise kernel
        if k < min_k and (codes.shape[1] > 4 or _group(convs[0]) > 1):
            continue
        name = convs[0].name or convs[0].output[0]
        shift = 1 if int(codes.max()) < 127 else (-1 if int(codes.min()) > -128 else 0)
        if not shift:
            done.append({"conv": name, "k": k, "kept": "its codes span all of int8"})
            continue
        shifted = (codes.astype(np.int16) + shift).astype(np.int8)
        inits[dq.input[0]].CopyFrom(numpy_helper.from_array(shifted, dq.input[0]))
        inits[dq.input[2]].CopyFrom(numpy_helper.from_array(np.full_like(zero, shift), dq.input[2]))
        done.append({"conv": name, "k": k, "shift": shift})
    return done
