"""The fake runner keeps runtimes/runner.py's interface (so the unit tier tests what the real runners are used for),
and runtimes/runners.py's batching rule works through it as through an ORT session."""

from __future__ import annotations

import inspect

import numpy as np
import pytest

from edgekit.runtimes import runner as runner_protocol
from edgekit.runtimes.runners import batch_sizes, run_batched, run_session
from tests.fakes import FakeRunner


def test_it_has_every_method_of_the_runner_protocol_with_the_same_parameters():
    protocol = runner_protocol.Runner
    methods = [n for n, v in vars(protocol).items() if inspect.isfunction(v) and not n.startswith("_")]
    assert {"run", "timed_runner", "executed", "close"} <= set(methods)
    fake = FakeRunner()
    for name in methods:
        expected = list(inspect.signature(getattr(protocol, name)).parameters)[1:]
        assert list(inspect.signature(getattr(fake, name)).parameters) == expected, name
    for attribute in protocol.__annotations__:
        assert isinstance(getattr(fake, attribute), str), attribute


def test_outputs_are_the_seeded_linear_map_and_each_switch_breaks_them_as_documented():
    x = np.random.default_rng(0).random((5, 3, 8, 8), dtype=np.float32)
    exact = FakeRunner().run(x)[0]
    assert exact.shape == (5, 10) and np.array_equal(exact, FakeRunner().expected(x))
    assert not np.array_equal(exact, FakeRunner(seed=1).run(x)[0])
    noisy = FakeRunner(noise=0.1).run(x)[0]
    assert 0 < np.abs(noisy - exact).max() < 1.0
    nan = FakeRunner(nan_rows=(1, 3)).run(x)[0]
    assert np.isnan(nan).any(axis=1).tolist() == [False, True, False, True, False]
    assert FakeRunner(output_shape=lambda s: (s[0], 1, s[1])).run(x)[0].shape == (5, 1, 10)
    with pytest.raises(ValueError):
        FakeRunner(input_shape=(4, 3, 8, 8)).run(x)  # a static batch refuses another


def test_the_batching_rule_through_a_fake_session():
    x = np.random.default_rng(0).random((10, 3, 8, 8), dtype=np.float32)
    static = FakeRunner(input_shape=(4, 3, 8, 8))
    assert batch_sizes(static.as_session()) == [4]
    out = run_session(static.as_session(), x, 4)[0]
    assert static.calls == [4, 4, 4] and np.allclose(out, static.expected(x), atol=1e-5)
    dynamic = FakeRunner()
    assert batch_sizes(dynamic.as_session()) == [1, 8]
    assert np.allclose(run_batched(dynamic.run, x, None)[0], dynamic.expected(x), atol=1e-5)
    assert dynamic.calls == [10]


def test_close_is_final_and_executed_says_where_it_ran():
    fake = FakeRunner(requested="cuda")
    assert fake.executed() == {"cuda": {"Gemm": 1}}
    fake.close()
    with pytest.raises(RuntimeError):
        fake.run(np.zeros((1, 3, 8, 8), dtype=np.float32))
