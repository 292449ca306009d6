"""verify's comparator (edgekit/verify/comparator.py) on fake runners: one row per input set x batch, the batching
rule, the int8/random-input NaN-only rule, and each gate's pass and fail. No torch, no ORT session."""

from __future__ import annotations

import numpy as np
import pytest

from edgekit.judge.compare import DEFAULT_TOLERANCES, NAN_ONLY
from edgekit.verify.comparator import compare_rows, ort_runner, row_tolerance
from edgekit.verify.results import InputSet
from tests.fakes import FakeRunner

FP32, INT8 = DEFAULT_TOLERANCES["fp32"], DEFAULT_TOLERANCES["int8"]


def _sets(n: int = 12) -> list[InputSet]:
    rng = np.random.default_rng(7)
    return [InputSet("photos", "fake photos", rng.random((n, 3, 8, 8), dtype=np.float32)),
            InputSet("random", "seeded noise", rng.standard_normal((n, 3, 8, 8)).astype(np.float32))]


def _rows(candidate: FakeRunner, precision: str, tolerance, reference: FakeRunner | None = None, sets=None):
    sets = sets or _sets()
    reference = reference or FakeRunner()
    expected = {s.name: reference.expected(s.tensors) for s in sets}
    stages: list[str] = []
    rows = compare_rows(ort_runner(candidate.as_session()), sets, expected, "logits", precision, tolerance, None,
                        stages.append)
    return rows, stages


def test_one_row_per_input_set_and_batch_and_every_sample_fed_in_padded_batches():
    fake = FakeRunner()
    rows, stages = _rows(fake, "fp32", FP32)
    assert [(r.input_set, r.batch) for r in rows] == [("photos", 1), ("photos", 8), ("random", 1), ("random", 8)]
    assert all(r.passed and r.samples == 12 for r in rows)
    assert len(stages) == 4
    # batch 1: twelve calls of 1; batch 8: a full chunk and a short one padded to 8
    assert fake.calls == [1] * 12 + [8, 8] + [1] * 12 + [8, 8]


def test_a_static_batch_is_exercised_at_that_batch_only():
    fake = FakeRunner(input_shape=(4, 3, 8, 8))
    rows, _ = _rows(fake, "fp32", FP32)
    assert [(r.input_set, r.batch) for r in rows] == [("photos", 4), ("random", 4)]
    assert set(fake.calls) == {4} and all(r.passed for r in rows)


def test_fp32_noise_above_atol_fails_the_elementwise_gate():
    rows, _ = _rows(FakeRunner(noise=0.05), "fp32", FP32)
    assert rows and not any(r.passed for r in rows)
    assert all("max abs diff" in r.outputs[0].failures[0] for r in rows)


def test_int8_random_inputs_are_gated_on_nan_only_photos_on_the_int8_gates():
    rows, _ = _rows(FakeRunner(noise=50.0), "int8", INT8)  # noise far above the signal: SQNR < 10 dB, top-1 random
    by_set = {r.input_set: r for r in rows}
    assert by_set["random"].passed and by_set["random"].nan_only
    assert not by_set["photos"].passed and not by_set["photos"].nan_only
    assert any("SQNR" in f for f in by_set["photos"].outputs[0].failures)


def test_a_nan_fails_even_the_nan_only_rows():
    rows, _ = _rows(FakeRunner(nan_rows=(0,)), "int8", INT8)
    assert rows and not any(r.passed for r in rows)
    assert all(r.outputs[0].nan > 0 for r in rows)
    assert all("NaN" in r.outputs[0].failures[0] for r in rows)


def test_a_wrong_output_shape_is_a_failed_row_never_broadcast():
    rows, _ = _rows(FakeRunner(output_shape=lambda s: (s[0], s[1] + 1)), "fp32", FP32)
    assert rows and not any(r.passed for r in rows)
    assert all("differs from the reference's" in r.outputs[0].failures[0] for r in rows)


@pytest.mark.parametrize("precision, input_set, nan_only", [
    ("int8", "random", True), ("int8", "photos", False), ("int8", "tensors", False),
    ("fp32", "random", False), ("fp16", "random", False),
])
def test_row_tolerance_is_the_one_nan_only_rule(precision, input_set, nan_only):
    tolerance = DEFAULT_TOLERANCES[precision]
    assert (row_tolerance(precision, input_set, tolerance) == NAN_ONLY) is nan_only
    if not nan_only:
        assert row_tolerance(precision, input_set, tolerance) is tolerance


def test_an_ungated_runner_keeps_its_failed_rows_out_of_pass_fail():
    runner = ort_runner(FakeRunner(noise=0.05).as_session(), gated=False)
    sets = _sets(4)
    expected = {s.name: FakeRunner().expected(s.tensors) for s in sets}
    rows = compare_rows(runner, sets, expected, "logits", "fp32", FP32, None, lambda _s: None)
    assert rows and all(not r.gated and not r.passed for r in rows)
