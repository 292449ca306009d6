"""`edgekit sweep`: models x every swept quantize knob (targets, calibration methods, sample counts, max_drop, ...) x
runtimes, each int8 file judged on a labelled set in each runtime, the jobs fanned out on Ray; one table, a Pareto
plot, the best point (file, runtime) per model under a drop budget; resumable.

The rooms: spec.py (what a sweep runs, from options or a sweep file), plan.py (inputs hashed, exports, rows and
their content keys), jobs.py (what a worker runs), engine.py (Ray), results.py (rows, frontier, files).

The order of work: every input is checked and the fp32 exports made before anything is written; rows whose key is
in the job cache (`out/jobs/`) are read back; the rest run on Ray: each model's fp32 top-1 on the labelled set,
sharded, in each runtime, and each int8 file's quantization, then its top-1 in each runtime, sharded. The
quantizations that share a calibration (model, method, samples) run one first, so the activation ranges are computed
once and read by the others from `out/calibration/`. Latency comes last, one file at a time with Ray stopped, through
edgekit's runners and its one interleaved timer. Ctrl-C keeps every finished row.
"""

from __future__ import annotations

import contextlib
import io
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from edgekit.core.errors import BadInput, one_line
from edgekit.sweep.plan import Inputs, ModelPlan
from edgekit.sweep.results import Row, read_entry, save_row, write_results
from edgekit.sweep.spec import SweepSpec

__all__ = ["run_sweep", "SweepOutcome", "SweepSpec"]

LATENCY_ROUNDS = 15  # interleaved rounds per file: every runtime's int8 file and fp32 parent once each
LATENCY_NOTE = ("latency: p50 at batch 1 on this machine's CPU, each int8 file interleaved with its fp32 parent (in every "
                "runtime of the sweep, one interleaved run), one file at a time after every accuracy job (never "
                "measured while other jobs ran)")


@dataclass
class SweepOutcome:
    folder: Path
    rows: list[Row]
    written: dict[str, Path]
    cluster: str
    jobs_run: int  # quantize + top-1 jobs run this time (0 on a re-run that found everything cached)
    seconds: float
    max_drop: float | None  # the budget the best file per model was chosen under
    notes: list[str] = field(default_factory=list)

    @property
    def failed(self) -> list[Row]:
        return [r for r in self.rows if r.status == "failed"]

    def to_dict(self) -> dict:
        return {"folder": str(self.folder), "rows": [r.to_dict() for r in self.rows],
                "written": {k: str(v) for k, v in self.written.items()}, "cluster": self.cluster,
                "jobs_run": self.jobs_run, "seconds": self.seconds, "max_drop": self.max_drop, "notes": self.notes}


def normalized(spec: SweepSpec) -> SweepSpec:
    """Aliases to registered names, `auto` to this CPU's target (rows name what ran)."""
    from edgekit.models.registry import get_spec
    from edgekit.judge.targets import auto_target

    models = [get_spec(m).name for m in spec.models]
    targets = list(dict.fromkeys(auto_target() if t == "auto" else t for t in spec.targets))
    weights = {get_spec(m).name: f for m, f in spec.weights.items()}
    if len(set(models)) != len(models):
        raise BadInput(f"sweep: models name the same model twice: {', '.join(spec.models)}")
    return spec.model_copy(update={"models": models, "targets": targets, "weights": weights})


def run_sweep(spec: SweepSpec, out: Path, *, address: str | None = None, workers: int | None = None,
              on_stage: Callable[[str], None] | None = None, on_row: Callable[[Row, dict], None] | None = None,
              sweep_file: Path | None = None, tasks=None) -> SweepOutcome:
    """Run SPEC into the folder OUT (see the module docstring). `tasks`: the functions the workers run (jobs.Tasks;
    default jobs.TASKS): the seam the tests inject their faults through."""
    from edgekit.onnxfile.artifact import write_text_atomic
    from edgekit.core.provenance import this_cpu
    from edgekit.sweep import engine, plan

    stage = on_stage or (lambda _s: None)
    started = time.perf_counter()
    spec = normalized(spec)
    out = Path(out)
    _refuse(spec, out, workers, address, sweep_file)  # every refusal before the first write: it leaves nothing
    stage("reading the labelled and calibration sets")
    inputs = plan.read_inputs(spec)
    cpu = this_cpu()
    jobs = out / "jobs"
    said = io.StringIO()  # Ray prints what its raylet reports (a worker that died, ...) on stdout: a note
    cluster = None
    with plan.staging_folder(out) as staging:
        plans = plan.plan_exports(spec, out, Path(staging), stage)
        plan.check_classes(plans, inputs, spec.dataset)
        rows = plan.plan_rows(spec, plans, inputs, cpu.kind())
        notes = list(inputs.notes)  # a damaged cache entry is said here, in one line, and computed again
        notes += [n for n in (spec.budget_note(),) if n]
        fp32 = _read_cached(spec, plans, inputs, rows, jobs, cpu.kind(), notes)
        todo = [r for r in rows if r.status != "ok"]
        if todo or any(v is None for v in fp32.values()):
            with contextlib.redirect_stdout(said):  # Ray joined or started before the first write: an unreachable
                cluster = engine.start(address, workers)  # --address leaves nothing behind
        try:
            plan.commit_exports(plans, out)  # the first write: every input has been checked
            jobs.mkdir(exist_ok=True)
            write_text_atomic(out / "sweep.yaml", _yaml(spec.for_file()))
        except BaseException:
            if cluster is not None:
                engine.stop()
            raise
    summary = {"title": f"edgekit sweep: {', '.join(spec.models)}", "sweep": spec.for_file(), "cpu": {**cpu.to_dict(),
               "kind": cpu.kind()}, "versions": plan.versions(), "max_drop": spec.max_drop,
               "latency_note": LATENCY_NOTE if spec.latency else "latency not measured (--no-latency)",
               "dataset_images": len(inputs.items), "classes": len(inputs.classes)}
    cluster_text, jobs_run = "none (every row cached)", 0
    try:
        if cluster is not None:
            try:
                with contextlib.redirect_stdout(said):
                    cluster_text = cluster.describe()
                    stage(f"running on {cluster_text}")
                    from edgekit.sweep.schedule import run_jobs

                    jobs_run = run_jobs(spec, plans, inputs, rows, fp32, out, cluster, cpu.kind(), on_row, notes,
                                        tasks)
            finally:
                with contextlib.redirect_stdout(said):
                    engine.stop()
                notes += engine.reported(said.getvalue())
        for row in rows:  # fp32 top-1 onto every row (cached rows carry their own)
            ref = fp32.get(plan.reference(row.model, row.runtime))
            if row.fp32_top1 is None and ref:
                row.fp32_top1 = ref.get("top1")
        notes += _undecodable(fp32, inputs)
        if spec.latency:
            _measure_latency(rows, plans, inputs, jobs, stage)
    except KeyboardInterrupt as caught:
        exc = _keep_interrupted(caught, rows, out, summary)
        if exc is caught:
            raise
        raise exc from None
    summary["cluster"] = cluster_text
    summary["notes"] = [n for n in notes if not n.startswith("Ray: ")]
    written = write_results(out, rows, summary)
    return SweepOutcome(out, rows, written, cluster_text, jobs_run, time.perf_counter() - started, spec.max_drop, notes)


def _refuse(spec: SweepSpec, out: Path, workers: int | None, address: str | None, sweep_file: Path | None) -> None:
    """Every refusal of a sweep, before its first write: bad workers, -o on or holding an input or being a file, Ray
    absent (exit 3), an unusable temp folder, an --address nothing listens at."""
    from edgekit.onnxfile.artifact import refuse_folder_holding_inputs, register_input
    from edgekit.sweep import engine, guard

    guard.check_workers(workers)
    inputs_given = [("--dataset", Path(spec.dataset)), ("--calibration", Path(spec.calibration))]
    inputs_given += [(f"--weights {m}", Path(f)) for m, f in spec.weights.items()]
    inputs_given += [("sweep file", Path(sweep_file))] if sweep_file is not None else []
    guard.refuse_output_on_inputs(out, inputs_given, may_hold=(out / "sweep.yaml",))
    if out.exists() and not out.is_dir():
        raise BadInput(f"-o {out} is a file; a sweep writes a folder", hint="give a folder path")
    engine.require_ray()  # asked for and absent: exit 3 before any work
    guard.check_temp_folder()
    engine.check_address(address)  # nothing listens there: exit 3 now, not after the exports
    for path in (spec.dataset, spec.calibration, *spec.weights.values()):
        register_input(Path(path))
    refuse_folder_holding_inputs(out, "sweep folder")


def _read_cached(spec: SweepSpec, plans, inputs: Inputs, rows: list[Row], jobs: Path, cpu_kind: str,
                 notes: list[str]) -> dict:
    """The finished work of an earlier run of the same sweep: each (model, runtime)'s fp32 entry (None where it is
    not there or unusable, said in NOTES), and the finished rows put in place in ROWS, marked cached."""
    from edgekit.sweep import plan

    fp32 = {plan.reference(p.name, rt): read_entry(jobs / f"{plan.fp32_key(p, inputs, cpu_kind, rt)}.json", "",
                                                    "fp32", notes, len(inputs.items))
            for p in plans for rt in spec.runtimes}
    for i, row in enumerate(rows):
        cached = read_entry(jobs / f"{row.key}.json", row.key, "row", notes)
        if cached is not None:
            restored = Row.from_dict(cached)
            restored.cached, restored.seconds = True, 0.0
            rows[i] = restored
    return fp32


def _keep_interrupted(caught: KeyboardInterrupt, rows: list[Row], out: Path, summary: dict):
    """Ctrl-C or SIGTERM during the work: every finished row kept in results.json, the rest marked interrupted;
    returns the exception to raise (SIGTERM stays SIGTERM, exit 143, through Ray's calls), saying what was kept."""
    from edgekit.sweep import engine

    exc = engine.interrupt_raised(caught)
    for row in rows:
        if row.status not in ("ok", "failed"):
            row.status = "interrupted"
    write_results(out, rows, {**summary, "interrupted": True})
    finished = sum(r.status in ("ok", "failed") for r in rows)
    exc.kept = (f"{finished} of {len(rows)} rows finished, kept in {out}/results.json; the same sweep again "
                "runs only the rest")
    return exc


def _undecodable(fp32: dict, inputs: Inputs) -> list[str]:
    """One line naming the images of the labelled set that could not be decoded (the fp32 top-1 marks them -1):
    they are not scored, and the user is told which."""
    from edgekit.core.files import shown_path

    for entry in fp32.values():
        predictions = (entry or {}).get("predictions")
        if isinstance(predictions, list) and len(predictions) == len(inputs.items):
            bad = [Path(inputs.items[i]) for i, p in enumerate(predictions) if p < 0]
            if not bad:
                return []
            names = ", ".join(shown_path(f"{p.parent.name}/{p.name}") for p in bad[:5])
            more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
            return [f"--dataset: {len(bad)} image(s) cannot be decoded and are not scored: {names}{more}"]
    return []


def _measure_latency(rows: list[Row], plans: list[ModelPlan], inputs: Inputs, jobs: Path, stage) -> None:
    """p50 of each finished int8 file and its fp32 parent in every runtime of its rows, all of them interleaved in
    one run of the one timer (runtimes/timer.py), one file at a time (Ray is stopped), through edgekit's runners."""
    import numpy as np

    from edgekit.data.images import decode_image
    from edgekit.data.preprocessing import Preprocessing
    from edgekit.onnxfile import OnnxFile
    from edgekit.runtimes.factory import open_runner
    from edgekit.runtimes.timer import medians
    from edgekit.sweep.jobs import eval_kernels

    def first_decodable(prep: dict) -> np.ndarray:  # one image, batch 1, per model (a corrupt one passed over)
        for item in inputs.items:
            try:
                return np.stack([decode_image(Path(item), Preprocessing.from_dict(prep))])
            except ValueError:
                continue
        raise BadInput("no image of --dataset can be decoded")

    todo = [r for r in rows if r.status == "ok" and r.int8_p50_ms is None]
    inputs_of = {p.name: (p, first_decodable(p.preprocessing)) for p in plans if any(r.model == p.name for r in todo)}
    files = {}
    for row in todo:
        files.setdefault(row.file, []).append(row)
    for i, (file, file_rows) in enumerate(files.items(), 1):
        stage(f"latency {i}/{len(files)}: {file_rows[0].file_name}")
        parent, x = inputs_of[file_rows[0].model]
        runners = []
        try:
            recipe, kernels = OnnxFile.open(Path(file)).recipe or None, eval_kernels(Path(file))
            calls = {}
            for row in file_rows:
                for label, path, kind in (("fp32", parent.file, None), ("int8", Path(file), recipe)):
                    runner = open_runner(path, row.runtime, recipe=kind, kernels=kernels if kind else "default",
                                         timing=True, batch=1)
                    runners.append(runner)
                    calls[f"{label}@{row.runtime}"] = runner.timed_runner(x.astype(np.float32))
            ms = medians(calls, LATENCY_ROUNDS)
        except Exception as exc:  # noqa: BLE001  (a row, not a stop)
            for row in file_rows:
                row.status, row.error = "failed", f"latency: {type(exc).__name__}: {one_line(exc, 200)}"
            continue
        finally:
            for runner in runners:
                runner.close()
        for row in file_rows:
            row.fp32_p50_ms, row.int8_p50_ms = ms[f"fp32@{row.runtime}"], ms[f"int8@{row.runtime}"]
            save_row(jobs, row)


def _yaml(data: dict) -> str:
    import yaml

    return "# edgekit sweep: run it again with `edgekit sweep --file sweep.yaml`\n" + yaml.safe_dump(data, sort_keys=False)
