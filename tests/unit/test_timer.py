"""The one interleaved timer (edgekit/runtimes/timer.py) on a fake clock: rotation, warm-up, the time budget, pacing
and medians. Every duration is the fake clock's, so the assertions are exact and never depend on this machine."""

from __future__ import annotations

import numpy as np
import pytest

from edgekit.ondevice import ort_worker
from edgekit.runtimes import timer
from tests.fakes import FakeClock, FakeRunner


@pytest.fixture
def clock(monkeypatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(timer, "time", fake)
    monkeypatch.setattr(ort_worker, "time", fake)  # the pacing is the device's own (ort_worker.wait_for_tick)
    return fake


def _runs(clock: FakeClock, costs: dict[str, list[float] | float], log: list[str]):
    """label -> a call that logs its label and advances the clock by its next cost (ms)."""
    def make(label, cost):
        seq = list(cost) if isinstance(cost, list) else None

        def call():
            log.append(label)
            clock.advance((seq.pop(0) if seq else cost) / 1000)
        return call
    return {label: make(label, cost) for label, cost in costs.items()}


def test_rotation_is_a_b_c_per_round():
    assert timer.rotation(["a", "b", "c"], 2) == ["a", "b", "c", "a", "b", "c"]
    assert timer.rotation(["a"], 0) == []


def test_interleaved_warms_up_untimed_then_rotates_and_measures_each_call(clock):
    log: list[str] = []
    runs = _runs(clock, {"fp32": [9.0, 4.0, 5.0, 6.0], "int8": [9.0, 1.0, 2.0, 3.0]}, log)
    samples, order = timer.interleaved(runs, 3, warmup=1)
    assert log == ["fp32", "int8"] * 4  # one warm-up round, then A B A B A B
    assert order == ["fp32", "int8"] * 3
    assert samples == {"fp32": pytest.approx([4.0, 5.0, 6.0]), "int8": pytest.approx([1.0, 2.0, 3.0])}


def test_a_time_budget_adds_whole_rounds_until_spent(clock):
    log: list[str] = []
    samples, order = timer.interleaved(_runs(clock, {"a": 10.0, "b": 30.0}, log), 1, warmup=0, seconds=0.1)
    # each round takes 40 ms: rounds start at 0, 40, 80 ms; the third ends at 120 ms >= 100 ms
    assert order == ["a", "b"] * 3 and len(samples["a"]) == len(samples["b"]) == 3


def test_progress_counts_every_timed_call(clock):
    seen = []
    timer.interleaved(_runs(clock, {"a": 1.0, "b": 1.0}, []), 2, warmup=0, on_progress=lambda i, n: seen.append((i, n)))
    assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)]


def test_medians_are_per_candidate_medians_of_the_interleaved_samples(clock):
    medians = timer.medians(_runs(clock, {"a": [0, 5.0, 1.0, 9.0], "b": [0, 2.0, 2.0, 100.0]}, []), 3, warmup=1)
    assert medians == {"a": pytest.approx(5.0), "b": pytest.approx(2.0)}


def test_percentiles_are_numpys_and_refuse_no_samples():
    assert timer.percentiles([1.0, 2.0, 3.0, 4.0]) == pytest.approx((2.5, 3.7, 2.5))
    with pytest.raises(ValueError):
        timer.percentiles([])


def test_paced_calls_sleep_out_the_interval_and_never_catch_up_in_a_burst(clock):
    log: list[str] = []
    samples = timer.paced(_runs(clock, {"a": [2.0, 2.0, 2.0], "b": [25.0, 3.0, 3.0]}, log), 3, interval_ms=10)
    assert log == ["a", "b"] * 3
    assert samples == {"a": pytest.approx([2.0, 2.0, 2.0]), "b": pytest.approx([25.0, 3.0, 3.0])}
    # a sleeps out its 10 ms (8 ms); b overruns its tick (25 ms): no sleep, and the ticks restart from then, so the
    # calls after it are paced again (8, 7, 8, 7 ms) instead of running back to back to catch up
    assert clock.sleeps == pytest.approx([0.008, 0.008, 0.007, 0.008, 0.007])


def test_fake_runners_timed_calls_are_what_the_timer_reports(clock):
    fast, slow = FakeRunner(clock=clock, cost_ms=2.0), FakeRunner(clock=clock, cost_ms=7.0)
    x = np.zeros((1, 3, 8, 8), dtype=np.float32)
    medians = timer.medians({"fast": fast.timed_runner(x), "slow": slow.timed_runner(x)}, 5)
    assert medians == {"fast": pytest.approx(2.0), "slow": pytest.approx(7.0)}
    assert fast.calls == slow.calls == [1] * 6  # one warm-up and five timed calls each
