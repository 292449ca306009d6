"""Fakes for the unit tier (tests/unit/): a runner with runtimes/runner.py's interface whose outputs numpy computes
from its inputs, an edgekit-Session-shaped view of it, and a clock the one timer can be run on.

No torch, no ONNX Runtime session: a FakeRunner is a fixed, seeded linear map (N, C, H, W) -> (N, classes), with
switches for what a broken runtime does (noise, NaN, a wrong output shape, a static batch it enforces), so the
code that compares, batches, times and decides can be tested on its own, in milliseconds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np


@dataclass
class FakeRunner:
    """runtimes/runner.py's Runner: run(x) -> [logits], timed_runner(x), executed(), close(); and the input/output
    facts an edgekit Session has (input_name, input_shape, input_type, output_names, requested, ran_on).

    The logits are `x.reshape(n, -1) @ W.T` with W seeded by `seed`, then, per switch:
    - `noise`: standard deviation of seeded Gaussian noise added to every logit (0: exactly the map);
    - `nan_rows`: sample indices (within each call's batch) whose logits become NaN;
    - `output_shape`: a function of the right shape giving the shape actually returned (a runtime that drops or
      adds an axis); the values are truncated or zero-padded into it;
    - `batch`: a static batch axis: a call with another batch size is refused (ValueError), as ORT refuses it.
    `clock` (a FakeClock): each timed call advances it by `cost_ms`, so the timer measures exactly that.
    Every call's batch size is recorded in `calls`."""

    input_shape: tuple = (None, 3, 8, 8)  # (batch, C, H, W); batch None: dynamic
    classes: int = 10
    seed: int = 0
    noise: float = 0.0
    nan_rows: tuple[int, ...] = ()
    output_shape: Callable[[tuple], tuple] | None = None
    runtime: str = "fake"
    device: str = "cpu"
    requested: str = "cpu"
    clock: "FakeClock | None" = None
    cost_ms: float = 1.0
    input_name: str = "input"
    output_names: list[str] = field(default_factory=lambda: ["logits"])
    calls: list[int] = field(default_factory=list)
    closed: bool = False

    def __post_init__(self):
        features = int(np.prod(self.input_shape[1:]))
        self.weights = np.random.default_rng(self.seed).standard_normal((self.classes, features)).astype(np.float32)
        self._noise = np.random.default_rng(self.seed + 1)

    @property
    def batch(self) -> int | None:
        return self.input_shape[0]

    @property
    def ran_on(self) -> str:
        return self.requested

    @property
    def input_type(self) -> str:
        return "tensor(float)"

    def expected(self, x: np.ndarray) -> np.ndarray:
        """The exact map, with none of the switches: what a correct runtime returns."""
        x = np.asarray(x, dtype=np.float32)
        return x.reshape(len(x), -1) @ self.weights.T

    def run(self, x: np.ndarray) -> list[np.ndarray]:
        x = np.asarray(x)
        if tuple(x.shape[1:]) != tuple(self.input_shape[1:]):
            raise ValueError(f"input shape {x.shape} is not (N, {', '.join(map(str, self.input_shape[1:]))})")
        if self.batch is not None and len(x) != self.batch:
            raise ValueError(f"static batch {self.batch}, got {len(x)}")
        if self.closed:
            raise RuntimeError("run after close()")
        self.calls.append(len(x))
        y = self.expected(x)
        if self.noise:
            y = y + self._noise.standard_normal(y.shape).astype(np.float32) * np.float32(self.noise)
        for row in self.nan_rows:
            if row < len(y):
                y[row] = np.nan
        if self.output_shape is not None:
            shape = tuple(self.output_shape(y.shape))
            flat = np.zeros(int(np.prod(shape)), dtype=y.dtype)
            flat[: min(flat.size, y.size)] = y.reshape(-1)[: flat.size]
            y = flat.reshape(shape)
        return [y]

    def timed_runner(self, x: np.ndarray) -> Callable[[], None]:
        x = np.ascontiguousarray(x)

        def call() -> None:
            self.run(x)
            if self.clock is not None:
                self.clock.advance(self.cost_ms / 1000)

        return call

    def executed(self) -> dict:
        return {self.ran_on: {"Gemm": 1}}

    def close(self) -> None:
        self.closed = True

    def as_session(self) -> "FakeSession":
        """The same runner behind an edgekit runtimes/ort.py Session's surface (run takes a feed dict)."""
        return FakeSession(self)


@dataclass
class FakeSession:
    """What verify's comparator and runtimes/runners.py read of an edgekit Session: input facts, run({name: x})."""

    runner: FakeRunner
    fell_back: bool = False
    reason: str | None = None
    providers: list[str] = field(default_factory=lambda: ["CPUExecutionProvider"])

    def __getattr__(self, name):  # input_name, input_shape, input_type, output_names, requested, ran_on, device
        return getattr(self.runner, name)

    @property
    def input_shape(self) -> list:
        return list(self.runner.input_shape)

    def run(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        if set(feed) != {self.runner.input_name}:
            raise ValueError(f"feed {sorted(feed)} is not {{{self.runner.input_name!r}}}")
        return self.runner.run(feed[self.runner.input_name])

    def node_placement(self) -> dict:
        return self.runner.executed()


class FakeClock:
    """time.perf_counter and time.sleep for code that reads the clock through `time`: monkeypatch the module's
    `time` with it. It only moves when told (advance) or slept on; `sleeps` records each sleep."""

    def __init__(self, start: float = 1000.0):
        self.now = start
        self.sleeps: list[float] = []

    def perf_counter(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += max(0.0, seconds)
