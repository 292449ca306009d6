"""The accuracy budget's fp32 fallback, NNCF's way (quantize_with_accuracy_control): quantize once, then revert QDQ
groups (edgekit.layer_error.groups: a quantizer and every op it feeds, so a residual Add or a Concat goes back with
its inputs) to fp32 inside that one quantized graph, weights restored from the fp32 parent; nothing is calibrated
or quantized again. The groups are ranked on the held-out samples where int8 and fp32 disagree most (at most 300),
each scored by the SQNR of those samples with that group alone reverted, run as the judged device runs the file;
then reverted in rank order: one worsening step is tolerated, a second is undone and the remaining groups are
re-ranked against the current model; it stops at the budget or when nothing is left. The file written is the
reverted graph that was measured. And the one line said when nothing meets the budget."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from edgekit.core.errors import GateFailed
from edgekit.judge.targets import KEEP_FLOAT_SESSION, merge_session_configs
from edgekit.onnxfile.artifact import load_work_file
from edgekit.quantize.budget import RANK_SAMPLES, Budget, Fallback, SensitivityCache, Step
from edgekit.runtimes.runners import latency_ms, run_onnx
from edgekit.quantize.calibration import CalibrationSet
from edgekit.quantize.static import int8_weight_count


def meet_budget(trial, o, model_path: Path, pre: Path, full: Path, calib: CalibrationSet, batch, judgement,
                budget: Budget, measure, stage, notes: list[str]):
    """The full int8 file's TRIAL, or (when it misses the budget) the fallback's: returns (trial, fallback or None,
    the chosen file). Nothing meets it, or the fallback is off: GateFailed, one line."""
    if trial.passed(budget):
        return trial, None, full
    if not o.fallback:
        budget_missed(trial, budget, calib, judgement, "; fp32 fallback off (--no-fallback)")
    fallback = fallback_search(pre, full, trial, budget, measure, stage, o.ranges_cache, batch)
    notes.extend(fallback.notes)
    if fallback.chosen is None:
        best = max(fallback.trials, key=lambda t: t.holdout.sqnr_db) if fallback.trials else trial
        budget_missed(best, budget, calib, judgement,
                      f"; reverting {len(fallback.trials)} of {fallback.groups} QDQ group(s) to fp32, one at a time "
                      "in order of sensitivity, did not meet it either")
    trial = fallback.chosen
    chosen = trial.path  # the reverted graph the search measured: the bytes that ship
    notes.append(f"full int8 missed the budget; {fallback.reverted} QDQ group(s) reverted to fp32 to meet it "
                 f"({len(trial.fp32_nodes)} node(s)): {', '.join(trial.fp32_nodes)}")
    fallback.latency_ms = latency_ms(
        {"fp32": model_path, "int8": full, "mixed": chosen}, calib.holdout[: batch or 1],
        {"mixed": dict(KEEP_FLOAT_SESSION)},
    )
    return trial, fallback, chosen


def rank_samples(held_out: int) -> int:
    """How many of the most-disagreeing held-out samples rank the groups: NNCF's 300 at most, and a quarter of a
    small held-out set (at least 8): the ranking runs one session per group, and its cost is those samples'
    inference; the steps are still measured on every held-out sample."""
    return min(RANK_SAMPLES, held_out, max(8, held_out // 4))


def _sqnr(reference: np.ndarray, candidate: np.ndarray) -> float:
    ref = reference.reshape(len(reference), -1).astype(np.float64)
    noise = float(np.sum((ref - candidate.reshape(len(candidate), -1)) ** 2))
    signal = float(np.sum(ref ** 2))
    return float("inf") if noise == 0 else 10.0 * np.log10(max(signal, 1e-30) / noise)


def fallback_search(pre: Path, full: Path, first, budget: Budget, measure, stage, store, batch) -> Fallback:
    """Revert QDQ groups of FULL (quantized from PRE) to fp32 until the budget is met (see the module docstring)."""
    from edgekit.layer_error.groups import exclude_arguments, qdq_groups, revert

    started = time.perf_counter()
    stage("fp32 fallback: QDQ groups")
    int8, fp32 = load_work_file(full), load_work_file(pre)
    groups = qdq_groups(int8, fp32)
    by_index = {g.index: g for g in groups}
    config = merge_session_configs(measure.session_config, KEEP_FLOAT_SESSION)  # float nodes must stay float
    runs = {"rank": 0, "steps": 0}

    def run(model, x):
        runs["rank"] += 1
        return run_onnx(model, x, batch, config or None, device=measure.device)

    # the samples where int8 and fp32 disagree most (NNCF ranks on 300)
    ref_all = measure.fp32_holdout
    int8_out = run_onnx(full, measure.holdout, batch, config or None, device=measure.device)
    err = np.sum((ref_all.reshape(len(ref_all), -1) - int8_out.reshape(len(int8_out), -1)) ** 2, axis=1)
    subset = np.sort(np.argsort(-err, kind="stable")[:rank_samples(len(err))])
    x, ref = measure.holdout[subset], ref_all[subset]

    cache = SensitivityCache(store, [full.read_bytes(), pre.read_bytes(), np.ascontiguousarray(x).tobytes(),
                                     str(measure.device).encode(), repr(sorted((config or {}).items())).encode()])
    fallback = Fallback(ranking=[], groups=len(groups))
    scores = cache.load([g.index for g in groups])
    if cache.note:
        fallback.notes.append(cache.note)
    fallback.cached = scores is not None
    if scores is None:
        stage(f"fp32 fallback: ranking {len(groups)} QDQ groups on {len(x)} held-out samples")
        scores = {g.index: _sqnr(ref, run(revert(int8, fp32, [g]), x)) for g in groups}
        cache.save(scores)
    fallback.ranking = [
        {"node": n, "op_type": "group %d" % g.index, "sqnr_db": scores[g.index], "group": g.index}
        for g in sorted(groups, key=lambda g: -scores[g.index]) for n in g.fp32_nodes
    ]
    remaining = sorted(by_index, key=lambda i: (-scores[i], i))
    reverted: list[int] = []
    current_sqnr, worse = first.holdout.sqnr_db, 0
    while remaining:
        index = remaining.pop(0)
        chosen = [by_index[i] for i in reverted + [index]]
        model = revert(int8, fp32, chosen)
        if not int8_weight_count(model):  # everything with weights in float: not an int8 file any more
            fallback.notes.append(f"group {index} left: reverting it too leaves no 8-bit weights (not an int8 file)")
            continue
        path = full.parent / f"fallback-{len(fallback.steps) + 1}.onnx"
        import onnx

        onnx.save(model, str(path))
        nodes = exclude_arguments(chosen)
        stage(f"fp32 fallback step {len(fallback.steps) + 1}: group {index} back to fp32")
        runs["steps"] += 1
        trial = measure(path, nodes, dataset=False)
        if trial.holdout.passed and budget.dataset is not None:
            trial = measure(path, nodes)
        fallback.trials.append(trial)
        sqnr = trial.holdout.sqnr_db
        if trial.passed(budget):
            fallback.steps.append(Step(index, by_index[index].fp32_nodes, sqnr, trial, "met the budget"))
            fallback.chosen, fallback.reverted = trial, len(reverted) + 1
            break
        if sqnr >= current_sqnr:
            verdict, worse = "kept", 0
        elif worse == 0:
            verdict, worse = "kept (one worsening step tolerated)", 1
        else:
            verdict, worse = "undone", 0
        fallback.steps.append(Step(index, by_index[index].fp32_nodes, sqnr, trial, verdict))
        if verdict == "undone":  # re-rank what is left against the current model
            if remaining:
                stage(f"fp32 fallback: re-ranking {len(remaining)} groups against the current model")
                base = [by_index[i] for i in reverted]
                rescored = {i: _sqnr(ref, run(revert(int8, fp32, base + [by_index[i]]), x)) for i in remaining}
                remaining.sort(key=lambda i: (-rescored[i], i))
            continue
        reverted.append(index)
        current_sqnr = sqnr
    for n, step in enumerate(fallback.steps, 1):
        drop = "" if step.trial.drop is None else f", top-1 drop {step.trial.drop:+.2f} points"
        fallback.notes.append(f"fp32 fallback step {n}: group {step.group} ({', '.join(step.nodes)}): held-out SQNR "
                              f"{step.sqnr_db:.1f} dB{drop}; {step.verdict}")
    fallback.runs = dict(runs, cached_ranking=fallback.cached)
    fallback.seconds = time.perf_counter() - started
    return fallback


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
