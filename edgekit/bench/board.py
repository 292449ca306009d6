"""`edgekit bench FILES --device BOARD`: latency on the user's own board (runtimes/ssh.py), timed by edgekit's worker
on the board's own clock (ondevice/ort_worker.py "time" requests), so the SSH channel's latency is never in a figure.
The files take turns one call at a time (A B A B ...), each call a request of its own; with --interval, each file
is then paced on the board, one call every INTERVAL ms, the files one after the other. An emulated device is refused:
its speed says nothing about the real CPU."""

from __future__ import annotations

from pathlib import Path

from edgekit.bench.options import BenchOptions
from edgekit.core.errors import BadInput

def is_board(device: str | None) -> bool:
    from edgekit.runtimes.boards import is_board as stored_or_url

    return device not in (None, "host") and stored_or_url(device)


def _refuse_unsupported(device: str, knobs: BenchOptions) -> None:
    asked = [flag for flag, on in (("--torch", knobs.with_torch), ("--profile", knobs.profile),
                                   ("--threads", knobs.threads is not None), ("--seconds", knobs.seconds is not None),
                                   ("--runtimes", knobs.runtimes not in (None, "ort", ["ort"], ("ort",))),
                                   ("--providers", knobs.providers not in (None, ["cpu"], ("cpu",)))) if on]
    if asked:
        raise BadInput(f"bench --device {device} times ONNX Runtime's CPU provider on the board; {', '.join(asked)} "
                       "cannot apply there", hint=f"drop {', '.join(asked)}")


def bench_on_board(files: list[Path], device: str, knobs: BenchOptions, on_progress=None) -> dict:
    """Each file's p50/p90/mean ms on the board (and paced, with knobs.interval_ms), with the board's facts."""
    from edgekit.onnxfile.artifact import load_onnx, read_metadata
    from edgekit.runtimes.boards import board_of
    from edgekit.runtimes.devices import ready_device
    from edgekit.runtimes.board_timer import BoardTimer
    from edgekit.runtimes.ssh import cpu_line, probe
    from edgekit.runtimes.timer import percentiles

    _refuse_unsupported(device, knobs)
    ready_device(device)
    board = board_of(device)
    facts = probe(board)
    timers, rows = {}, []
    try:
        for path in files:
            recipe = (read_metadata(load_onnx(Path(path), check=False), path) or {}).get("recipe")
            timers[str(path)] = BoardTimer(Path(path), device, recipe, knobs.spin, knobs.batch)
        samples = {name: [] for name in timers}
        for _ in range(max(0, knobs.warmup)):
            for timer in timers.values():
                timer.time(1)
        total, done = knobs.runs * len(timers), 0
        for _ in range(knobs.runs):  # A B A B ...: drift on the board hits every file alike
            for name, timer in timers.items():
                samples[name] += timer.time(1)
                done += 1
                if on_progress:
                    on_progress(done, total)
        for name, timer in timers.items():
            p50, p90, mean = percentiles(samples[name])
            row = {"file": name, "p50_ms": p50, "p90_ms": p90, "mean_ms": mean, "img_per_s": 1000 * knobs.batch / p50,
                   "size_bytes": Path(name).stat().st_size, "samples_ms": samples[name]}
            if knobs.interval_ms is not None:
                paced = timer.time(knobs.runs, warmup=1, interval_ms=knobs.interval_ms)
                row["paced_p50_ms"], row["paced_p90_ms"], _ = percentiles(paced)
            rows.append(row)
    finally:
        for timer in timers.values():
            timer.close()
    return {
        "device": board.name, "url": board.url, "board": facts, "cpu": cpu_line(facts), "batch": knobs.batch,
        "warmup": knobs.warmup, "runs": knobs.runs, "interval_ms": knobs.interval_ms, "timings": rows,
        "notes": ["timed on the board's own clock by edgekit's worker (time.perf_counter around session.run); "
                  "the SSH channel's latency is not in these figures"],
    }
