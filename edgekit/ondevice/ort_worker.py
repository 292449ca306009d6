#!/usr/bin/env python3
"""One ONNX Runtime session, served over stdin/stdout to edgekit on the host: the process that runs inside an
emulated device (qemu user-mode), so it needs numpy and onnxruntime only and imports nothing of edgekit.

    python ort_worker.py MODEL CONFIG_JSON OPTIMIZATION

Protocol (binary, one request at a time):
- on start, one JSON line: {"ok": true, "inputs": [...], "outputs": [...], "providers": [...], "onnxruntime": V}
  or {"ok": false, "error": "..."} and exit 1;
- a request is a JSON line {"run": [input names], "bytes": [sizes]} followed by one .npy array per name
  (numpy's format, no pickles), each of the size given; the answer is a JSON line {"ok": true, "bytes":
  [sizes]} followed by those .npy arrays, or {"ok": false, "error": "..."};
- a timing request is {"time": [input names], "bytes": [sizes], "runs": N, "warmup": W, "interval_ms": MS or
  null} followed by the arrays: W untimed runs, then N runs each timed here with time.perf_counter (one started
  every MS milliseconds when MS is given); the answer is {"ok": true, "ms": [N milliseconds]} (the board's own
  clock, so the channel's latency is never in a figure);
- an empty line or end of input ends the worker.
"""

from __future__ import annotations

import json
import sys
import time


def _meta(values) -> list[dict]:
    return [{"name": v.name, "shape": [d if isinstance(d, int) else (d or None) for d in v.shape], "type": v.type}
            for v in values]


def _say(out, obj: dict) -> None:
    out.write((json.dumps(obj) + "\n").encode())
    out.flush()


def npy_bytes(array) -> bytes:
    """An array in numpy's .npy format (no pickles)."""
    import io

    import numpy as np

    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def read_npy(stream, size: int):
    """One .npy array of `size` bytes from a stream (no pickles)."""
    import io

    import numpy as np

    data = stream.read(size)
    if len(data) != size:
        raise EOFError(f"expected {size} bytes of an array, got {len(data)}")
    return np.load(io.BytesIO(data), allow_pickle=False)


def _first_line(exc: BaseException) -> str:
    lines = [line for line in str(exc).splitlines() if line.strip()]
    return (lines[0] if lines else type(exc).__name__)[:500]


def _timed(session, feeds, runs: int, warmup: int, interval_ms) -> list:
    """Milliseconds of `runs` calls on this machine's clock, after `warmup` untimed ones; paced one call every
    `interval_ms` when given (a call longer than the interval is not caught up in a burst)."""
    import time

    for _ in range(max(0, warmup)):
        session.run(None, feeds)
    samples = []
    period = float(interval_ms) / 1000 if interval_ms else None
    next_tick = time.perf_counter()
    for _ in range(max(1, runs)):
        t0 = time.perf_counter()
        session.run(None, feeds)
        samples.append((time.perf_counter() - t0) * 1000)
        if period is not None:
            next_tick = wait_for_tick(next_tick + period)
    return samples


def wait_for_tick(tick: float) -> float:
    """Sleep until perf_counter() reaches `tick`; returns the tick the next period counts from (now, when the
    call ran past it: a late call is not caught up in a burst)."""
    delay = tick - time.perf_counter()
    if delay > 0:
        time.sleep(delay)
        return tick
    return time.perf_counter()


def main(argv: list[str]) -> int:
    out, inp = sys.stdout.buffer, sys.stdin.buffer
    try:
        import onnxruntime as ort

        model, config, level = argv[0], json.loads(argv[1]), argv[2]
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.graph_optimization_level = {
            "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL, "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED, "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }[level]
        for key, value in config.items():
            options.add_session_config_entry(str(key), str(value))
        session = ort.InferenceSession(model, sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # reported to the host, which names the device and the file
        _say(out, {"ok": False, "error": _first_line(exc)})
        return 1
    _say(out, {"ok": True, "inputs": _meta(session.get_inputs()), "outputs": _meta(session.get_outputs()),
               "providers": session.get_providers(), "onnxruntime": ort.__version__})
    while True:
        line = inp.readline()
        if not line.strip():
            return 0
        request = json.loads(line)
        if "time" in request:
            feeds = {name: read_npy(inp, size) for name, size in zip(request["time"], request["bytes"])}
            try:
                _say(out, {"ok": True, "ms": _timed(session, feeds, int(request["runs"]), int(request["warmup"]),
                                                    request.get("interval_ms"))})
            except Exception as exc:
                _say(out, {"ok": False, "error": _first_line(exc)})
            continue
        feeds = {name: read_npy(inp, size) for name, size in zip(request["run"], request["bytes"])}
        try:
            results = session.run(None, feeds)
        except Exception as exc:
            _say(out, {"ok": False, "error": _first_line(exc)})
            continue
        arrays = [npy_bytes(array) for array in results]
        _say(out, {"ok": True, "bytes": [len(a) for a in arrays]})
        for data in arrays:
            out.write(data)
        out.flush()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
