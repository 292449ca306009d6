"""`edgekit sweep`: models x every swept quantize knob x runtimes, judged on a labelled set, on Ray.

Any knob of `edgekit quantize` is swept with `--sweep KNOB=V1,V2,...` (Hydra's multirun syntax, one option for every
knob, so a knob added to QuantizeOptions is sweepable without a new option here) or fixed with `--set KNOB=VALUE`;
`--targets`, `--methods` and `--samples` stay as the names for sweeping target, method and samples."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from edgekit.cli import options
from edgekit.cli.app import app, console, err_console, handle_errors, print_json
from edgekit.cli.output import progress
from edgekit.judge.targets import TARGETS
from edgekit.quantize.options import CALIBRATION_METHODS as METHODS

EXIT_ROWS_FAILED = 1


def _knobs_text() -> str:
    """The knobs --sweep and --set take, each with its range, read from QuantizeOptions (their help: `edgekit
    quantize --help`)."""
    import dataclasses

    from edgekit.quantize.options import QuantizeOptions
    from edgekit.sweep.spec import OWNED

    def shown(f) -> str:
        low, high = f.metadata["range"]
        return f.name + (f" ({low:g}..{high:g})" if low is not None and high is not None else "")

    names = [shown(f) for f in dataclasses.fields(QuantizeOptions) if f.name not in OWNED]
    return ("Knobs for --sweep and --set (those of `edgekit quantize`, with their ranges; their help: `edgekit quantize "
            "--help`): " + ", ".join(names) + ".")


@app.command("sweep", epilog=_knobs_text())
@handle_errors
def sweep_command(
    models: Annotated[str | None, typer.Option("--models", help="comma-separated registered models")] = None,
    targets: Annotated[
        str | None, typer.Option("--targets", help=f"comma-separated int8 targets ({', '.join(TARGETS)})")
    ] = None,
    methods: Annotated[str | None, typer.Option("--methods", help="comma-separated: " + ", ".join(METHODS))] = None,
    samples: Annotated[str | None, typer.Option("--samples", help="comma-separated calibration sample counts")] = None,
    calibration: Annotated[Path | None, typer.Option("--calibration", help="calibration images or tensors")] = None,
    dataset: Annotated[Path | None, typer.Option("--dataset", help="labelled images, one sub-folder per class")] = None,
    weights: Annotated[list[str] | None, typer.Option("--weights", help="MODEL=FILE, repeatable")] = None,
    input_size: Annotated[int | None, typer.Option("--input-size", help="input size of every model")] = None,
    resize: Annotated[int | None, typer.Option("--resize", help="shorter side before the centre crop")] = None,
    dataset_samples: Annotated[
        int | None, typer.Option("--dataset-samples", help="score this many images of --dataset (seeded)")
    ] = None,
    sweep: Annotated[list[str] | None, typer.Option(
        "--sweep", help="sweep any quantize knob: KNOB=V1,V2 (repeatable), e.g. max_drop=0.5,1,2 or per_channel=true,false; "
        "a list knob's names joined with +")] = None,
    fixed: Annotated[list[str] | None, typer.Option(
        "--set", help="fix a quantize knob for every job: KNOB=VALUE (repeatable), e.g. rewrites=false")] = None,
    runtimes: Annotated[str | None, typer.Option(
        "--runtimes", help="comma-separated: ort, openvino; every int8 file is judged and timed in each")] = None,
    max_drop: Annotated[
        float | None, typer.Option("--max-drop", help="top-1 drop budget in points for the best file per model (quantize's "
                                   "own budget: --sweep max_drop=... or --set max_drop=...)")
    ] = None,
    latency: Annotated[bool, typer.Option("--latency/--no-latency", help="time each int8 file after the jobs")] = True,
    file: Annotated[
        Path | None, typer.Option("--file", "-f", dir_okay=False, help="sweep file (TOML or YAML); options override it")
    ] = None,
    address: Annotated[
        str | None, typer.Option("--address", help="join a Ray cluster: HOST:PORT or auto (default: a local instance)")
    ] = None,
    workers: Annotated[int | None, typer.Option("--workers", help="jobs at once (default: one per core)")] = None,
    seed: options.Seed = 0,
    output: Annotated[Path, typer.Option("-o", "--output", help="results folder")] = Path("sweep"),
    json_output: options.Json = False,
) -> None:
    """Quantize every model for every value of every swept knob (--targets, --methods, --samples, --sweep KNOB=...);
    judge each int8 file's top-1 on a labelled set in each of --runtimes; one table, a Pareto plot, and the best
    point per model under --max-drop. Resumable: a re-run reads back every finished job."""
    from edgekit.sweep import run_sweep
    from edgekit.sweep.spec import parse_assignments, parse_weights, read_sweep_file, spec_from, split_list

    values: dict = read_sweep_file(file) if file is not None else {}
    given = {"models": split_list(models), "targets": split_list(targets), "methods": split_list(methods),
             "samples": _counts(samples), "calibration": calibration, "dataset": dataset, "input_size": input_size,
             "resize": resize, "dataset_samples": dataset_samples, "max_drop": max_drop,
             "runtimes": split_list(runtimes)}
    values.update({k: v for k, v in given.items() if v is not None})
    swept, set_here = parse_assignments(sweep or [], "--sweep"), parse_assignments(fixed or [], "--set")
    both = sorted(set(swept) & set(set_here))
    if both:
        raise typer.BadParameter(f"{both[0]} is given to both --sweep and --set", param_hint="--sweep")
    if swept or set_here:  # options override the sweep file knob by knob, a knob swept here no longer fixed there
        file_sweep, file_fixed = values.get("sweep") or {}, values.get("quantize") or {}
        if isinstance(file_sweep, dict) and isinstance(file_fixed, dict):
            values["sweep"] = {**{k: v for k, v in file_sweep.items() if k not in set_here}, **swept}
            values["quantize"] = {**{k: v for k, v in file_fixed.items() if k not in swept}, **set_here}
    if weights:
        values["weights"] = parse_weights(weights)
    if not latency:
        values["latency"] = False
    if seed:
        values["seed"] = seed
    if "models" not in values:
        raise typer.BadParameter("give --models (or a sweep file with models)", param_hint="--models")
    if "dataset" not in values:
        raise typer.BadParameter("give --dataset: the labelled set each int8 file is judged on", param_hint="--dataset")
    spec = spec_from(values, f"sweep file {file}" if file else "sweep")

    with progress("sweep") as shown:

        def on_row(row, status) -> None:
            shown.count("jobs", status["done"] + status["failed"], status["total"])
            shown.stage(f"{status['done']} done, {status['running']} running, {status['failed']} failed (last: {row.name})")

        outcome = run_sweep(spec, output, address=address, workers=workers, on_stage=shown.stage, on_row=on_row,
                            sweep_file=file)
    for note in outcome.notes:  # skipped images, damaged cache entries: one line each (Ray's own reports stay in
        if not note.startswith("Ray: "):  # the JSON: a retried worker is not the user's to act on)
            err_console.print(f"note: {escape(note)}", soft_wrap=True, highlight=False)
    if json_output:
        print_json(outcome)
    else:
        render_sweep(outcome)
    if outcome.failed:
        err_console.print(f"[red]{len(outcome.failed)} of {len(outcome.rows)} jobs failed[/]; their rows say why")
        raise typer.Exit(EXIT_ROWS_FAILED)


def _counts(text: str | None) -> list | None:
    from edgekit.sweep.spec import split_list

    parts = split_list(text)
    if parts is None:
        return None
    out = []
    for part in parts:
        try:
            out.append(int(part))
        except ValueError:
            raise typer.BadParameter(f"{part!r} is not a whole number", param_hint="--samples") from None
    return out


def render_sweep(outcome) -> None:
    """The rows a person decides on, readable at 80 columns; every number is in results.json/csv/md."""
    from edgekit.sweep.results import best_per_model, cell, pareto_frontier

    frontier = {r.name for r in pareto_frontier(outcome.rows)}
    table = Table(title="edgekit sweep: int8 files on the labelled set", show_edge=False)
    knobs = any(r.knobs for r in outcome.rows)  # the columns a sweep varies, no others
    runtimes = len({r.runtime for r in outcome.rows}) > 1
    groups = any(r.fp32_groups is not None for r in outcome.rows)
    columns = [("model", "left"), ("target", "left"), ("method", "left"), ("n", "right")]
    columns += [("knobs", "left")] * knobs + [("runtime", "left")] * runtimes
    columns += [("top-1", "right"), ("drop", "right")] + [("fp32 groups", "right")] * groups
    columns += [("ms", "right"), ("size", "right"), ("", "left")]
    for column, justify in columns:
        table.add_column(column, justify=justify)
    for row in outcome.rows:
        lead = [escape(row.model), row.target, row.method, str(row.samples)]
        lead += [escape(cell(row, "knobs"))] * knobs + [row.runtime] * runtimes
        if row.status != "ok":
            table.add_row(*lead, "", "", *[""] * groups, "", "", f"[red]{escape(row.status)}[/]")
            continue
        fp32_groups = "" if row.fp32_groups is None else f"{row.fp32_groups}" + (f"/{row.groups}" if row.groups else "")
        table.add_row(*lead, cell(row, "int8_top1"), cell(row, "drop"), *[fp32_groups] * groups,
                      cell(row, "int8_p50_ms"), f"{cell(row, 'size_ratio')}x",
                      ("*" if row.name in frontier else "") + ("c" if row.cached else ""))
    console.print(table)
    console.print("* on the Pareto frontier (drop vs latency); c read from the job cache")
    for model, row in best_per_model(outcome.rows, outcome.max_drop).items():
        console.print(f"best {escape(model)}: " + (escape(f"{row.name} -> {row.file}") if row else "none within the budget"))
    for row in outcome.failed:
        console.print(f"[red]failed[/] {escape(row.name)}: {escape(row.error or '')}")
    console.print(f"[dim]{escape(outcome.cluster)}; {outcome.jobs_run} job(s) run in {outcome.seconds:.1f} s; "
                  f"results in {escape(str(outcome.folder))}/ (results.json, .csv, .md, pareto.png)[/]")
