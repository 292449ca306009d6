"""The quantize budget's decisions (edgekit/quantize/budget.py, fallback.py) with a fake measure: how QDQ groups are
ranked, the one tolerated worsening step, the step undone and the re-ranking after it, stopping at the budget, and
the one line when nothing meets it. No ONNX graph is built or run: a "model" is the set of groups reverted to fp32,
and its outputs are the fake runner's exact logits plus, per group still in int8, that group's error.

Each group's error lies along one class axis scaled by the sample's logit norm, so errors of different axes are
exactly orthogonal and every SQNR below is exact on any subset of samples: with errors c_g along axes, the
error power relative to the signal is the sum over axes of (the sum of the c_g still int8 on that axis) squared."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from edgekit.core.errors import GateFailed
from edgekit.judge.compare import Tolerance, compare_outputs
from edgekit.quantize import budget as budget_mod
from edgekit.quantize import fallback
from edgekit.quantize.budget import Budget, Trial
from tests.fakes import FakeRunner

# group index -> (class axis, coefficient): groups 0, 1, 2, 5 and 6 share an axis (their errors add and cancel, so
# a group's worth depends on what is already reverted); 3 and 4 are independent
GROUPS = {0: (0, 1.0), 1: (0, -0.6), 2: (0, -0.6), 3: (1, 0.3), 4: (2, 0.05), 5: (0, -0.6), 6: (0, 0.4)}
HOLDOUT = np.random.default_rng(3).random((32, 3, 8, 8), dtype=np.float32)
REFERENCE = FakeRunner().expected(HOLDOUT)


def _error_power(reverted: frozenset) -> float:
    axes: dict[int, float] = {}
    for g, (axis, c) in GROUPS.items():
        if g not in reverted:
            axes[axis] = axes.get(axis, 0.0) + c
    return sum(v * v for v in axes.values())


def _outputs(reverted: frozenset, x: np.ndarray) -> np.ndarray:
    rows = {row.tobytes(): i for i, row in enumerate(HOLDOUT)}
    index = [rows[r.tobytes()] for r in np.ascontiguousarray(x)]
    ref = REFERENCE[index]
    out = ref.astype(np.float64).copy()
    norms = np.linalg.norm(ref.astype(np.float64), axis=1)
    for g, (axis, c) in GROUPS.items():
        if g not in reverted:
            out[:, axis] += c * norms
    return out.astype(np.float32)


class FakeMeasure:
    """budget.Measure's surface: the held-out set, the fp32 outputs on it, and a call that measures a file."""

    def __init__(self, budget: Budget, saved: dict):
        self.holdout, self.fp32_holdout, self.budget = HOLDOUT, REFERENCE, budget
        self.session_config, self.device, self.saved, self.calls = None, None, saved, 0

    def __call__(self, path, fp32_nodes, session_config=..., dataset=True) -> Trial:
        self.calls += 1
        out = _outputs(self.saved.get(str(path), frozenset()), self.holdout)
        return Trial(list(fp32_nodes), compare_outputs(self.fp32_holdout, out, "logits", self.budget.tolerance),
                     path=Path(path))


class FakeGraphs:
    """fallback.QdqGraphs' surface: a "model" is the frozenset of groups reverted, its outputs _outputs'; saving
    records the model by path (what FakeMeasure then measures)."""

    def __init__(self, pre: Path, full: Path):
        self.pre, self.full = pre, full
        self.groups = [SimpleNamespace(index=g, fp32_nodes=[f"node{g}"]) for g in GROUPS]
        self.saved: dict[str, frozenset] = {}
        self.runs: list[frozenset] = []
        self.weights_left = lambda model: len(GROUPS) - len(model)

    def revert(self, chosen) -> frozenset:
        return frozenset(g.index for g in chosen)

    def exclude(self, chosen) -> list[str]:
        return [n for g in chosen for n in g.fp32_nodes]

    def save(self, model, path) -> None:
        self.saved[str(path)] = model

    def run(self, model, x, batch, config, device, threads=None) -> np.ndarray:
        reverted = model if isinstance(model, frozenset) else frozenset()  # a path: the full int8 file
        self.runs.append(reverted)
        return _outputs(reverted, x)

    def latency(self, paths, x, configs) -> dict[str, float]:
        return {k: 1.0 for k in paths}


@pytest.fixture
def fake_graphs(tmp_path):
    """The search's graph side faked (no ONNX graph, file or ORT session); the two files exist for the cache key."""
    pre, full = tmp_path / "pre.onnx", tmp_path / "full.int8.onnx"
    pre.write_bytes(b"fp32")
    full.write_bytes(b"int8")
    return FakeGraphs(pre, full)


def _budget(min_sqnr_db: float) -> Budget:
    return Budget(max_drop=None, dataset=None, tolerance=Tolerance(atol=None, rtol=None, same_top1=False,
                                                                   min_sqnr_db=min_sqnr_db))


def _search(fake_graphs, min_sqnr_db: float):
    budget = _budget(min_sqnr_db)
    measure = FakeMeasure(budget, fake_graphs.saved)
    first = measure(fake_graphs.full, [])
    return fallback.fallback_search(fake_graphs.pre, fake_graphs.full, first, budget, measure, lambda _s: None,
                                    None, None, graphs=fake_graphs), measure


def _db(reverted) -> float:
    return -10 * np.log10(_error_power(frozenset(reverted)))


def test_groups_are_ranked_by_the_sqnr_with_each_alone_reverted_ties_by_index(fake_graphs):
    result, _ = _search(fake_graphs, 8.5)
    assert [r["group"] for r in result.ranking] == [1, 2, 5, 3, 4, 6, 0]
    for r in result.ranking:
        assert r["sqnr_db"] == pytest.approx(_db({r["group"]}), abs=1e-3)


def test_it_stops_at_the_first_step_that_meets_the_budget(fake_graphs):
    result, _ = _search(fake_graphs, 8.5)  # group 1 alone back in fp32: 8.78 dB
    assert [s.verdict for s in result.steps] == ["met the budget"]
    assert result.chosen.fp32_nodes == ["node1"] and result.reverted == 1
    assert fake_graphs.saved[str(result.chosen.path)] == frozenset({1})


def test_one_worsening_step_is_tolerated_a_second_is_undone_and_the_rest_re_ranked(fake_graphs):
    result, _ = _search(fake_graphs, 30.0)  # nothing short of every group in fp32 reaches it
    steps = [(s.group, s.verdict) for s in result.steps]
    assert steps == [
        (1, "kept"),                                # 8.8 dB from 6.0
        (2, "kept (one worsening step tolerated)"),  # 1.4 dB
        (5, "undone"),                              # -3.1 dB: a second worsening step
        # re-ranked against {1, 2} in fp32: 0 (8.8 dB), 6 (6.0), 3 (1.9), 4 (1.4); the first ranking said 3, 4, 6, 0
        (0, "kept"),                                # 8.8 dB
        (6, "kept (one worsening step tolerated)"),  # 3.4 dB
        (3, "kept"), (4, "kept"),                   # 4.4, 4.4 dB: only group 5 left in int8
    ]
    for s in result.steps:
        assert s.sqnr_db == pytest.approx(_db({int(n[4:]) for n in s.trial.fp32_nodes}), abs=1e-3)
    assert result.chosen is None and len(result.trials) == 7
    assert all("node5" not in s.trial.fp32_nodes for s in result.steps[3:])  # the undone group stays int8


def test_reverting_every_group_is_never_tried_it_would_not_be_an_int8_file(fake_graphs):
    fake_graphs.weights_left = lambda model: 0 if len(model) >= 2 else 1
    result, _ = _search(fake_graphs, 30.0)
    assert all(len(t.fp32_nodes) < 2 for t in result.trials)
    assert any("leaves no 8-bit weights" in n for n in result.notes)


def _options(fallback_on: bool = True):
    return SimpleNamespace(fallback=fallback_on, ranges_cache=None)


def _calib():
    return SimpleNamespace(holdout=HOLDOUT, holdout_description="32 held-out images")


JUDGEMENT = SimpleNamespace(gate_session=None, kernels="")


def test_meet_budget_passes_a_file_that_meets_it_untouched(fake_graphs):
    budget = _budget(5.0)  # the full int8 file: 5.98 dB
    measure = FakeMeasure(budget, fake_graphs.saved)
    trial = measure(fake_graphs.full, [])
    out = fallback.meet_budget(trial, _options(), fake_graphs.pre, fake_graphs.pre, fake_graphs.full, _calib(), None,
                               JUDGEMENT, budget, measure, lambda _s: None, [], graphs=fake_graphs)
    assert out == (trial, None, fake_graphs.full)


def test_meet_budget_ships_the_reverted_graph_it_measured(fake_graphs):
    budget = _budget(8.5)
    measure = FakeMeasure(budget, fake_graphs.saved)
    notes: list[str] = []
    trial, result, chosen = fallback.meet_budget(
        measure(fake_graphs.full, []), _options(), fake_graphs.pre, fake_graphs.pre, fake_graphs.full, _calib(), None,
        JUDGEMENT, budget, measure, lambda _s: None, notes, graphs=fake_graphs)
    assert chosen == result.chosen.path and fake_graphs.saved[str(chosen)] == frozenset({1})
    assert trial.passed(budget) and any("1 QDQ group(s) reverted" in n for n in notes)


@pytest.mark.parametrize("fallback_on, said", [(False, "--no-fallback"), (True, "did not meet it either")])
def test_a_budget_nothing_meets_is_one_line(fake_graphs, fallback_on, said):
    budget = _budget(30.0)
    measure = FakeMeasure(budget, fake_graphs.saved)
    with pytest.raises(GateFailed) as raised:
        fallback.meet_budget(measure(fake_graphs.full, []), _options(fallback_on), fake_graphs.pre, fake_graphs.pre,
                             fake_graphs.full, _calib(), None, JUDGEMENT, budget, measure, lambda _s: None, [],
                             graphs=fake_graphs)
    message = str(raised.value)
    assert said in message and "nothing was written" in message and "\n" not in message
    assert "SQNR" in message


def test_a_trial_passes_on_its_held_out_gates_and_the_top1_drop():
    budget = Budget(max_drop=1.0, dataset=SimpleNamespace(folder="d", labels=np.zeros(4)),
                    tolerance=Tolerance(atol=None, rtol=None, same_top1=False, min_sqnr_db=10.0))
    good = compare_outputs(REFERENCE, REFERENCE, "logits", budget.tolerance)
    bad = compare_outputs(REFERENCE, _outputs(frozenset(), HOLDOUT), "logits", budget.tolerance)
    assert Trial([], good, fp32_top1=80.0, int8_top1=79.0).passed(budget)  # a drop of exactly the budget
    assert not Trial([], good, fp32_top1=80.0, int8_top1=78.9).passed(budget)
    assert not Trial([], bad, fp32_top1=80.0, int8_top1=80.0).passed(budget)
    assert Trial([], good).passed(budget)  # no labelled run: the held-out gates decide
    assert "top-1 drop <= 1 points" in budget.describe() and "SQNR >= 10 dB" in budget.describe()


@pytest.mark.parametrize("held_out, expected", [(4, 4), (20, 8), (100, 25), (4000, budget_mod.RANK_SAMPLES)])
def test_rank_samples_is_a_quarter_at_least_8_at_most_nncfs_300(held_out, expected):
    assert fallback.rank_samples(held_out) == expected


def test_ranking_runs_finishing_out_of_order_score_their_own_groups(fake_graphs, monkeypatch):
    """The ranking runs its sessions several at a time (fallback.ranking_workers); each group's score is its own
    run's, whatever order the runs finish in: here every run waits until the run after it has finished."""
    import threading

    monkeypatch.setattr(fallback, "ranking_workers", lambda: (len(GROUPS), 1))
    finished = {n: threading.Event() for n in range(len(GROUPS) + 2)}
    started, lock, run = [0], threading.Lock(), fake_graphs.run

    def reversed_order(model, *args, **kwargs):
        with lock:
            n = started[0] = started[0] + 1
        if isinstance(model, frozenset) and n <= len(GROUPS):  # the last one to start finishes first
            finished[n + 1].wait(timeout=10)
        out = run(model, *args, **kwargs)
        finished[n].set()
        return out

    fake_graphs.run = reversed_order
    result, _ = _search(fake_graphs, 8.5)
    assert [r["group"] for r in result.ranking] == [1, 2, 5, 3, 4, 6, 0]
    for r in result.ranking:
        assert r["sqnr_db"] == pytest.approx(_db({r["group"]}), abs=1e-3)
