"""`BenchOptions`: every knob of `bench`, with its default, the help `edgekit bench` shows and its range.

`bench(files, options)` reads them; `edgekit bench` builds its options from them (cli/bench_cmd.py). Knobs
without help here take it from the option several commands share (cli/options.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from edgekit.core.knobs import knob
from edgekit.core.limits import MAX_BATCH


@dataclass(frozen=True)
class BenchOptions:
    """The knobs of `bench`. `providers`: ONNX Runtime's execution providers (the command line's comma-separated
    --providers; default: cpu, + cuda when usable). `runtimes`: ort (default), openvino. `with_torch`: also time the
    PyTorch model, and take the ratios against it. `seconds`: a time budget, whole rounds until it is spent."""

    providers: tuple[str, ...] | list[str] | None = knob(None)
    threads: int | None = knob(None, low=1, high=1024)  # (default: all cores)
    batch: int = knob(1, low=1, high=MAX_BATCH)
    warmup: int = knob(5, low=0, high=10_000)
    runs: int = knob(30, "timed runs per candidate", low=1, high=1_000_000)
    seconds: float | None = knob(None, "keep timing whole rounds until this budget is spent", low=0.0, high=86_400.0)
    with_torch: bool = knob(False, "also time the PyTorch eager model rebuilt from the metadata")
    spin: bool = knob(False, "let ORT threads spin between runs (faster back-to-back, unfair when interleaved)")
    runtimes: tuple[str, ...] | list[str] | str | None = knob(None)
    interval_ms: float | None = knob(
        None, "also time one inference every INTERVAL ms (a 30 fps camera: 33), besides back to back",
        low=1.0, high=10_000.0)
    profile: bool = knob(False, "ORT's per-node profile of each file (CPU): time per op type, int8 vs float, layout")
