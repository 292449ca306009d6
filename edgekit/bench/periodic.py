"""The periodic case: a camera pipeline calls the model once every INTERVAL ms and idles in between.

ORT's thread pool either spins between calls (fast wake-up, a core burnt while idle) or sleeps (no burnt core,
a slower first kernel after each idle gap). bench --interval times each file paced (timer.paced) with ORT's
spinning off and on, and OpenVINO beside them when asked for, and measures the CPU time the process spent: in
the calls and between them (resource.getrusage, user + system, all threads, around each call and around the
whole paced loop). Each candidate is paced on its own, one after the other: a pool spinning between its frames
would otherwise steal the cores of the candidate called next, and its idle CPU time would be charged to that one.
"""

from __future__ import annotations

import resource
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np


@dataclass
class PacedRun:
    """One runtime setting of one file, called once every interval."""

    file: str
    runtime: str  # ort | openvino
    spin: bool | None  # ORT: its pool spins between calls; None for OpenVINO
    frames: int
    interval_ms: float
    p50_ms: float
    p90_ms: float
    cpu_ms_per_frame: float  # process CPU time (all threads) per frame, the call and the idle gap together
    cpu_ms_in_call: float  # of which inside the call
    cpu_ms_between_frames: float  # of which between calls: a spinning pool's cost

    @property
    def label(self) -> str:
        if self.runtime == "ort":
            return f"ort, spinning {'on' if self.spin else 'off'}"
        return self.runtime

    def to_dict(self) -> dict:
        return {**asdict(self), "label": self.label}


def _cpu_ms() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return (usage.ru_utime + usage.ru_stime) * 1000


def pace_one(run, frames: int, interval_ms: float, warmup: int = 2) -> tuple[list[float], float, float]:
    """(ms of each call, CPU ms in the calls, CPU ms of the whole paced loop) for `run` called every interval."""
    from edgekit.runtimes.timer import paced

    for _ in range(warmup):
        run()
    in_calls = [0.0]

    def measured(run=run):
        before = _cpu_ms()
        run()
        in_calls[0] += _cpu_ms() - before

    start = _cpu_ms()
    samples = paced({"run": measured}, frames, interval_ms)["run"]
    return samples, in_calls[0], _cpu_ms() - start


def periodic(files: list[Path], runtimes: list[str], *, threads: int, batch: int, interval_ms: float,
             frames: int) -> list[PacedRun]:
    """Each file paced every `interval_ms` for `frames` frames: ORT CPU with spinning off, then on (the file's own
    session options, as bench times it), then OpenVINO where asked for, all on the bench's seeded input."""
    from edgekit.onnxfile import OnnxFile
    from edgekit.runtimes.factory import open_runner
    from edgekit.runtimes.timer import percentiles

    out: list[PacedRun] = []
    for path in files:
        source = OnnxFile.open(Path(path), check=False)
        spec, recipe = source.spec, source.recipe or None
        del source
        x = np.random.default_rng(0).standard_normal([batch, *spec.chw]).astype(
            np.float16 if spec.dtype == "float16" else np.float32)
        settings = ([("ort", False), ("ort", True)] if "ort" in runtimes else []) + (
            [("openvino", None)] if "openvino" in runtimes else [])
        for runtime, spin in settings:
            runner = open_runner(Path(path), runtime, "cpu", threads=threads, batch=batch, timing=True,
                                 spin=bool(spin), recipe=recipe if runtime == "ort" else None)
            try:
                samples, in_calls, total = pace_one(runner.timed_runner(x), frames, interval_ms)
            finally:
                runner.close()
            p50, p90, _mean = percentiles(samples)
            out.append(PacedRun(
                file=Path(path).name, runtime=runtime, spin=spin, frames=frames, interval_ms=interval_ms,
                p50_ms=p50, p90_ms=p90, cpu_ms_per_frame=total / frames, cpu_ms_in_call=in_calls / frames,
                cpu_ms_between_frames=max(0.0, total - in_calls) / frames,
            ))
    return out
