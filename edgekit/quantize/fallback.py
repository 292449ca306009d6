"""The accuracy budget's fp32 fallback: when full int8 misses the budget, rank the nodes by the error they add
(layer_error's per-layer analysis, as the target computes) and keep the fewest leading ones in fp32 that meet it;
and the one line said when nothing meets it."""

from __future__ import annotations

import time
from pathlib import Path

from edgekit.core.errors import GateFailed
from edgekit.judge.targets import KEEP_FLOAT_SESSION
from edgekit.onnxfile.artifact import load_work_file
from edgekit.quantize.budget import Budget, Fallback, search
from edgekit.runtimes.runners import latency_ms
from edgekit.quantize.calibration import CalibrationSet
from edgekit.quantize.static import int8_weight_count

WEIGHTED_OPS = {"Conv", "Gemm", "MatMul"}


def meet_budget(trial, o, model_path: Path, pre: Path, full: Path, calib: CalibrationSet, batch, judgement,
                budget: Budget, measure, make, stage, excluded, notes: list[str]):
    """The full int8 file's TRIAL, or (when it misses the budget) the fallback's: returns (trial, fallback or None,
    the chosen file). Nothing meets it, or the fallback is off: GateFailed, one line."""
    if trial.passed(budget):
        return trial, None, full
    if not o.fallback:
        budget_missed(trial, budget, calib, judgement, "; fp32 fallback off (--no-fallback)")
    fallback = fallback_search(pre, full, calib.holdout, judgement, budget, measure, make, stage, excluded,
                               trial.holdout.sqnr_db)
    if fallback.chosen is None:
        best = max(fallback.trials, key=lambda t: t.holdout.sqnr_db) if fallback.trials else trial
        budget_missed(best, budget, calib, judgement,
                      f"; keeping up to {len(fallback.trials[-1].fp32_nodes) if fallback.trials else 0} "
                      "of the most sensitive nodes in fp32 did not meet it either")
    trial = fallback.chosen
    chosen = trial.path  # the search made and measured it already
    notes.append(
        f"full int8 missed the budget; {len(trial.fp32_nodes)} node(s) kept in fp32 to meet it: {', '.join(trial.fp32_nodes)}"
    )
    fallback.latency_ms = latency_ms(
        {"fp32": model_path, "int8": full, "mixed": chosen}, calib.holdout[: batch or 1],
        {"mixed": dict(KEEP_FLOAT_SESSION)},
    )
    return trial, fallback, chosen


def output_layers(graph, report, full_sqnr: float, excluded, ranked: set[str]) -> list[dict]:
    """Layers whose output is a graph output (the classifier): it is not quantized, so the per-layer
    analysis has no row for it; the noise it adds is the logits' minus its input's."""
    outputs = {o.name for o in graph.output}
    sqnr_of = {a.tensor: a.sqnr_db for a in report.activations}
    rows = []
    for node in graph.node:
        if node.op_type not in WEIGHTED_OPS or node.name in excluded or node.name in ranked:
            continue
        if not set(node.output) & outputs:
            continue
        input_sqnr = sqnr_of.get(node.input[0], float("inf"))
        added = 10 ** (-full_sqnr / 10) - (10 ** (-input_sqnr / 10) if input_sqnr != float("inf") else 0.0)
        rows.append({"node": node.name, "op_type": node.op_type, "sqnr_db": full_sqnr, "added_noise": added,
                     "output_layer": True})
    return rows


def fallback_search(pre: Path, full: Path, holdout, judgement, budget: Budget, measure, make, stage, excluded,
              full_sqnr: float) -> Fallback:
    """Rank the nodes by the error they add (per-layer analysis on the held-out images, as the target
    computes), then keep the fewest leading ones in fp32 that meet the budget."""
    from edgekit.layer_error import layer_errors

    started = time.perf_counter()
    stage("per-layer error (fp32 fallback)")
    report = layer_errors(pre, full, holdout, session_config=judgement.gate_session)
    graph = load_work_file(pre, external_data=False).graph
    weighted = {n.name for n in graph.node if n.op_type in WEIGHTED_OPS}
    outputs = {o.name for o in graph.output}
    output_nodes = {n.name for n in graph.node if n.op_type in WEIGHTED_OPS and set(n.output) & outputs}
    ranked = [
        {"node": a.fp32_node, "op_type": a.op_type, "sqnr_db": a.sqnr_db, "added_noise": a.added_noise,
         "output_layer": a.fp32_node in output_nodes}
        for a in report.ranked() if a.fp32_node not in excluded
    ]
    ranked += output_layers(graph, report, full_sqnr, excluded, {r["node"] for r in ranked})
    # Output layers first: the first-order estimate cannot see their error (their input noise is measured
    # before global pooling averages it away), yet on the digits resnext50_32x4d the int8 classifier alone,
    # every other layer in fp32, held the logits at 18.6 dB. They are a sliver of the compute.
    ranked.sort(key=lambda r: (not r.get("output_layer"), -r["added_noise"] if r["added_noise"] == r["added_noise"] else 0.0))
    order: list[str] = []
    for r in ranked:
        if r["node"] not in order:
            order.append(r["node"])
    # All in fp32 is not an int8 file: the least sensitive layer with weights stays quantized (it goes last,
    # and the search never reaches it).
    keep = next((n for n in reversed(order) if n in weighted), None)
    order = [n for n in order if n != keep]
    ranking = ranked[:50]

    def measure_trial(path: Path, nodes: list[str]):
        trial = measure(path, nodes)
        if not int8_weight_count(path):  # everything with weights kept in float: not an int8 file any more
            trial.holdout.failures.append("no 8-bit weights left: not an int8 file")
        return trial

    chosen, trials = search(order, lambda nodes: make(nodes, f"trial-{len(nodes)}.onnx"), measure_trial, budget, stage)
    return Fallback(ranking=ranking, trials=trials, chosen=chosen, seconds=time.perf_counter() - started)


def budget_missed(trial, budget: Budget, calib: CalibrationSet, judgement, why: str):
    kernels = f" (run with {judgement.kernels}, as its target computes)" if judgement.gate_session else ""
    reasons = list(trial.holdout.failures)
    if trial.drop is not None and budget.max_drop is not None and trial.drop > budget.max_drop:
        reasons.append(f"top-1 drop {trial.drop:.2f} points > --max-drop {budget.max_drop:g} on {budget.dataset.folder}")
    raise GateFailed(
        f"int8 model is not accurate enough against fp32 on {calib.holdout_description}{kernels}: "
        + "; ".join(reasons) + why + "; nothing was written",
        hint=(f"gates: {budget.gates}; " if budget.gates else "")
        + "try --method entropy/percentile, more calibration data, or --exclude the sensitive nodes"
        + ("; --min-agreement/--min-sqnr set other gates" if "weights unknown" in budget.gates else ""),
    )
