"""A file opened on the user's own board for timing (bench --device BOARD): edgekit's session on the board, with the
file's own session options and no spinning pool unless asked, fed seeded inputs made once; each figure is timed by
the worker on the board's own clock (ondevice/ort_worker.py "time" requests), never across the SSH channel."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgekit.core.errors import BadInput

DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
          "tensor(uint8)": np.uint8, "tensor(int8)": np.int8, "tensor(int64)": np.int64, "tensor(int32)": np.int32}


def board_feeds(session, batch: int) -> dict[str, np.ndarray]:
    """Seeded inputs of the session's shapes (a dynamic axis is `batch`)."""
    rng = np.random.default_rng(0)
    feeds = {}
    for value in session.get_inputs():
        shape = [d if isinstance(d, int) and d > 0 else batch for d in value.shape]
        dtype = DTYPES.get(value.type)
        if dtype is None:
            raise BadInput(f"bench --device: input {value.name!r} is {value.type}, which bench does not fill")
        feeds[value.name] = (rng.standard_normal(shape) if np.issubdtype(dtype, np.floating)
                             else rng.integers(0, 8, shape)).astype(dtype)
    return feeds


class BoardTimer:
    """One file on a board: time(runs, warmup, interval_ms) gives milliseconds measured there; close() ends it."""

    def __init__(self, path: Path, device: str, recipe: dict | None, spin: bool, batch: int):
        from edgekit.runtimes.factory import open_runner

        runner = open_runner(Path(path), "ort", "cpu", device, recipe=recipe, timing=True, spin=spin)
        self._session = runner.session.session
        if not hasattr(self._session, "time_runs"):
            raise BadInput(f"--device {device} is not a board: bench times only this machine or a board over SSH")
        self.feeds = board_feeds(self._session, batch)

    def time(self, runs: int, warmup: int = 0, interval_ms: float | None = None) -> list[float]:
        return self._session.time_runs(self.feeds, runs, warmup=warmup, interval_ms=interval_ms)

    def close(self) -> None:
        self._session.close()
