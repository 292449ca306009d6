"""Fault injection for the sweep's tests, kept out of shipped code: `python -m tests.sweep_faults ARGS` runs
`edgekit ARGS` with the sweep's worker tasks (edgekit.sweep.jobs.TASKS, the seam run_sweep's `tasks` defaults to)
replaced by wrappers that misbehave as SWEEP_TEST_FAULTS (JSON) asks:

    {"crash_once": NAME, "fail": NAME, "stall": NAME, "marker_dir": DIR}

The job whose point name contains `crash_once` kills its worker process (os._exit) the first time it runs, as a
worker killed by the OOM killer would (a marker file in `marker_dir` remembers it); the one containing `fail`
raises; the one containing `stall` sleeps ten minutes (a job still running when the user presses Ctrl-C).

Ray ships the wrappers to its workers by name (tests.sweep_faults.quantize_job), so the workers must import this
module: the tests put the repository root on PYTHONPATH, which a local Ray instance's workers inherit.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from edgekit.sweep import jobs

FAULTS_ENV = "SWEEP_TEST_FAULTS"
ROOT = Path(__file__).resolve().parent.parent
COMMAND = [sys.executable, "-m", "tests.sweep_faults"]  # edgekit, its workers running the wrappers below


def environment(faults: dict) -> dict:
    """What COMMAND needs in its environment: the faults, and the repository on the path of Ray's workers (they
    import this module by name)."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    return {FAULTS_ENV: json.dumps(faults), "PYTHONPATH": path}


def quantize_job(name: str, *args):
    _maybe_fault(name)
    return jobs.quantize_job(name, *args)


def predict_shard(model_file, items, preprocessing, kernels, threads, name="", runtime="ort"):
    _maybe_fault(name)
    return jobs.predict_shard(model_file, items, preprocessing, kernels, threads, name, runtime)


TASKS = jobs.Tasks(quantize=quantize_job, predict=predict_shard)


def _maybe_fault(name: str) -> None:
    raw = os.environ.get(FAULTS_ENV)
    if not raw or not name:
        return
    faults = json.loads(raw)
    if faults.get("stall") and faults["stall"] in name:
        time.sleep(600)
    if faults.get("fail") and faults["fail"] in name:
        raise RuntimeError(f"injected failure in {name} ({FAULTS_ENV})")
    if faults.get("crash_once") and faults["crash_once"] in name:
        marker = Path(faults["marker_dir"]) / ("crashed-" + faults["crash_once"].replace("/", "_"))
        try:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return
        os.close(fd)
        os._exit(137)  # the worker process dies, as one killed by the OOM killer would


def main() -> None:
    from edgekit.cli import main as edgekit_main

    jobs.TASKS = TASKS  # what the scheduler submits when no caller gives its own
    edgekit_main()


if __name__ == "__main__":
    from tests.sweep_faults import main as imported_main  # this module by its name, as the workers import it

    imported_main()
