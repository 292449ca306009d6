"""runtimes/runners.py: one batching rule, the ORT runner and the PyTorch runner."""

from __future__ import annotations

import numpy as np

from edgekit.runtimes.runners import padded_batches, run_batched, run_onnx, run_torch
from tests.tiny_models import tiny_model


def test_padded_batches_repeat_the_last_sample_and_count_the_real_ones():
    x = np.arange(5, dtype=np.float32)[:, None]
    chunks = list(padded_batches(x, 2))
    assert [real for _, real in chunks] == [2, 2, 1]
    assert chunks[-1][0].ravel().tolist() == [4.0, 4.0]
    assert list(padded_batches(x, None))[0][1] == 5


def test_run_batched_keeps_only_the_real_rows():
    x = np.arange(7, dtype=np.float32)[:, None]
    (out,) = run_batched(lambda chunk: [chunk * 2], x, 3)
    assert out.ravel().tolist() == [0, 2, 4, 6, 8, 10, 12]


def test_static_batch_is_fed_exactly_and_matches_one_by_one():
    model = tiny_model()  # batch fixed at 1
    x = np.random.default_rng(0).standard_normal((3, 3, 32, 32)).astype(np.float32)
    together = run_onnx(model, x, 1)
    assert together.shape == (3, 10)
    np.testing.assert_allclose(together[1:2], run_onnx(model, x[1:2], 1))


def test_run_torch_chunks_and_float64():
    import torch

    model = torch.nn.Linear(4, 2).double().float()
    x = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    out = run_torch(model, x, batch=2)
    exact = run_torch(model.double(), x, dtype=torch.float64, batch=2)
    assert out.shape == exact.shape == (5, 2) and exact.dtype == np.float64
