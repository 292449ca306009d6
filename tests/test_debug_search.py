"""debug's search on its own: which groups it keeps and how many ORT runs that takes, judged by a stand-in for the
ONNX Runtime runs (the search only asks whether a set of groups passes, and counts the runs)."""

from __future__ import annotations

import math
from types import SimpleNamespace

from edgekit.debug.search import MAX_DROP_RUNS, drop_unneeded, search


class Judge:
    """Passes a set of groups iff it holds every needed one; counts the sets judged, each once (as Evaluator)."""

    def __init__(self, needed: set[int]):
        self.needed, self.runs, self.seen = needed, 0, set()

    def __call__(self, groups):
        key = frozenset(g.index for g in groups)
        if key not in self.seen:
            self.seen.add(key)
            self.runs += 1
        passed = self.needed <= key
        return SimpleNamespace(passed=passed, failures=[] if passed else ["top-1 agreement 91.7% < 95.0%"])


def groups(count: int) -> list:
    return [SimpleNamespace(index=i) for i in range(count)]


def test_many_unneeded_groups_between_two_culprits_go_in_a_few_runs():
    # efficientnet_b0 under the trained gates: the culprits were groups 9 and 159 of 166, with 149 between; the
    # one-by-one pass tried 24 of those and kept 143 groups. Blocks of halves, quarters... drop them all
    judge = Judge({9, 40, 159})
    kept, finished = drop_unneeded(groups(166)[9:160], judge)
    assert finished and [g.index for g in kept] == [9, 40, 159]
    assert judge.runs <= 2 * math.log2(149) * 2 + 4, judge.runs  # two needed groups: a few runs per halving


def test_the_search_keeps_only_what_the_gates_need_and_says_when_it_stopped_early():
    judge = Judge({3, 50, 51, 97})
    steps, notes = [], []
    chosen, after = search(groups(120), judge, steps, notes)
    assert after.passed and {g.index for g in chosen} == {3, 50, 51, 97} and not notes
    assert sum(s.runs for s in steps) == judge.runs
    # every group between needed: the last step stops at its limit, keeps what it did not try, and says so
    everything = set(range(10, 110))
    judge = Judge(everything)
    chosen, after = search(groups(120), judge, steps := [], notes := [])
    assert after.passed and {g.index for g in chosen} == everything
    assert steps[-1].runs <= MAX_DROP_RUNS + 1 and notes and "limit" in notes[0]
