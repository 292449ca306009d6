"""The accuracy budget's fp32 fallback, NNCF's way (quantize_with_accuracy_control): quantize once, then revert QDQ
groups (edgekit.layer_error.groups: a quantizer and every op it feeds, so a residual Add or a Concat goes back with
its inputs) to fp32 inside that one quantized graph, weights restored from the fp32 parent; nothing is calibrated
or quantized again. The groups are ranked on the held-out samples where int8 and fp32 disagree most (at most 300),
each scored by the SQNR of those samples with that group alone reverted, run as the judged device runs the file;
then reverted in rank order: one worsening step is tolerated, a second is undone and the remaining groups are
re-ranked against the current model; it stops at the budget or when nothing is left. The file written is the
reverted graph that was measured. And the one line said when nothing meets the budget.

Before the walk, a budget nothing can meet is found in at most one measurement: the file with every group reverted
but one (the most the walk can revert while the file stays int8) misses the SQNR gate, so the search stops there
instead of walking every group (why SQNR only: _bound_met). The group left in int8 is the one whose error alone is
smallest, estimated from the ranking's own runs (a group's error is the change its revert makes, kept signed, so
errors that cancel are not mistaken for small ones). That estimate also spares the measurement where it clears the
gate by a margin. The bound assumes no set of two or more int8 groups whose errors cancel beats the best single one."""

from __future__ import annotations

import os
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from pathlib import Path

import numpy as np

from edgekit.core.errors import GateFailed
from edgekit.onnxfile.artifact import load_work_file
from edgekit.quantize.budget import RANK_SAMPLES, Budget, Fallback, SensitivityCache, Step, Trial
from edgekit.runtimes.factory import session_options
from edgekit.runtimes.runners import latency_ms, run_onnx
from edgekit.quantize.calibration import CalibrationSet
from edgekit.quantize.static import int8_weight_count


def meet_budget(trial, o, model_path: Path, pre: Path, full: Path, calib: CalibrationSet, batch, judgement,
                budget: Budget, measure, stage, notes: list[str], graphs=None):
    """The full int8 file's TRIAL, or (when it misses the budget) the fallback's: returns (trial, fallback or None,
    the chosen file). Nothing meets it, or the fallback is off: GateFailed, one line. GRAPHS: the search's graph
    side (QdqGraphs of PRE and FULL when None)."""
    if trial.passed(budget):
        return trial, None, full
    if not o.fallback:
        budget_missed(trial, budget, calib, judgement, "; fp32 fallback off (--no-fallback)")
    fallback = fallback_search(pre, full, trial, budget, measure, stage, o.ranges_cache, batch, bound=True,
                               graphs=graphs)
    notes.extend(fallback.notes)
    if fallback.chosen is None:
        bound = fallback.bound
        if fallback.bound_stopped:
            budget_missed(bound, budget, calib, judgement,
                          f"; reverting {len(fallback.bound_groups)} of {fallback.groups} QDQ group(s) to fp32 (all but "
                          "the one whose error alone is smallest: the most it can revert) did not meet it either, so no "
                          "group was tried one at a time")
        best = max(fallback.trials, key=lambda t: t.holdout.sqnr_db) if fallback.trials else trial
        budget_missed(best, budget, calib, judgement,
                      f"; reverting {len(fallback.trials)} of {fallback.groups} QDQ group(s) to fp32, one at a time "
                      "in order of sensitivity, did not meet it either")
    trial = fallback.chosen
    chosen = trial.path  # the reverted graph the search measured: the bytes that ship
    notes.append(f"full int8 missed the budget; {fallback.reverted} QDQ group(s) reverted to fp32 to meet it "
                 f"({len(trial.fp32_nodes)} node(s)): {', '.join(trial.fp32_nodes)}")
    fallback.latency_ms = (graphs or QdqGraphs).latency(
        {"fp32": model_path, "int8": full, "mixed": chosen}, calib.holdout[: batch or 1],
        {"mixed": session_options(None, keep_float=True)},
    )
    return trial, fallback, chosen


def rank_samples(held_out: int) -> int:
    """How many of the most-disagreeing held-out samples rank the groups: NNCF's 300 at most, and a quarter of a
    small held-out set (at least 8): the ranking runs one session per group, and its cost is those samples'
    inference; the steps are still measured on every held-out sample."""
    return min(RANK_SAMPLES, held_out, max(8, held_out // 4))


def ranking_workers() -> tuple[int, int]:
    """(sessions run at a time, ORT threads each) for the ranking: up to 4 sessions, this process's cores shared
    between them."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    workers = max(1, min(4, cores))
    return workers, max(1, cores // workers)


def _sqnr(reference: np.ndarray, candidate: np.ndarray) -> float:
    ref = reference.reshape(len(reference), -1).astype(np.float64)
    noise = float(np.sum((ref - candidate.reshape(len(candidate), -1)) ** 2))
    signal = float(np.sum(ref ** 2))
    return float("inf") if noise == 0 else 10.0 * np.log10(max(signal, 1e-30) / noise)


class QdqGraphs:
    """The graph side of one fallback search, the one seam its decisions are tested through (tests/unit fake it):
    the int8 file and its fp32 parent with their QDQ groups (layer_error/groups.py), a group set reverted in memory,
    whether a graph still has 8-bit weights, the nodes quantize's --exclude takes for a set, saving a graph, and
    running one in ONNX Runtime on this machine or the judged device."""

    def __init__(self, pre: Path, full: Path):
        from edgekit.layer_error.groups import ParentWeights, qdq_groups

        self.int8, self.fp32 = load_work_file(full), load_work_file(pre)
        self.groups = qdq_groups(self.int8, self.fp32)
        self.weights = ParentWeights(self.fp32)  # each weight's parent value, found once for the whole search

    def revert(self, groups: list) -> "_Reverted":
        """The int8 graph with GROUPS back in fp32 (checked when it is first serialized, to run or to save)."""
        from edgekit.layer_error.groups import revert

        return _Reverted(revert(self.int8, self.fp32, groups, self.weights, check=False), groups)

    @staticmethod
    def weights_left(model: "_Reverted") -> int:
        return int8_weight_count(model.model)

    @staticmethod
    def exclude(groups: list) -> list[str]:
        from edgekit.layer_error.groups import exclude_arguments

        return exclude_arguments(groups)

    @staticmethod
    def save(model: "_Reverted", path: Path) -> None:
        path.write_bytes(model.data())  # onnx.save's bytes

    @staticmethod
    def run(model, x: np.ndarray, batch, config: dict | None, device: str | None, threads: int | None = None) \
            -> np.ndarray:
        """MODEL: a file (the full int8 one) or a reverted graph."""
        data = model.data() if isinstance(model, _Reverted) else model
        return run_onnx(data, x, batch, config, device=device, threads=threads)

    @staticmethod
    def latency(paths: dict[str, Path], x: np.ndarray, configs: dict) -> dict[str, float]:
        return latency_ms(paths, x, configs)


class _Reverted:
    """A reverted graph and its bytes, serialized and checked once (layer_error.groups.checked_bytes) whether it
    is run, saved or both."""

    def __init__(self, model, groups: list):
        self.model, self.groups, self._data = model, groups, None

    def data(self) -> bytes:
        if self._data is None:
            from edgekit.layer_error.groups import checked_bytes

            self._data = checked_bytes(self.model, self.groups)
        return self._data


class _Search:
    """What every step of one fallback search shares: the two graphs, their groups, the session options the judged
    device runs trials with (from the runner factory: the gated kernels, float nodes kept float), the ranking
    subset and its fp32 outputs, and the count of session runs."""

    def __init__(self, pre: Path, full: Path, measure, batch, graphs: QdqGraphs):
        self.pre, self.full, self.measure, self.batch, self.graphs = pre, full, measure, batch, graphs
        self.groups = graphs.groups
        self.by_index = {g.index: g for g in self.groups}
        self.config = session_options(None, keep_float=True, extra=measure.session_config)
        self.runs = {"rank": 0, "steps": 0}
        # the samples where int8 and fp32 disagree most (NNCF ranks on 300)
        ref_all = measure.fp32_holdout
        int8_out = graphs.run(full, measure.holdout, batch, self.config or None, measure.device)
        err = np.sum((ref_all.reshape(len(ref_all), -1) - int8_out.reshape(len(int8_out), -1)) ** 2, axis=1)
        subset = np.sort(np.argsort(-err, kind="stable")[:rank_samples(len(err))])
        self.x, self.ref, self.int8_x = measure.holdout[subset], ref_all[subset], int8_out[subset]

    def model(self, indices: list[int]):
        """The int8 graph with these groups back in fp32."""
        return self.graphs.revert([self.by_index[i] for i in indices])

    def outputs(self, sets: list[list[int]], said) -> list[np.ndarray]:
        """The ranking subset's outputs with each set of groups in fp32 (one session run each), SAID(n) before the
        n-th. The graphs are built here in order; their sessions run ranking_workers() at a time, one ORT thread each
        on a host of two cores (the same outputs bit for bit: integer kernels, and float convs whose sums do not
        depend on how rows are split between threads; a session's start and a batch-1 run keep one core busy, so
        two at a time take 0.5-0.7 of the time in turn). At most one graph waits beyond those running."""
        workers, threads = ranking_workers()
        results: list = [None] * len(sets)
        with ThreadPoolExecutor(workers) as pool:
            pending: dict = {}
            for n, indices in enumerate(sets):
                said(n)
                self.runs["rank"] += 1
                pending[pool.submit(self.graphs.run, self.model(indices), self.x, self.batch, self.config or None,
                                    self.measure.device, threads)] = n
                while len(pending) > workers:
                    done, _ = wait(pending, return_when=FIRST_COMPLETED)
                    for future in done:
                        results[pending.pop(future)] = future.result()
            for future, n in pending.items():
                results[n] = future.result()
        return results

    def trial(self, model, indices: list[int], name: str, budget: Budget) -> Trial:
        """MODEL saved as NAME beside the full file and measured on every held-out sample (and on the labelled set
        once the held-out gates pass)."""
        path = self.full.parent / name
        self.graphs.save(model, path)
        nodes = self.graphs.exclude([self.by_index[i] for i in indices])
        trial = self.measure(path, nodes, dataset=False)
        if trial.holdout.passed and budget.dataset is not None:
            trial = self.measure(path, nodes)
        return trial


def fallback_search(pre: Path, full: Path, first, budget: Budget, measure, stage, store, batch, *,
                    bound: bool = False, graphs: QdqGraphs | None = None) -> Fallback:
    """Revert QDQ groups of FULL (quantized from PRE) to fp32 until the budget is met (see the module docstring).
    With `bound`, the most the walk can revert is measured first, and a budget it misses is not walked. GRAPHS:
    the graph side (QdqGraphs of PRE and FULL when None)."""
    started = time.perf_counter()
    stage("fp32 fallback: QDQ groups")
    search = _Search(pre, full, measure, batch, graphs or QdqGraphs(pre, full))
    fallback = Fallback(ranking=[], groups=len(search.groups))
    tables = _rank(search, store, fallback, stage)
    remaining = sorted(search.by_index, key=lambda i: (-tables["scores"][i], i))
    if not bound or _bound_met(search, tables["alone"], budget, fallback, stage):
        _walk(search, remaining, first, budget, fallback, stage)
    if fallback.chosen is None and fallback.bound_met:  # the walk's order missed what the bound's file meets
        fallback.chosen, fallback.reverted = fallback.bound, len(fallback.bound_groups)
        fallback.notes.append(f"fp32 fallback: no step met the budget; the file with {fallback.reverted} of "
                              f"{fallback.groups} QDQ groups in fp32 measured before the walk did, and is the one kept")
    for n, step in enumerate(fallback.steps, 1):
        drop = "" if step.trial.drop is None else f", top-1 drop {step.trial.drop:+.2f} points"
        fallback.notes.append(f"fp32 fallback step {n}: group {step.group} ({', '.join(step.nodes)}): held-out SQNR "
                              f"{step.sqnr_db:.1f} dB{drop}; {step.verdict}")
    fallback.runs = dict(search.runs, cached_ranking=fallback.cached)
    fallback.seconds = time.perf_counter() - started
    return fallback


def _rank(search: _Search, store, fallback: Fallback, stage) -> dict[str, dict[int, float]]:
    """Each group's score (the ranking subset's SQNR with it alone in fp32) and its `alone` estimate (the subset's
    SQNR with it alone in int8: its error taken as the change its revert made, so errors that cancel stay signed),
    from the sensitivity cache or measured and cached; fills the fallback's ranking."""
    measure = search.measure
    cache = SensitivityCache(store, [search.full.read_bytes(), search.pre.read_bytes(),
                                     np.ascontiguousarray(search.x).tobytes(), str(measure.device).encode(),
                                     repr(sorted((search.config or {}).items())).encode()])
    tables = cache.load([g.index for g in search.groups])
    if cache.note:
        fallback.notes.append(cache.note)
    fallback.cached = tables is not None
    if tables is None:
        tables = {"scores": {}, "alone": {}}
        total = len(search.groups)
        outs = search.outputs([[g.index] for g in search.groups], lambda n: stage(
            f"fp32 fallback: ranking QDQ group {n + 1} of {total} on {len(search.x)} held-out samples"))
        for g, out in zip(search.groups, outs):
            tables["scores"][g.index] = _sqnr(search.ref, out)
            tables["alone"][g.index] = _sqnr(search.ref, search.ref + (search.int8_x - out))
        cache.save(tables)
    scores = tables["scores"]
    fallback.ranking = [
        {"node": n, "op_type": "group %d" % g.index, "sqnr_db": scores[g.index], "group": g.index}
        for g in sorted(search.groups, key=lambda g: -scores[g.index]) for n in g.fp32_nodes
    ]
    return tables


BOUND_MARGIN_DB = 3.0  # the ranking's estimate of the bound this far above the SQNR gate: not measured


def _bound_met(search: _Search, alone: dict[int, float], budget: Budget, fallback: Fallback, stage) -> bool:
    """Whether the walk can meet the SQNR gate: the file with every group in fp32 but the one whose error alone is
    smallest (ALONE: the ranking's estimate) among those that leave 8-bit weights, the most the walk can revert, is
    measured once; False (do not walk) when even that misses the gate. Not measured (True) when there is no SQNR
    gate, when no such file exists, or when the ranking's estimate clears the gate by BOUND_MARGIN_DB (it is taken on
    the samples int8 gets most wrong, so it errs low)."""
    # SQNR is an energy: to first order each int8 group adds its own, so a file short of the SQNR gate with one group
    # left in int8 is short of it with more. Top-1 agreement and a top-1 drop count flipped samples, which a group
    # more or less can flip either way: a miss on those alone still walks.
    gate = budget.tolerance.min_sqnr_db
    if gate is None:
        return True
    everything = sorted(alone)
    for keep in sorted(everything, key=lambda i: (-alone[i], i)):
        indices = [i for i in everything if i != keep]
        model = search.model(indices)
        if search.graphs.weights_left(model):
            break
    else:
        return True
    fallback.bound_groups, fallback.bound_estimate_db = sorted(indices), alone[keep]
    if alone[keep] >= gate + BOUND_MARGIN_DB:
        return True
    stage(f"fp32 fallback: can it be met? {len(indices)} of {len(everything)} QDQ groups in fp32")
    search.runs["bound"] = 1
    fallback.bound = search.trial(model, indices, "fallback-bound.onnx", budget)
    fallback.bound_met = fallback.bound.passed(budget)
    fallback.bound_stopped = not fallback.bound.holdout.sqnr_db >= gate
    return not fallback.bound_stopped


def _walk(search: _Search, remaining: list[int], first, budget: Budget, fallback: Fallback, stage) -> None:
    """Revert the groups in rank order (REMAINING, consumed), NNCF's way: one worsening step is tolerated, a second
    is undone and what is left re-ranked against the current model; stop at the budget."""
    reverted: list[int] = []
    current_sqnr, worse = first.holdout.sqnr_db, 0
    while remaining:
        index = remaining.pop(0)
        model = search.model(reverted + [index])
        if not search.graphs.weights_left(model):  # everything with weights in float: not an int8 file any more
            fallback.notes.append(f"group {index} left: reverting it too leaves no 8-bit weights (not an int8 file)")
            continue
        stage(f"fp32 fallback step {len(fallback.steps) + 1}: group {index} back to fp32")
        search.runs["steps"] += 1
        trial = search.trial(model, reverted + [index], f"fallback-{len(fallback.steps) + 1}.onnx", budget)
        fallback.trials.append(trial)
        sqnr, nodes = trial.holdout.sqnr_db, search.by_index[index].fp32_nodes
        if trial.passed(budget):
            fallback.steps.append(Step(index, nodes, sqnr, trial, "met the budget"))
            fallback.chosen, fallback.reverted = trial, len(reverted) + 1
            return
        if sqnr >= current_sqnr:
            verdict, worse = "kept", 0
        elif worse == 0:
            verdict, worse = "kept (one worsening step tolerated)", 1
        else:
            verdict, worse = "undone", 0
        fallback.steps.append(Step(index, nodes, sqnr, trial, verdict))
        if verdict == "undone":  # re-rank what is left against the current model
            if remaining:
                outs = search.outputs([reverted + [i] for i in remaining], lambda n: stage(
                    f"fp32 fallback: re-ranking group {n + 1} of {len(remaining)} against the current model"))
                rescored = {i: _sqnr(search.ref, out) for i, out in zip(remaining, outs)}
                remaining.sort(key=lambda i: (-rescored[i], i))
            continue
        reverted.append(index)
        current_sqnr = sqnr


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
