"""--reduce: the smallest failing subgraph, for a bug report.

For each culprit group (search.py), the int8 graph is cut between the group's inputs (the float tensors its
quantizers read, and any other tensor its ops read from outside) and its ops' outputs (onnx.utils.Extractor), and the
same cut is made in the graph with that group reverted to fp32. Both run on the group's real inputs, captured from
the file with every group reverted (float all the way, the int8 graph's tensor names). The first group whose int8
subgraph fails the SQNR gate against its fp32 twin is written under -o: subgraph.onnx (int8), subgraph.fp32.onnx,
inputs.npz (one array per input name). When no group fails alone, all the culprit groups together are tried; when
that passes too, nothing is written, and a note says why: the file fails only on top-1 agreement (its SQNR passes the
gate, as torchvision's mobilenet_v3_small under the trained-weight gates), or the error builds up through the layers
between them."""

from __future__ import annotations

import dataclasses
import io
import shutil
from pathlib import Path

import numpy as np

MAX_SAMPLES = 8  # inputs kept for the subgraph (the .npz stays small enough to attach to a report)


def _boundary(model, group) -> tuple[list[str], list[str]]:
    produced = {o for n in model.graph.node for o in n.output}
    inits = {t.name for t in model.graph.initializer}
    ops = [n for n in model.graph.node if (n.name or n.output[0]) in set(group.nodes)]
    inner = {o for n in ops for o in n.output}
    inputs = list(group.activations)
    by_output = {o: n for n in model.graph.node for o in n.output}

    def visit(name: str) -> None:  # an op input: a constant, one of the group's DQ outputs, or from outside
        if not name or name in inits or name in inner or name in inputs:
            return
        node = by_output.get(name)
        if node is not None and node.op_type in ("DequantizeLinear", "QuantizeLinear"):
            for upstream in node.input:
                visit(upstream)
            return
        if name in produced or name in {i.name for i in model.graph.input}:
            inputs.append(name)

    for op in ops:
        for name in op.input:
            visit(name)
    outputs = [o for n in ops for o in n.output if o]
    return inputs, outputs


def _extract(model, inputs: list[str], outputs: list[str]):
    import onnx
    from onnx.utils import Extractor

    inferred = onnx.shape_inference.infer_shapes(model)
    return Extractor(inferred).extract_model(inputs, outputs)


def _run(model, feeds: dict[str, np.ndarray], session_config: dict | None) -> list[np.ndarray]:
    from edgekit.runtimes.ort import create_session

    session = create_session(model.SerializeToString(), "cpu", session_config=session_config or None)
    count = len(next(iter(feeds.values())))
    rows = [session.run({k: v[i:i + 1] for k, v in feeds.items()}) for i in range(count)]
    return [np.concatenate([r[j] for r in rows]) for j in range(len(rows[0]))]


def _float_config(evaluate) -> dict:
    """The session options for a graph with float ops between quantized ones (this CPU's; --reduce runs here)."""
    from edgekit.runtimes.factory import session_options

    return session_options(evaluate.int8.recipe, keep_float=True)


def _captured(evaluate, groups, names: list[str], x: np.ndarray) -> dict[str, np.ndarray]:
    """The tensors `names` on `x`, from the file with every group reverted."""
    from onnx import TensorProto, helper

    model = evaluate.model_with(groups)
    model.graph.output.extend(helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in names)
    outs = _run(model, {model.graph.input[0].name: x}, _float_config(evaluate))
    return dict(zip(names, outs[-len(names):]))


def reduce_group(int8, evaluate, culprits, output: Path | None, tolerance, notes: list[str]) -> dict | None:
    """Write the first culprit group's subgraph that fails on its own (else all of theirs together); its
    description, or None (a note says why)."""
    import onnx

    from edgekit.judge.compare import compare_outputs
    from edgekit.layer_error.groups import Group, qdq_groups
    from edgekit.onnxfile.outputs import commit_folder, stage_folder, write_error

    gate = dataclasses.replace(tolerance, atol=None, rtol=None, same_top1=False, min_top1_agreement=None)
    x = evaluate.x[:MAX_SAMPLES]
    every = qdq_groups(int8.proto, evaluate.parent.proto)
    config = _float_config(evaluate)
    candidates = [[g] for g in culprits]
    if len(culprits) > 1:  # no single group may fail on its own: then all of them together
        candidates.append(list(culprits))
    for chosen in candidates:
        group = chosen[0] if len(chosen) == 1 else Group(
            -1, list(dict.fromkeys(a for g in chosen for a in g.activations)),
            list(dict.fromkeys(n for g in chosen for n in g.nodes)), [])
        inputs, outputs = _boundary(int8.proto, group)
        feeds = _captured(evaluate, every, inputs, x)
        quantized = _extract(int8.proto, inputs, outputs)
        floating = _extract(evaluate.model_with(chosen), inputs, outputs)
        got = _run(quantized, feeds, config)
        want = _run(floating, feeds, config)
        metrics = [compare_outputs(w, g, name, gate) for name, w, g in zip(outputs, want, got)]
        if all(m.passed for m in metrics):
            continue
        folder = Path(output) if output is not None else int8.path.with_name(int8.path.stem + ".debug")
        staged = stage_folder(folder)
        try:
            onnx.save(quantized, str(staged / "subgraph.onnx"))
            onnx.save(floating, str(staged / "subgraph.fp32.onnx"))
            buffer = io.BytesIO()
            np.savez(buffer, **feeds)
            (staged / "inputs.npz").write_bytes(buffer.getvalue())
            commit_folder(staged, folder)
        except BaseException as exc:
            shutil.rmtree(staged, ignore_errors=True)
            if isinstance(exc, OSError):
                raise write_error(folder, exc) from None
            raise
        return {"folder": str(folder), "groups": [g.index for g in chosen], "nodes": len(quantized.graph.node),
                "ops": group.nodes, "inputs": inputs, "outputs": outputs,
                "sqnr_db": min(m.sqnr_db for m in metrics), "gate_db": gate.min_sqnr_db,
                "failures": [f for m in metrics for f in m.failures]}
    as_is = evaluate([])  # judged already (cached): why no subgraph fails
    if gate.min_sqnr_db is not None and as_is.sqnr_db >= gate.min_sqnr_db:
        why = (f"the file itself passes that gate (SQNR {as_is.sqnr_db:.1f} dB) and fails only on "
               f"{'; '.join(as_is.failures)}, a decision no subgraph makes")
    else:
        why = "the error builds up through the layers between them"
    notes.append("--reduce: neither a culprit group alone nor all of them together fail the gate as a subgraph "
                 f"({why}); nothing written (gate {gate.min_sqnr_db} dB SQNR)")
    return None
