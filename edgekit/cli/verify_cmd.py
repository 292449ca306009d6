"""`edgekit verify`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from edgekit.cli.app import app, console, err_console, handle_errors


@app.command("verify")
@handle_errors
def verify_command(
    model_file: Annotated[Path, typer.Argument(help="the .onnx file to verify")],
    providers: Annotated[
        str | None,
        typer.Option("--providers", help="comma-separated: cpu,cuda,tensorrt (default: cpu, plus cuda when a CUDA device is usable)"),
    ] = None,
    allow_fallback: Annotated[
        bool, typer.Option("--allow-fallback", help="a provider that does not start runs on CPU and the report says so (else exit 3)")
    ] = False,
    images: Annotated[Path | None, typer.Option("--images", help="photos to compare on (default: the bundled calibration/)")] = None,
    inputs: Annotated[
        Path | None, typer.Option("--inputs", help=".npz/.npy of preprocessed (N, C, H, W) tensors (instead of the default photos)", dir_okay=False)
    ] = None,
    random_inputs: Annotated[int, typer.Option("--random-inputs", help="seeded standard-normal inputs added (0: none)")] = 4,
    seed: Annotated[int, typer.Option("--seed", help="seed of the random inputs (and of random weights with --model)")] = 0,
    model: Annotated[str | None, typer.Option("--model", help="the model a file without edgekit metadata was exported from")] = None,
    weights: Annotated[
        Path | None, typer.Option("--weights", help="its weights file (sha256 checked against the file's metadata)", dir_okay=False)
    ] = None,
    pretrained: Annotated[bool, typer.Option("--pretrained", help="with --model: torchvision weights from the local hub cache")] = False,
    atol: Annotated[float | None, typer.Option("--atol", help="elementwise absolute tolerance (fp32 default 1e-4)")] = None,
    rtol: Annotated[float | None, typer.Option("--rtol", help="elementwise relative tolerance (fp32 default 1e-3)")] = None,
    min_top1_agreement: Annotated[
        float | None, typer.Option("--min-top1-agreement", help="fraction of samples whose top-1 must match PyTorch's (0..1)")
    ] = None,
    min_sqnr: Annotated[float | None, typer.Option("--min-sqnr", help="minimum SQNR of the outputs, dB")] = None,
    dataset: Annotated[
        Path | None, typer.Option("--dataset", help="labelled images, one sub-folder per class (ImageFolder): top-1 accuracy")
    ] = None,
    max_drop: Annotated[
        float | None, typer.Option("--max-drop", help="fail when top-1 on --dataset drops more than this many points")
    ] = None,
    samples: Annotated[int | None, typer.Option("--samples", help="at most this many --dataset images (seeded pick)")] = None,
    report: Annotated[
        Path | None, typer.Option("--report", help="write all numbers to FILE.json and a summary to FILE.md", dir_okay=False)
    ] = None,
) -> None:
    """Run MODEL_FILE on each ONNX Runtime execution provider and compare it with the PyTorch model it came from."""
    from edgekit.errors import CheckFailed
    from edgekit.report import comparison_table, dataset_table, header_lines, note_lines, report_paths, write_reports
    from edgekit.verify import verify

    if report is not None:
        report_paths(report)  # an unwritable report path fails now, not after the work
    with err_console.status("verifying") as status:
        result = verify(
            model_file,
            providers=providers,
            allow_fallback=allow_fallback,
            images=images,
            inputs=inputs,
            random_inputs=random_inputs,
            seed=seed,
            model=model,
            weights=weights,
            pretrained=pretrained,
            atol=atol,
            rtol=rtol,
            min_top1_agreement=min_top1_agreement,
            min_sqnr=min_sqnr,
            dataset=dataset,
            max_drop=max_drop,
            dataset_samples=samples,
            on_stage=lambda stage: status.update(f"{model_file.name}: {stage}"),
        )
    for line in header_lines(result):
        console.print(line, soft_wrap=True)
    console.print(comparison_table(result))
    accuracy = dataset_table(result)
    if accuracy is not None:
        console.print(accuracy)
    for note in note_lines(result):
        console.print(f"[yellow]note:[/] {note}", soft_wrap=True)
    if report is not None:
        json_path, md_path = write_reports(result, report)
        console.print(f"wrote {json_path} and {md_path}")
    failures = result.failures()
    if failures:
        more = f" (+{len(failures) - 1} more in the table)" if len(failures) > 1 else ""
        raise CheckFailed(f"{model_file}: verification failed: {failures[0]}{more}")
    console.print(f"[bold green]PASS[/] {model_file} matches PyTorch on {', '.join(r.label for r in result.providers)} ({result.seconds:.1f} s)")
