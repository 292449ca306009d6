"""compare.py: the metrics are the textbook formulas, a NaN/Inf always fails, shapes never broadcast,
and the gates follow the file's precision."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgekit.judge.compare import DEFAULT_TOLERANCES, Tolerance, compare_outputs
from edgekit.core.errors import ShapeMismatch

FP32 = DEFAULT_TOLERANCES["fp32"]
INT8 = DEFAULT_TOLERANCES["int8"]


def test_identical_outputs_pass_with_infinite_sqnr():
    ref = np.random.default_rng(0).standard_normal((4, 10)).astype(np.float32)
    m = compare_outputs(ref, ref.copy(), "logits", FP32)
    assert m.passed and m.failures == []
    assert m.max_abs == 0 and m.mean_abs == 0 and m.cosine == pytest.approx(1.0)
    assert math.isinf(m.sqnr_db) and m.sqnr_db > 0
    assert m.top1_agreement == 1.0 and m.top5_agreement == 1.0
    assert m.samples == 4 and m.shape == (4, 10)


def test_metrics_are_the_textbook_formulas():
    ref = np.array([[1.0, 2.0, 3.0, 4.0]])
    cand = np.array([[1.0, 2.0, 3.0, 4.5]])
    m = compare_outputs(ref, cand, "logits", FP32)
    assert m.max_abs == pytest.approx(0.5)
    assert m.max_rel == pytest.approx(0.5 / 4.0)
    assert m.mean_abs == pytest.approx(0.125)
    assert m.sqnr_db == pytest.approx(10 * math.log10(30.0 / 0.25))
    assert m.cosine == pytest.approx(np.dot(ref[0], cand[0]) / (np.linalg.norm(ref) * np.linalg.norm(cand)))
    assert m.allclose_violations == 1
    assert any("max abs diff 0.5" in f for f in m.failures)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_nan_or_inf_is_a_failure_whatever_the_gates(bad, precision):
    ref = np.ones((2, 5), np.float32)
    cand = ref.copy()
    cand[1, 3] = bad
    loose = Tolerance(atol=1e9, rtol=1e9, same_top1=False, min_top1_agreement=0.0, min_sqnr_db=-1e9)
    for tol in (DEFAULT_TOLERANCES[precision], loose):
        m = compare_outputs(ref, cand, "logits", tol)
        assert not m.passed
        assert (m.nan, m.inf) == ((1, 0) if np.isnan(bad) else (0, 1))
        assert "NaN" in m.failures[0]


@pytest.mark.parametrize("shape", [(2, 10), (10,), (1, 10, 1), (1, 9)])
def test_shapes_that_differ_are_refused_not_broadcast(shape):
    with pytest.raises(ShapeMismatch, match="output 'logits': shape"):
        compare_outputs(np.zeros((1, 10)), np.zeros(shape), "logits", FP32)


def test_a_top1_flip_between_tied_logits_is_not_a_failure():
    ref = np.array([[0.0, 1.0, 1.00001]])
    cand = np.array([[0.0, 1.00001, 1.0]])
    m = compare_outputs(ref, cand, "logits", FP32)
    assert m.top1_agreement == 0.0 and m.top1_mismatches == 0
    assert m.passed


def test_a_real_top1_flip_fails_fp32():
    # each logit moves by 0.8 <= atol, but the reference's gap of 1.5 is no tie: a real flip
    ref = np.array([[0.0, 1.0, 2.5], [5.0, 0.0, 0.0]])
    cand = np.array([[0.0, 1.8, 1.7], [5.0, 0.0, 0.0]])
    m = compare_outputs(ref, cand, "logits", Tolerance(atol=1.0, rtol=0))
    assert m.allclose_violations == 0
    assert m.failures == ["top-1 differs on 1 of 2 samples"]


def test_int8_gates_are_agreement_and_sqnr_not_elementwise():
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((50, 10)) * 3
    cand = ref + rng.standard_normal(ref.shape) * 0.1  # ~30 dB: far outside fp32, fine for int8
    assert not compare_outputs(ref, cand, "logits", FP32).passed
    m = compare_outputs(ref, cand, "logits", INT8)
    assert m.passed, m.failures
    assert 25 < m.sqnr_db < 35


def test_int8_gates_fail_on_low_sqnr_and_low_agreement_and_name_the_metric():
    rng = np.random.default_rng(1)
    ref = rng.standard_normal((50, 10))
    cand = ref + rng.standard_normal(ref.shape) * 2.0
    m = compare_outputs(ref, cand, "logits", INT8)
    assert any(f.startswith("SQNR") for f in m.failures)
    assert any(f.startswith("top-1 agreement") for f in m.failures)


def test_default_gates_by_precision():
    assert (FP32.atol, FP32.rtol, FP32.same_top1) == (1e-4, 1e-3, True)
    for precision in ("fp16", "int8"):
        tol = DEFAULT_TOLERANCES[precision]
        assert tol.atol is None and tol.rtol is None and not tol.same_top1
        assert 0 < tol.min_top1_agreement <= 1 and tol.min_sqnr_db > 0
    # fp16 keeps ~11 bits: it must be held to a stricter SQNR than int8's ~8
    assert DEFAULT_TOLERANCES["fp16"].min_sqnr_db > INT8.min_sqnr_db


def test_top5_agreement_compares_the_sets():
    ref = np.array([[9, 8, 7, 6, 5, 0, 0, 0.0]])
    same_set = np.array([[5, 6, 7, 8, 9, 0, 0, 0.0]])  # same five, other order, other top-1
    other_set = np.array([[9, 8, 7, 6, 0, 5.5, 0, 0.0]])
    assert compare_outputs(ref, same_set, "l", INT8).top5_agreement == 1.0
    assert compare_outputs(ref, other_set, "l", INT8).top5_agreement == 0.0


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    scale=st.floats(1e-6, 1.0),
    rows=st.integers(1, 6),
)
def test_metric_invariants(seed, scale, rows):
    rng = np.random.default_rng(seed)
    ref = rng.standard_normal((rows, 12))
    noise = rng.standard_normal(ref.shape) * scale
    m = compare_outputs(ref, ref + noise, "logits", INT8)
    assert m.max_abs >= m.mean_abs >= 0
    assert -1.0 - 1e-12 <= m.cosine <= 1.0 + 1e-12
    expected = 10 * np.log10(np.sum(ref**2) / np.sum(noise**2))
    assert m.sqnr_db == pytest.approx(expected, rel=1e-9, abs=1e-9)
    # swapping reference and candidate keeps the absolute differences
    back = compare_outputs(ref + noise, ref, "logits", INT8)
    assert back.max_abs == pytest.approx(m.max_abs) and back.mean_abs == pytest.approx(m.mean_abs)


def test_check_failures_are_typed_and_all_exit_1():
    # scripts and tests catch a failed check by its kind; the exit code stays 1 for every kind
    from edgekit.core import errors

    kinds = (errors.GateFailed, errors.SaturationFailed, errors.ShapeMismatch, errors.InvariantBroken,
             errors.BundleTampered)
    assert all(issubclass(k, errors.CheckFailed) and k("x").exit_code == 1 for k in kinds)
    assert issubclass(errors.SaturationFailed, errors.GateFailed)
