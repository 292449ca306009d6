"""An experiment kept for the record (issue 32): ONNX Runtime's two x86 int8 conv kernels, chosen in the file.

ORT's QLinearConv (onnxruntime/core/providers/cpu/quantization/qlinearconv.cc) packs a conv whose weights are
symmetric (every weight zero point 0) for MLAS's ConvSym kernels (AVX2 / AVX-512 / VNNI); any other conv runs
im2col + MLAS's u8s8 GEMM, whose dispatch on a CPU with AMX is the AMX tile kernel. ConvSym has no AMX kernel.
Writing a weight tensor of codes q with zero point 0 as q+1 with zero point 1 (or q-1 with -1) keeps the same real
weights and integer products, so every CPU computes the same outputs, but ORT then runs the conv as a GEMM.

Measured on an Intel Xeon with AMX (docs/bench-openvino.md, "ORT's conv kernels and AMX"): per node, convs with
K >= 512 ran 1.3-1.9x faster as a GEMM and short 1x1 convs slower; whole models were slower with the thread pool's
spinning off and 1-10 % faster with it on; OpenVINO runs the moved convs in f32. So edgekit's recipes do not do it.

    .venv/bin/python benchmarks/ort_conv_kernels.py INT8.onnx OUT.onnx [--min-k 512]
    .venv/bin/python benchmarks/ort_vs_openvino.py --folder DIR --extra "gemm=OUT.onnx"

writes OUT.onnx with the convs moved and checks, in ORT on this CPU, that it computes bit-identical outputs.
"""

from __future__ import annotations

import argparse
import sys

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


def main() -> int:
    import onnx
    import onnxruntime as ort

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("int8", help="an int8 QDQ file (edgekit quantize)")
    ap.add_argument("out")
    ap.add_argument("--min-k", type=int, default=512)
    args = ap.parse_args()
    model = onnx.load(args.int8)
    done = gemm_convs(model, args.min_k)
    onnx.save(model, args.out)
    outs = []
    for path in (args.int8, args.out):
        session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        feed = session.get_inputs()[0]
        shape = [d if isinstance(d, int) else 1 for d in feed.shape]
        outs.append(session.run(None, {feed.name: np.random.default_rng(0).standard_normal(shape).astype(np.float32)})[0])
    moved = sum("shift" in d for d in done)
    same = np.array_equal(outs[0], outs[1])
    print(f"{args.out}: {moved} convs moved to the GEMM, {len(done) - moved} kept; outputs bit-identical: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
