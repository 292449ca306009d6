"""The one interleaved timer: bench, the quantize budget's latency, the profile and the sweep time with it.

Every figure edgekit prints about speed comes from here, measured the same way:
- **rotation**: each round runs every candidate once (A B C A B C ...), so drift and other processes on a shared
  machine hit them alike; a ratio is only ever read from one such run;
- **warm-up**: untimed calls first, so a lazy allocation or a first-call JIT is never in a sample;
- **pacing** (`interval_ms`): one call every interval, the candidates taking turns, as a camera pipeline calls its
  model; a pool gone idle between frames wakes up slower than back-to-back calls;
- **medians**: the statistic that is reported; p90 and the mean beside it.
Spinning is a session option, decided where the session is opened (runtimes/ort.py NO_SPIN): an ORT pool that
spins between calls steals the cores from the candidate timed next.
"""

from __future__ import annotations

import time
from typing import Callable

import numpy as np

from edgekit.ondevice.ort_worker import wait_for_tick


def rotation(labels: list[str], rounds: int) -> list[str]:
    """A B C A B C ...: each round times every candidate once, so drift hits them equally."""
    return [label for _ in range(rounds) for label in labels]


def percentiles(samples) -> tuple[float, float, float]:
    """(p50, p90, mean) with numpy's linear interpolation."""
    array = np.asarray(samples, dtype=np.float64)
    if array.size == 0:
        raise ValueError("no samples")
    return float(np.percentile(array, 50)), float(np.percentile(array, 90)), float(array.mean())


def interleaved(
    runs: dict[str, Callable[[], object]], rounds: int, *, warmup: int = 1, seconds: float | None = None,
    on_progress: Callable[[int, int], None] | None = None, primed: bool = False, settle_ms: float = 0.0,
) -> tuple[dict[str, list[float]], list[str]]:
    """Milliseconds of each call of each run, interleaved; and the order they ran in.

    `warmup` untimed rounds first; then `rounds` timed rounds, and, with `seconds`, whole further rounds until that
    much time has passed since the timed part began. `primed`: each timed call comes right after an untimed call of
    the same run (back to back, as a deployment calling one model in a loop sees it: its pool and caches are warm,
    whatever the candidate before it left behind). `settle_ms`: idle before that untimed call, so that a pool that
    spins after its calls (ORT with spinning on) has gone quiet before the next candidate is timed."""
    labels = list(runs)
    for _ in range(warmup):
        for label in labels:
            runs[label]()
    samples: dict[str, list[float]] = {label: [] for label in labels}
    order = rotation(labels, rounds)
    started = time.perf_counter()
    i = 0
    while True:
        if i >= len(order):
            if seconds is None or time.perf_counter() - started >= seconds:
                break
            order.extend(labels)  # a time budget: keep whole rounds going until it is spent
        label = order[i]
        if primed:
            if settle_ms:
                time.sleep(settle_ms / 1000)
            runs[label]()
        t0 = time.perf_counter()
        runs[label]()
        samples[label].append((time.perf_counter() - t0) * 1000)
        i += 1
        if on_progress:
            on_progress(i, len(order))
    return samples, order


def paced(runs: dict[str, Callable[[], object]], rounds: int, interval_ms: float) -> dict[str, list[float]]:
    """Milliseconds of each call when one call starts every `interval_ms` (the runs take turns); a call longer than
    the interval is not caught up in a burst."""
    period = interval_ms / 1000
    samples: dict[str, list[float]] = {label: [] for label in runs}
    next_tick = time.perf_counter()
    for _ in range(rounds):
        for label, run in runs.items():
            t0 = time.perf_counter()
            run()
            samples[label].append((time.perf_counter() - t0) * 1000)
            next_tick = wait_for_tick(next_tick + period)  # the device's own pacing (ondevice/ort_worker.py)
    return samples


def medians(runs: dict[str, Callable[[], object]], rounds: int, *, warmup: int = 1) -> dict[str, float]:
    """The median milliseconds of each run, interleaved: what the budget and the sweep report as latency."""
    samples, _order = interleaved(runs, rounds, warmup=warmup)
    return {label: float(np.median(v)) for label, v in samples.items()}
