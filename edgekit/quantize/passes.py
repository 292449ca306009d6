"""quantize as named passes: prepare, rewrite, calibrate, quantize, check, judge, budget, write.

Each pass is one function of the run's state (`Run`): it reads the fields it declares and sets the ones it declares
(`PASSES`: name, function, reads, writes); the driver `run_passes` checks both and says each pass on the stage line
(the CLI draws it with rich), "[3/8] calibrate: ...". Nothing is written before `write`, and `write` builds the
metadata once through its schema (quantize/int8_metadata.py) and saves the file once.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from edgekit.core.errors import BadInput, CheckFailed, EnvironmentUnavailable, GateFailed, InvariantBroken
from edgekit.judge.compare import REWRITE_TOLERANCE, compare_outputs
from edgekit.judge.targets import judge_int8
from edgekit.onnxfile.artifact import load_work_file, write_metadata
from edgekit.onnxfile.graph import static_batch
from edgekit.onnxfile.structure import onnx_concat_count, onnx_grouped_conv_count, op_counts
from edgekit.quantize.budget import Measure
from edgekit.quantize.calibration import build_calibration_set
from edgekit.quantize.fallback import budget_missed, meet_budget
from edgekit.quantize.prepare import default_opset, prepare_graph
from edgekit.quantize.ranges import ranges_entry
from edgekit.quantize.static import (
    CALIB_PERCENTILE, check_quantized, derived_exclusions, int8_coverage, quantize_once,
)
from edgekit.runtimes.factory import session_options

UNSET: Any = type("Unset", (), {"__repr__": lambda self: "<unset>"})()  # a field no pass has set yet


@dataclass
class Run:
    """One quantize run: what quantize() decided before any work (the first block), then what each pass sets."""

    model_path: Path
    model: Any  # the fp32 ModelProto
    metadata: dict | None
    o: Any  # QuantizeOptions
    recipe: Any  # judge.targets.Recipe
    preprocessing: Any
    excluded: list[str]  # node names to keep in float (--exclude, resolved); renamed by rewrite
    budget: Any  # budget.Budget
    task: str
    gates: str
    workdir: Path
    staged: Any  # the staged output (onnxfile.artifact.stage_output)
    say: Callable[[str], None] = lambda _text: None  # the stage line, set per pass by the driver
    progress: Callable[[str, int, int], None] = lambda *_a: None
    notes: list[str] = field(default_factory=list)
    # set by the passes (see PASSES)
    calib: Any = UNSET
    input_name: str = UNSET
    output_name: str = UNSET
    batch: int | None = UNSET
    prepared: Any = UNSET
    pre_model: Any = UNSET
    want_grouped: int = UNSET
    want_concats: int = UNSET
    rewrites: dict = UNSET
    added_depthwise: int = UNSET
    ranges: Any = UNSET
    full: Path = UNSET
    calibration_seconds: float = UNSET
    cpu: Any = UNSET
    judgement: Any = UNSET
    recipe_meta: dict = UNSET
    measure: Any = UNSET
    first: Any = UNSET
    trial: Any = UNSET
    fallback: Any = UNSET
    chosen: Path = UNSET
    counts: tuple[int, int] = UNSET  # grouped convs, concats of the file written
    ops: dict = UNSET  # its op counts
    coverage: Any = UNSET
    holdout_default: Any = UNSET
    written: dict = UNSET  # the metadata as written


def prepare(run: Run) -> None:
    """The file ORT can load, the calibration and held-out tensors, ORT's pre-processing (quantize/prepare.py)."""
    from edgekit.runtimes.ort import create_session

    # A graph ONNX Runtime cannot run (an operator it does not know) is the user's input: say so in one line
    # now, before ORT's pre-processing prints its traceback and fails with a misleading one.
    create_session(run.model_path, "cpu", optimization="none")
    run.say("calibration set")
    o = run.o
    from edgekit.data.images import DEFAULT_CALIBRATION_DIR

    run.calib = build_calibration_set(
        Path(o.calibration) if o.calibration is not None else DEFAULT_CALIBRATION_DIR,
        run.preprocessing, o.samples, o.seed, o.augment, on_progress=lambda i, n: run.progress("decode", i, n),
    )
    run.notes.extend(run.calib.warnings)
    run.input_name, run.output_name = run.model.graph.input[0].name, run.model.graph.output[0].name
    run.batch = static_batch(run.model)
    run.say("ONNX Runtime's pre-processing")
    run.prepared = prepare_graph(run.model, run.model_path, run.workdir, _probe(run), run.batch, run.output_name)
    run.pre_model = load_work_file(run.prepared.path)
    run.want_grouped, run.want_concats = onnx_grouped_conv_count(run.model), onnx_concat_count(run.model)
    if onnx_grouped_conv_count(run.pre_model) != run.want_grouped:
        raise InvariantBroken(f"ORT's pre-processing changed the number of grouped convolutions of {run.model_path.name}")


def _probe(run: Run):
    return run.calib.holdout[: min(4, len(run.calib.holdout))]


def rewrite(run: Run) -> None:
    """The recipe's graph rewrites on the pre-processed graph (quantize/rewrites.py), checked exact in float; an
    --exclude naming a node the rewrites or the pre-processing replaced means what replaced it."""
    import onnx

    pre = run.prepared.path
    run.rewrites = apply_rewrites(run.pre_model, run.recipe)
    excluded = run.excluded
    if any(run.rewrites.values()):
        from edgekit.runtimes.runners import run_onnx

        probe = _probe(run)
        before = run_onnx(pre, probe, run.batch)
        onnx.save(run.pre_model, str(pre))
        drift = compare_outputs(before, run_onnx(pre, probe, run.batch), run.output_name, REWRITE_TOLERANCE)
        if not drift.passed:
            done = ", ".join(k for k, v in run.rewrites.items() if v)
            raise GateFailed(f"the graph rewrites ({done}) changed the outputs: {'; '.join(drift.failures)}")
        names = {n.name for n in run.pre_model.graph.node}
        # an --exclude naming a rewritten node means its replacement
        excluded = sorted(e if e in names or f"{e}_as_depthwise" not in names else f"{e}_as_depthwise" for e in excluded)
    run.excluded, mapped = derived_exclusions(pre, run.pre_model, run.model, excluded)  # names the pre-processing inlined
    run.notes.extend(mapped)
    # new grouped convs, not the model's
    run.added_depthwise = run.rewrites["batchnorm_as_depthwise"] + len(run.rewrites["avgpool_as_depthwise"])


def apply_rewrites(model, recipe) -> dict:
    """The recipe's graph rewrites on the pre-processed fp32 model, in order (see rewrites.py for each one's
    measured reason); returns what each did, for the metadata. The caller checks the function is unchanged."""
    from edgekit.quantize.rewrites import (
        avgpool_as_depthwise, avgpool_before_conv, batchnorm_as_depthwise, merge_conv_groups,
    )

    done: dict = {"conv_groups_merged": [], "avgpool_before_conv": [], "avgpool_as_depthwise": []}
    if recipe.merge_conv_groups:
        done["conv_groups_merged"] = merge_conv_groups(model, recipe.merge_conv_groups)
    if recipe.avgpool_as_depthwise:
        done["avgpool_before_conv"] = avgpool_before_conv(model)  # first: the pool then meets the input, not the conv
        done["avgpool_as_depthwise"] = avgpool_as_depthwise(model)
    done["batchnorm_as_depthwise"] = batchnorm_as_depthwise(model) if recipe.batchnorm_as_depthwise else 0
    return done


def calibrate(run: Run) -> None:
    """The activation ranges: the ranges cache's entry for this graph, calibration set and method (quantize/ranges.py),
    or a fresh working file that ORT's calibrator fills inside the quantize pass's one quantize_static call."""
    method = run.recipe.method
    run.ranges = ranges_entry(run.o.ranges_cache, run.workdir, run.prepared.path, run.calib.tensors, method,
                              CALIB_PERCENTILE if method == "percentile" else None)
    run.notes.extend([run.ranges.note] if run.ranges.note else [])


def quantize(run: Run) -> None:
    """One quantize_static pass (QDQ, the recipe) over the whole graph; every later trial reverts groups in it."""
    run.say("quantize (cached ranges)" if run.ranges.hit else "calibrate + quantize")
    started = time.perf_counter()
    run.full = run.workdir / "quantized.onnx"
    quantize_once(run.prepared.path, run.full, run.input_name, run.calib.tensors, run.batch, run.recipe,
                  sorted(set(run.excluded)), lambda i, n: run.progress("calibrate", i, n), calibration_cache=run.ranges.work)
    run.calibration_seconds = time.perf_counter() - started
    run.ranges.keep()


def check(run: Run) -> None:
    """The full int8 file really is int8, with the model's grouped convs and concats (quantize/static.py)."""
    check_quantized(load_work_file(run.full), run.model_path.name, run.want_grouped, run.want_concats,
                    run.added_depthwise)


def judge(run: Run) -> None:
    """How the file is judged (its CPU's kernels: judge/targets.py), and the full int8 file measured that way."""
    from edgekit.runtimes.devices import cpu_of

    device, explicit = run.o.device, run.o.target.lower()
    run.cpu = cpu_of(device)
    run.recipe_meta = {**run.recipe.to_dict(), "format": "QDQ", "batchnorm_rewritten": run.rewrites["batchnorm_as_depthwise"],
                       "rewrites": run.rewrites, "session_options": run.recipe.session_options(float_nodes=bool(run.excluded))}
    # an explicit --target says where the file will run; `auto` is this CPU
    run.judgement = judge_int8(run.recipe_meta, run.cpu, None if explicit == "auto" else explicit)
    run.notes.extend([run.judgement.note] if run.judgement.note else [])
    if device in (None, "host") and explicit != "auto":
        from edgekit.runtimes.devices import suggest_devices

        run.notes.extend([hint] if (hint := suggest_devices(run.recipe.target)) else [])
    run.measure = Measure(run.model_path, run.calib.holdout, run.output_name, run.batch, run.budget,
                          run.judgement.gate_session, bool(run.excluded), device=device)
    run.first = _first_measure(run)


def _first_measure(run: Run):
    """The full int8 file's first measurement. Where this CPU's ONNX Runtime cannot start a session for a file
    meant for another target, that is this CPU's optimizer, not the user's input: exit 3, saying so."""
    try:
        return run.measure(run.full, [])
    except (BadInput, CheckFailed) as exc:
        if run.judgement.for_this_cpu or "cannot load" not in str(exc):
            raise
        device = run.o.device
        where = f"the device {device}" if device not in (None, "host") else f"this CPU ({run.cpu.kind()})"
        raise EnvironmentUnavailable(
            f"ONNX Runtime on {where} cannot run this {run.recipe.target} file: {exc.message}",
            hint=f"judge it on its device, or with --device for an emulated {run.recipe.target} CPU",
        ) from None


def budget(run: Run) -> None:
    """The accuracy budget: the full file if it meets it, else the fp32 fallback's (quantize/fallback.py)."""
    run.trial, run.fallback, run.chosen = meet_budget(
        run.first, run.o, run.model_path, run.prepared.path, run.full, run.calib, run.batch, run.judgement, run.budget,
        run.measure, run.say, run.notes)


def write(run: Run) -> None:
    """The chosen graph checked, its coverage and default-kernel figures measured, the metadata built once through
    its schema, the file saved once; then the saved file is measured again: the bytes that ship pass the budget."""
    from edgekit.quantize.int8_metadata import int8_metadata

    quantized = load_work_file(run.chosen)
    run.counts = check_quantized(quantized, run.model_path.name, run.want_grouped, run.want_concats, run.added_depthwise)
    run.ops = dict(op_counts(quantized))
    fp32_nodes = run.trial.fp32_nodes
    recipe = {**run.recipe_meta, "excluded_nodes": sorted(set(run.excluded) | set(fp32_nodes)),
              "fp32_fallback_nodes": fp32_nodes,
              "session_options": run.recipe.session_options(float_nodes=bool(run.excluded or fp32_nodes))}
    if run.prepared.changes:
        recipe["prepared"] = run.prepared.changes
    run.coverage, _optimized_ops = int8_coverage(run.chosen, run.workdir, session_options(recipe))
    run.holdout_default = None
    if run.judgement.gate_session is not None and run.judgement.also_default:
        run.holdout_default = run.measure(run.chosen, fp32_nodes, session_config=None, dataset=False).holdout
    run.written = int8_metadata(run.metadata, run.model_path, preprocessing=run.preprocessing,
                                calibration=run.calib.to_metadata(), recipe=recipe, report=_report(run),
                                task=run.task, opset=default_opset(quantized))
    write_metadata(quantized, run.written)
    run.staged.save(quantized)
    shipped = run.measure(run.staged.path, fp32_nodes)
    if not shipped.passed(run.budget):  # the written bytes must pass what the trial passed
        budget_missed(shipped, run.budget, run.calib, run.judgement, "")


def _report(run: Run) -> dict:
    """The quantization report of the metadata: the chosen graph's figures as the budget measured them."""
    report = {
        "holdout_top1_agreement": run.trial.holdout.top1_agreement, "holdout_sqnr_db": run.trial.holdout.sqnr_db,
        "budget": run.budget.describe(), "gated_session_options": run.judgement.gate_session or {},
        "gated_kernels": run.judgement.kernels or "default", "cpu": run.cpu.to_dict(), "device": run.o.device or "host",
        "coverage_int8": run.coverage.int8, "coverage_total": run.coverage.total,
    }
    if run.trial.drop is not None:
        report.update(dataset_fp32_top1=run.trial.fp32_top1, dataset_int8_top1=run.trial.int8_top1)
    if run.holdout_default is not None:
        report["holdout_sqnr_db_default_kernels"] = run.holdout_default.sqnr_db
        report["holdout_top1_agreement_default_kernels"] = run.holdout_default.top1_agreement
    return report


@dataclass(frozen=True)
class Pass:
    name: str
    run: Callable[[Run], None]
    reads: tuple[str, ...]
    writes: tuple[str, ...]


PASSES = (
    Pass("prepare", prepare, ("model_path", "model", "o", "preprocessing", "workdir"),
         ("calib", "input_name", "output_name", "batch", "prepared", "pre_model", "want_grouped", "want_concats")),
    Pass("rewrite", rewrite, ("prepared", "pre_model", "recipe", "calib", "batch", "output_name", "excluded", "model"),
         ("rewrites", "excluded", "added_depthwise")),
    Pass("calibrate", calibrate, ("o", "workdir", "prepared", "calib", "recipe"), ("ranges",)),
    Pass("quantize", quantize, ("prepared", "ranges", "calib", "batch", "recipe", "excluded", "input_name"),
         ("full", "calibration_seconds")),
    Pass("check", check, ("full", "want_grouped", "want_concats", "added_depthwise"), ()),
    Pass("judge", judge, ("o", "recipe", "rewrites", "excluded", "calib", "budget", "full", "batch", "output_name"),
         ("cpu", "judgement", "recipe_meta", "measure", "first")),
    Pass("budget", budget, ("first", "measure", "judgement", "full", "prepared", "calib", "budget", "batch"),
         ("trial", "fallback", "chosen")),
    Pass("write", write, ("chosen", "trial", "recipe_meta", "measure", "judgement", "cpu", "staged", "task", "calib",
                          "prepared", "excluded", "want_grouped", "want_concats", "added_depthwise"),
         ("counts", "ops", "coverage", "holdout_default", "written")),
)


def run_passes(run: Run, stage: Callable[[str], None], passes: tuple[Pass, ...] = PASSES) -> Run:
    """Each pass in order, its declared inputs there before it runs and its outputs set after; the stage line says
    which ("[n/N] name", then what the pass says)."""
    for n, step in enumerate(passes, 1):
        label = f"[{n}/{len(passes)}] {step.name}"
        missing = [f for f in step.reads if getattr(run, f) is UNSET]
        if missing:
            raise InvariantBroken(f"quantize's {step.name} pass runs before {', '.join(missing)} is set")
        stage(label)
        run.say = lambda text, _label=label: stage(f"{_label}: {text}")
        step.run(run)
        unset = [f for f in step.writes if getattr(run, f) is UNSET]
        if unset:
            raise InvariantBroken(f"quantize's {step.name} pass did not set {', '.join(unset)}")
    return run
