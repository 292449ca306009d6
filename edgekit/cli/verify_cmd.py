"""`edgekit verify`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from edgekit.cli import options
from edgekit.cli.options import option
from edgekit.cli.app import app, console, escape, handle_errors, print_json
from edgekit.cli.output import progress
from edgekit.verify.options import VerifyOptions


V = VerifyOptions  # the stage's options' defaults, help and ranges: verify/options.py
# the flags that are not VerifyOptions knobs (what verify_command does with a result, and a bundle's manifest hash)
Plot = Annotated[Path | None, typer.Option(
    "--plot", dir_okay=False, help="with --layers: where the PNG goes (default: beside --report, or the file)")]
Report = Annotated[Path | None, typer.Option(
    "--report", help="write all numbers to FILE.json and a summary to FILE.md", dir_okay=False)]
Verbose = Annotated[bool, typer.Option(
    "--verbose", "-v", help="every metric in the table (the reports always have them)")]
ExpectManifest = Annotated[str | None, typer.Option(
    "--expect-manifest", help="a bundle: fail unless its manifest.json has this sha256")]
Localize = Annotated[bool, typer.Option(
    "--localize", help="an int8 file that fails: the layers to keep in fp32 (edgekit debug FILE)")]


@app.command("verify")
@handle_errors
def verify_command(
    model_file: Annotated[Path, typer.Argument(help="the .onnx file to verify")],
    providers: options.Providers = V.providers,
    runtimes: options.Runtimes = V.runtimes,
    allow_fallback: Annotated[bool, option(V, "allow_fallback", "--allow-fallback")] = V.allow_fallback,
    images: options.Images = V.images,
    inputs: Annotated[Path | None, option(V, "inputs", "--inputs", dir_okay=False)] = V.inputs,
    random_inputs: Annotated[int, option(V, "random_inputs", "--random-inputs")] = V.random_inputs,
    seed: Annotated[int, option(V, "seed", "--seed")] = V.seed,
    model: Annotated[str | None, option(V, "model", "--model")] = V.model,
    weights: options.Weights = V.weights,
    pretrained: options.Pretrained = V.pretrained,
    atol: Annotated[float | None, option(V, "atol", "--atol")] = V.atol,
    rtol: Annotated[float | None, option(V, "rtol", "--rtol")] = V.rtol,
    min_top1_agreement: options.MinTop1 = V.min_top1_agreement,
    min_sqnr: options.MinSqnr = V.min_sqnr,
    dataset: Annotated[Path | None, option(V, "dataset", "--dataset")] = V.dataset,
    max_drop: Annotated[float | None, option(V, "max_drop", "--max-drop")] = V.max_drop,
    samples: Annotated[int | None, option(V, "dataset_samples", "--samples")] = V.dataset_samples,
    target: Annotated[options.Target | None, option(V, "target", "--target", case_sensitive=False)] = V.target,
    layers: Annotated[bool, option(V, "layers", "--layers")] = V.layers,
    parent: Annotated[Path | None, option(V, "parent", "--parent", dir_okay=False)] = V.parent,
    plot: Plot = None,
    report: Report = None,
    device: options.Device = V.device,
    device_timeout: options.DeviceTimeout = None,
    verbose: Verbose = False,
    expect_manifest: ExpectManifest = None,
    localize: Localize = False,
    json_output: options.Json = False,
) -> None:
    """Run MODEL_FILE on each execution provider (and runtime, and --device) and compare it with its reference: the PyTorch
    model it came from, or its fp32 parent (the original, for an imported file) in ONNX Runtime.

    MODEL_FILE may also be a bundle folder from `edgekit package`: its own checks (checksums, .onnx and .ort
    on the golden inputs, the gates) run as check.py runs them on the device."""
    knobs = VerifyOptions(
        providers=providers, allow_fallback=allow_fallback, images=images, inputs=inputs, random_inputs=random_inputs,
        seed=seed, model=model, weights=weights, pretrained=pretrained, atol=atol, rtol=rtol,
        min_top1_agreement=min_top1_agreement, min_sqnr=min_sqnr, dataset=dataset, max_drop=max_drop,
        dataset_samples=samples, target=target.value if target is not None and target.value != "auto" else None,
        layers=layers, parent=parent, runtimes=runtimes, device=device,
    )
    if localize:
        from edgekit.cli.debug_cmd import localize_for_verify

        others = {"--plot": plot, "--report": report, "--expect-manifest": expect_manifest, "--verbose": verbose or None,
                  "--device-timeout": device_timeout}
        return localize_for_verify(model_file, knobs, others, json_output)
    if model_file.is_dir() and (model_file / "manifest.json").exists():
        return _check_bundle_folder(model_file, knobs, plot, report, expect_manifest, json_output)
    result, written, png = _run_verify(model_file, knobs, plot, report)
    _show(result, written, png, verbose, json_output)
    _raise_if_failed(result, model_file, knobs)
    if not json_output:
        console.print(f"[bold green]PASS[/] {escape(str(model_file))} matches {escape(result.reference.short)} on {', '.join(r.label for r in result.providers)} ({result.seconds:.1f} s)")


def _check_bundle_folder(folder: Path, knobs: VerifyOptions, plot: Path | None, report: Path | None,
                         expect_manifest: str | None, json_output: bool) -> None:
    """`edgekit verify BUNDLE/`: the options a bundle check would not read refused in one line, then its checks."""
    from edgekit.core.errors import BadInput

    # a bundle is checked with its golden data and its manifest's gates (tightened or loosened by the gate
    # options); every other option would be silently dropped, so it is refused
    refused = bundle_refused_options(knobs) + (["--plot"] if plot is not None else [])
    if refused:
        verb = "does" if len(refused) == 1 else "do"
        raise BadInput(f"{', '.join(refused)} {verb} not apply to a bundle ({folder} is checked with its own "
                       "golden data and gates)", hint="verify the .onnx inside it for that")
    if report is not None:
        _refuse_report_in_bundle(report, folder)
    gates = {"atol": knobs.atol, "rtol": knobs.rtol, "min_top1_agreement": knobs.min_top1_agreement,
             "min_sqnr_db": knobs.min_sqnr}
    _verify_bundle(folder, knobs.providers, report, json_output, knobs.device, expect_manifest,
                   {k: v for k, v in gates.items() if v is not None})


def _claim_paths(model_file: Path, parent: Path | None, plot: Path | None, report: Path | None) -> None:
    """The inputs registered, so that an output written over one (or unwritable) fails now, before verify runs."""
    from edgekit.onnxfile.outputs import refuse_if_input, register_input
    from edgekit.verify.report import report_paths

    register_input(model_file, "input model")
    if parent is not None:
        register_input(parent, "fp32 parent")
    if report is not None:
        for out in report_paths(report):  # an unwritable report path, or one on an input, fails now
            refuse_if_input(out, "--report")
    if plot is not None:
        refuse_if_input(plot, "--plot")


def _run_verify(model_file: Path, knobs: VerifyOptions, plot: Path | None, report: Path | None):
    """verify with its progress line; then the reports (--report) and the per-layer plot (--layers) written.
    Returns (result, the report paths written or None, the plot's path or None)."""
    from edgekit.verify import verify
    from edgekit.verify.report import write_reports

    _claim_paths(model_file, knobs.parent, plot, report)
    with progress(f"verify {model_file.name}") as shown:
        result = verify(model_file, knobs, on_stage=shown.stage)
    written = write_reports(result, report) if report is not None else None
    png = None
    if result.layers is not None:
        from edgekit.plots import plot_layer_errors

        png = plot or (report.with_suffix(".layers.png") if report is not None else model_file.with_suffix(".layers.png"))
        plot_layer_errors(result.layers, png, f"{model_file.name}: int8 activation SQNR along the network")
    return result, written, png


def _show(result, written, png: Path | None, verbose: bool, json_output: bool) -> None:
    """The result as JSON, or as its header, tables, notes and the reports written."""
    from edgekit.verify.report import comparison_table, dataset_table, header_lines, layers_table, note_lines

    if json_output:
        print_json(result)
        return
    for line in header_lines(result):
        console.print(line, soft_wrap=True)
    console.print(comparison_table(result, verbose))
    per_layer = layers_table(result)
    if per_layer is not None:
        console.print(per_layer)
        console.print(f"per-layer plot: {escape(str(png))}")
    accuracy = dataset_table(result)
    if accuracy is not None:
        console.print(accuracy)
    for note in note_lines(result):
        console.print(f"[yellow]note:[/] {escape(note)}", soft_wrap=True)
    if written:
        console.print(f"wrote {escape(str(written[0]))} and {escape(str(written[1]))}")


def _raise_if_failed(result, model_file: Path, knobs: VerifyOptions) -> None:
    """A failed gate: its first failure in one line (exit 1); a saturated int8 file is its own kind of failure."""
    from edgekit.core.errors import GateFailed, SaturationFailed

    failures = result.failures()
    if not failures:
        return
    more = f" (+{len(failures) - 1} more in the table)" if len(failures) > 1 else ""
    photos_only = knobs.images is None and knobs.inputs is None and "trained" in result.tolerance_source
    kind = SaturationFailed if result.saturation is not None and result.saturation.failure else GateFailed
    raise kind(
        f"{model_file}: verification failed: {failures[0]}{more}",
        hint="the bundled photos may not be your model's domain: pass --images DIR with images like the ones it "
        "was trained on" if photos_only else None,
    )


# The VerifyOptions a bundle check reads are declared with the knobs themselves (VerifyOptions.bundle_knobs); every
# other knob is refused for a bundle, so a knob added to VerifyOptions is refused there until the bundle check reads it.
FLAGS = {"dataset_samples": "--samples"}  # a knob whose flag is not its name with dashes


def knob_flag(name: str) -> str:
    """The `edgekit verify` flag of the VerifyOptions knob NAME."""
    return FLAGS.get(name, "--" + name.replace("_", "-"))


def bundle_refused_options(knobs: VerifyOptions) -> list[str]:
    """The flags given (not at their defaults) that a bundle check would ignore: every knob of the options' class
    that is not in its `bundle_knobs`."""
    import dataclasses

    refused = []
    for f in dataclasses.fields(knobs):
        if f.name in type(knobs).bundle_knobs:
            continue
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        if getattr(knobs, f.name) != default:
            refused.append(knob_flag(f.name))
    return refused


def _refuse_report_in_bundle(report: Path, bundle: Path) -> None:
    """A --report inside the bundle would overwrite or add to what its manifest vouches for."""
    from edgekit.core.errors import BadInput

    root = bundle.resolve()
    for out in (report, report.with_suffix(".md")):
        target = Path(out).resolve()
        if target == root or root in target.parents:
            raise BadInput(f"--report {out} is inside the bundle {bundle}; it would change the files its manifest "
                           "vouches for", hint="write the report outside the bundle folder")


def _require_providers(providers: str | None) -> None:
    """A GPU provider asked of a bundle check that this machine cannot start is a missing environment (exit 3),
    said before the check runs, not a failed check."""
    from edgekit.core.errors import ProviderUnavailable
    from edgekit.runtimes.ort import PROVIDERS, cuda_device_available, parse_providers

    import onnxruntime

    available = set(onnxruntime.get_available_providers())
    for name in parse_providers(providers):
        if name == "cpu":
            continue
        if PROVIDERS[name] not in available:
            raise ProviderUnavailable(f"{name.upper()} is not in this onnxruntime ({', '.join(sorted(available))})",
                                      hint="run where the provider works, e.g. with onnxruntime-gpu installed")
        if name in ("cuda", "tensorrt") and not cuda_device_available():
            raise ProviderUnavailable(f"{name.upper()}: no CUDA device is visible to this process",
                                      hint="run on a machine with an NVIDIA GPU, or drop --providers")


def _verify_bundle(folder: Path, providers: str | None, report: Path | None, json_output: bool,
                   device: str | None = None, expect_manifest: str | None = None, gates: dict | None = None) -> None:
    """`edgekit verify BUNDLE/`: check.py's checks, run by edgekit, with the same table; with --device, the
    checks run by edgekit with the models inside that (emulated) device; nothing from the bundle runs."""
    from edgekit.bundle import check_bundle, check_bundle_on_device
    from edgekit.core.errors import BadInput, BundleTampered, GateFailed
    from edgekit.runtimes.ort import parse_providers

    if device not in (None, "host"):
        if providers is not None and parse_providers(providers) != ["cpu"]:
            raise BadInput(f"--device {device} runs check.py on the CPU provider only; drop --providers")
        if gates:
            raise BadInput(f"--device {device} runs the bundle's own check.py with its manifest's gates; drop "
                           f"{', '.join('--' + k.replace('_', '-') for k in gates)}")
        result = check_bundle_on_device(folder, device, expect_manifest=expect_manifest)
    else:
        _require_providers(providers)
        result = check_bundle(folder, parse_providers(providers), expect_manifest=expect_manifest, gates=gates)
    if report is not None:
        from edgekit.cli.app import write_json_report

        write_json_report(report, result)
    if json_output:
        print_json(result)
    else:
        console.print(escape(result.describe()), soft_wrap=True)
    if not result.passed:
        kind = BundleTampered if any(not c["ok"] for c in result.checksums) else GateFailed
        raise kind(f"bundle {folder} failed its checks: {'; '.join(result.reasons) or 'see the table'}")
