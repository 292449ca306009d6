"""The sweep's scheduler (edgekit/sweep/schedule.py) on a fake engine, without Ray: shards, rows that share a
calibration started one at a time, a failed or dead quantization or shard becoming its row's one-line error, cached
rows not run again, top-1 and agreement from the shards' predictions. The fake engine hands results back in the order
tasks were submitted (the first pending task finishes first); the task functions themselves never run."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from edgekit.sweep import engine, jobs, schedule
from edgekit.sweep.results import Row

ITEMS = [f"img{i:02d}.png" for i in range(40)]
LABELS = [i % 3 for i in range(40)]
UNREADABLE = {5}  # predicted -1 by every file: left out of top-1 and agreement


def _quantize_task(*args):  # never run: the fake engine answers for it
    raise AssertionError("the fake engine runs no task")


def _predict_task(*args):
    raise AssertionError("the fake engine runs no task")


TASKS = jobs.Tasks(quantize=_quantize_task, predict=_predict_task)  # the scheduler's task seam


class FakeEngine:
    """engine.remote / wait_one / result_of: a task's value is `answer(kind, args)`; "died" answers a dead worker."""

    def __init__(self, answer):
        self.answer, self.submitted, self.values = answer, [], {}

    def remote(self, function, threads):
        kind = {_quantize_task: "quantize", _predict_task: "predict"}[function]

        def submit(*args):
            ref = object()
            self.submitted.append((kind, args))
            self.values[ref] = self.answer(kind, args)
            return ref

        return SimpleNamespace(remote=submit)

    def wait_one(self, pending, timeout=0.5):
        return [pending[0]]

    def result_of(self, ref):
        value = self.values.pop(ref)
        return ("died", "WorkerCrashedError: the worker died") if value == "died" else value


def _rows(*specs, cached=()) -> list[Row]:
    rows = [Row(model, target, method, 8, key=f"k-{model}-{target}-{method}") for model, target, method in specs]
    for row in rows:
        if row.name in cached:
            row.status = "ok"
    return rows


def _quantized(row_name: str) -> dict:
    return {"file": f"/q/{row_name.replace('/', '.')}.int8.onnx", "int8_bytes": 100, "fp32_bytes": 400,
            "fp32_nodes": 0, "ranges_cached": False, "holdout_sqnr_db": 30.0, "kernels": "default",
            "session_config": {}, "notes": []}


def _predict(file: str, items: list[str], wrong: dict[str, set[int]]) -> list[int]:
    out = []
    for item in items:
        i = ITEMS.index(item)
        if i in UNREADABLE:
            out.append(-1)
        else:
            miss = any(key in file for key, bad in wrong.items() if i in bad)
            out.append((LABELS[i] + 1) % 3 if miss else LABELS[i])
    return out


def _run(tmp_path, monkeypatch, rows, quantize=None, predict=None, wrong=None, models=("m",)):
    """run_jobs over ROWS; QUANTIZE(row name) and PREDICT(file, items) override the fake results."""
    by_name = {r.name: r for r in rows}
    states: list[tuple[str, dict[str, str]]] = []  # (row submitted, every row's status at that moment)

    def answer(kind, args):
        if kind == "quantize":
            name = next(a for a in args if isinstance(a, str) and a in by_name)
            states.append((name, {r.name: r.status for r in rows}))
            return (quantize or _quantized)(name)
        file = next(a for a in args if isinstance(a, str) and (a.startswith("/q/") or a.endswith(".fp32.onnx")))
        items = next(a for a in args if isinstance(a, list))
        value = predict(file, items) if predict else None
        return value if value is not None else _predict(file, items, wrong or {})

    fake = FakeEngine(answer)
    for name in ("remote", "wait_one", "result_of"):
        monkeypatch.setattr(engine, name, getattr(fake, name))
    plans = [SimpleNamespace(name=m, file=tmp_path / f"{m}.fp32.onnx", preprocessing={}, sha256=f"sha-{m}", key=m)
             for m in models]
    spec = SimpleNamespace(calibration=tmp_path / "calib", seed=0)
    inputs = SimpleNamespace(items=ITEMS, labels=LABELS, dataset_sha="d", calibration_sha="c")
    cluster = SimpleNamespace(threads=1, workers=2)
    fp32: dict = {}
    seen: list[str] = []
    ran = schedule.run_jobs(spec, plans, inputs, rows, fp32, tmp_path / "out", cluster, "vnni",
                            lambda row, status: seen.append(row.name), tasks=TASKS)
    return SimpleNamespace(ran=ran, fp32=fp32, states=states, seen=seen, submitted=fake.submitted)


@pytest.mark.parametrize("count, workers, sizes", [
    (40, 2, [20, 20]), (100, 2, [25, 25, 25, 25]), (100, 1, [50, 50]), (5, 4, [5]), (0, 2, []),
])
def test_shards_are_contiguous_two_per_worker_at_least_16_items(count, workers, sizes):
    cuts = schedule.shards(count, workers)
    assert [c.stop - c.start for c in cuts] == sizes
    assert [i for c in cuts for i in range(count)[c]] == list(range(count))


def test_every_row_is_judged_against_its_models_fp32_predictions(tmp_path, monkeypatch):
    rows = _rows(("m", "x86-avx2", "minmax"), ("m", "x86-avx2", "entropy"))
    wrong = {"entropy": {0, 1, 2, 3}}  # the entropy file misses four readable images
    out = _run(tmp_path, monkeypatch, rows, wrong=wrong)
    assert [r.status for r in rows] == ["ok", "ok"]
    readable = len(ITEMS) - len(UNREADABLE)
    assert out.fp32["m"]["top1"] == pytest.approx(100.0) and out.fp32["m"]["images"] == readable
    assert rows[0].int8_top1 == pytest.approx(100.0) and rows[0].agreement == pytest.approx(100.0)
    assert rows[1].int8_top1 == pytest.approx(100.0 * (readable - 4) / readable)
    assert rows[1].agreement == pytest.approx(100.0 * (readable - 4) / readable)
    assert rows[0].images == readable and rows[0].file.endswith(".int8.onnx")
    assert out.ran == 3  # one fp32 top-1 and two quantizations
    assert sorted(out.seen) == sorted(r.name for r in rows)
    assert len([1 for kind, _ in out.submitted if kind == "predict"]) == 3 * len(schedule.shards(len(ITEMS), 2))


def test_rows_sharing_a_calibration_start_one_at_a_time(tmp_path, monkeypatch):
    rows = _rows(("m", "x86-avx2", "minmax"), ("m", "x86-vnni", "minmax"), ("m", "arm64", "entropy"))
    out = _run(tmp_path, monkeypatch, rows)
    order = [name for name, _ in out.states]
    assert order[:2] == ["m/x86-avx2/minmax/8", "m/arm64/entropy/8"]  # one per calibration group at first
    second = dict(out.states)["m/x86-vnni/minmax/8"]
    assert second["m/x86-avx2/minmax/8"] == "ok"  # started once its group's first row had finished
    assert all(r.status == "ok" for r in rows)


def test_a_failed_quantization_is_its_rows_one_line_and_releases_the_next_row(tmp_path, monkeypatch):
    rows = _rows(("m", "x86-avx2", "minmax"), ("m", "x86-vnni", "minmax"))
    failing = {"m/x86-avx2/minmax/8": {"error": "GateFailed: int8 model is not accurate enough"}}
    out = _run(tmp_path, monkeypatch, rows, quantize=lambda name: failing.get(name) or _quantized(name))
    assert (rows[0].status, rows[0].error) == ("failed", "GateFailed: int8 model is not accurate enough")
    assert rows[1].status == "ok"  # the next row of the group computed the calibration itself
    assert dict(out.states)["m/x86-vnni/minmax/8"]["m/x86-avx2/minmax/8"] == "failed"
    assert not (tmp_path / "out" / "jobs" / f"{rows[0].key}.json").exists()  # a failure is run again next time
    assert (tmp_path / "out" / "jobs" / f"{rows[1].key}.json").exists()


def test_a_worker_that_died_every_retry_fails_only_its_row(tmp_path, monkeypatch):
    rows = _rows(("m", "x86-avx2", "minmax"), ("m", "arm64", "entropy"))
    _run(tmp_path, monkeypatch, rows, quantize=lambda name: "died" if "arm64" in name else _quantized(name))
    assert rows[0].status == "ok"
    assert rows[1].status == "failed" and rows[1].error == "WorkerCrashedError: the worker died"


def test_a_dead_int8_shard_fails_its_row_with_top1_in_the_line(tmp_path, monkeypatch):
    rows = _rows(("m", "x86-avx2", "minmax"), ("m", "arm64", "entropy"))
    _run(tmp_path, monkeypatch, rows, predict=lambda file, items: "died" if "arm64" in file and items[0] == ITEMS[0] else None)
    assert rows[0].status == "ok"
    assert rows[1].status == "failed" and rows[1].error.startswith("top-1: WorkerCrashedError")


def test_a_dead_fp32_shard_leaves_its_models_rows_failed_with_the_reason(tmp_path, monkeypatch):
    rows = _rows(("m", "x86-avx2", "minmax"), ("n", "x86-avx2", "minmax"))
    out = _run(tmp_path, monkeypatch, rows, models=("m", "n"),
               predict=lambda file, items: "died" if file.endswith("m.fp32.onnx") else None)
    assert out.fp32["m"] == {"error": "fp32 top-1: WorkerCrashedError: the worker died"}
    assert rows[0].status == "failed" and rows[0].error.startswith("fp32 top-1:")
    assert rows[1].status == "ok"


def test_cached_rows_are_not_run_again(tmp_path, monkeypatch):
    rows = _rows(("m", "x86-avx2", "minmax"), ("m", "x86-vnni", "minmax"), cached={"m/x86-avx2/minmax/8"})
    out = _run(tmp_path, monkeypatch, rows)
    assert [name for name, _ in out.states] == ["m/x86-vnni/minmax/8"]
    assert out.ran == 2 and rows[1].status == "ok"


def test_the_engine_retries_a_dead_worker_and_reports_one_that_died_every_time_as_one_line(monkeypatch):
    """engine.remote asks Ray for `threads` CPUs and TASK_RETRIES retries; result_of turns Ray's giving up into
    ("died", one line) and hands any other value back (a fake `ray` module: Ray itself is not imported)."""
    import sys

    class RayError(Exception):
        pass

    class WorkerCrashedError(RayError):
        pass

    asked = {}

    def remote(**options):
        asked.update(options)
        return lambda function: ("task", function)

    def get(ref):
        if ref == "dead":
            raise WorkerCrashedError("The worker died unexpectedly\nwhile executing this task (3 lines of detail)\n...")
        return {"value": ref}

    fake_ray = SimpleNamespace(remote=remote, get=get, exceptions=SimpleNamespace(RayError=RayError))
    monkeypatch.setitem(sys.modules, "ray", fake_ray)
    assert engine.remote(jobs.predict_shard, 3) == ("task", jobs.predict_shard)
    assert asked == {"num_cpus": 3, "max_retries": engine.TASK_RETRIES} and engine.TASK_RETRIES >= 1
    assert engine.result_of("alive") == {"value": "alive"}
    kind, line = engine.result_of("dead")
    assert kind == "died" and line.startswith("WorkerCrashedError: The worker died unexpectedly") and "\n" not in line
