"""The comparator: one row builder over a list of runners against one reference's outputs, as Polygraphy's
Comparator.run does. A runner (ONNX Runtime on a provider and kernels, OpenVINO, PyTorch on CUDA for scale) runs the
file on every input set at every batch size it is exercised at; each row is one runner x input set x batch, gated
with the file's tolerance (int8 random inputs on NaN/Inf only) and, for fp32 against PyTorch, the noise floor."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from edgekit.judge.compare import DEFAULT_TOLERANCES, NAN_ONLY, Tolerance, apply_noise_floor, compare_outputs, mismatched_output
from edgekit.runtimes.runners import REFERENCE_BATCH, batch_sizes, run_session
from edgekit.verify.results import Comparison, InputSet, ProviderRun


class ExactReference:
    """Float64 outputs of the reference (PyTorch only), computed at most once per input set, for the fp32
    noise-floor check."""

    def __init__(self, reference):
        self.reference = reference
        self.cache: dict[str, np.ndarray] = {}

    def get(self, name: str, inputs: np.ndarray) -> np.ndarray:
        if name not in self.cache:
            self.cache[name] = self.reference.run_exact(inputs)
        return self.cache[name]


def row_tolerance(precision: str, input_set: str, tolerance: Tolerance) -> Tolerance:
    """The gates of one row. int8 scales are calibrated on images; standard-normal noise lies outside the calibrated
    ranges and saturates (random-weight resnet18 at 224: 4.7 dB, 0 % top-1 agreement, against 27 dB and 100 % on the
    photos), so random inputs to an int8 file are gated on NaN/Inf only, on every runtime."""
    return NAN_ONLY if precision == "int8" and input_set == "random" else tolerance


@dataclass
class Runner:
    """One row source for the comparator: a runtime that runs the file (or, for scale, the reference itself) on a
    batch, what it is called in the report, the batch sizes it is exercised at, and how its rows are gated."""

    runtime: str  # onnxruntime | openvino | pytorch
    requested: str
    ran_on: str
    batches: list[int] | None  # None: one row per input set at its natural batch
    run: Callable[[np.ndarray, int | None], np.ndarray]  # the first output on (inputs, batch)
    stage: str
    kernels: str = ""
    gated: bool = True
    device: str | None = None
    notes: list[str] = field(default_factory=list)
    tolerance: Tolerance | None = None  # a fixed gate (PyTorch CUDA vs CPU: fp32 noise), else the file's


def ort_runner(session, kernels: str = "", gated: bool = True) -> Runner:
    return Runner(
        "onnxruntime", session.requested, session.ran_on, batch_sizes(session),
        lambda x, batch: run_session(session, x, batch)[0],
        f"ONNX Runtime on {session.requested}{' ' + kernels if kernels else ''}", kernels=kernels, gated=gated,
        device=session.device,
    )


def openvino_runner(path: Path, batches: list[int]) -> Runner:
    """OpenVINO on the CPU, compiled once per batch size; the rows say what OpenVINO executed."""
    from edgekit.runtimes.factory import open_runner
    from edgekit.runtimes.runners import run_batched

    compiled: dict = {}
    runner = Runner("openvino", "cpu", "cpu", batches, lambda x, batch: None, "OpenVINO")

    def run(x: np.ndarray, batch: int | None) -> np.ndarray:
        if batch not in compiled:
            compiled[batch] = open_runner(path, "openvino", batch=batch)
            runner.notes[:] = [compiled[batch].describe()]
        return run_batched(compiled[batch].run, x, batch)[0]

    runner.run = run
    return runner


def compare_rows(runner: Runner, input_sets: list[InputSet], expected: dict[str, np.ndarray], output_name: str,
          precision: str, tolerance: Tolerance, exact: ExactReference | None, on_stage: Callable[[str], None],
          ) -> list[Comparison]:
    """The one row builder: one Comparison per input set x batch size of one runner against the reference's outputs
    (int8 random inputs gated on NaN/Inf only, row_tolerance; the fp32 noise floor where the reference has one)."""
    rows = []
    for s in input_sets:
        for batch in runner.batches or [None]:
            on_stage(f"{runner.stage}: {s.name}" + (f", batch {batch}" if batch else ""))
            got = runner.run(s.tensors, batch)
            ref = expected[s.name]
            row_tol = runner.tolerance or row_tolerance(precision, s.name, tolerance)
            notes = list(runner.notes)
            if got.shape != ref.shape:
                metrics = mismatched_output(output_name, ref.shape, got.shape)
            else:
                metrics = compare_outputs(ref, got, output_name, row_tol)
                if exact is not None and not metrics.passed:
                    on_stage("float64 PyTorch run (fp32 noise floor)")
                    floor = apply_noise_floor(metrics, exact.get(s.name, s.tensors), ref, got)
                    if floor is not None:
                        notes.append(floor.describe())
            rows.append(Comparison(
                runner.runtime, runner.requested, runner.ran_on, s.name,
                batch if batch is not None else min(REFERENCE_BATCH, len(s.tensors)), len(s.tensors), [metrics],
                row_tol, gated=runner.gated, notes=notes, kernels=runner.kernels, device=runner.device,
            ))
    return rows


def placement(session, input_sets: list[InputSet], on_stage: Callable[[str], None]) -> ProviderRun:
    """One profiled run tells which provider ran each node; node_placement() then ends profiling."""
    on_stage(f"ONNX Runtime on {session.requested}: node placement")
    first = batch_sizes(session)[0]
    run_session(session, input_sets[0].tensors[:first], first)
    return ProviderRun(
        requested=session.requested, ran_on=session.ran_on, fell_back=session.fell_back, reason=session.reason,
        ort_providers=list(session.providers), placement=session.node_placement(),
    )


def torch_cuda_rows(
    torch_model, input_sets: list[InputSet], expected: dict[str, np.ndarray], output_name: str,
    on_stage: Callable[[str], None],
) -> list[Comparison]:
    """PyTorch's own GPU result against its CPU one, for scale (not a gate): fp32 noise on this GPU."""
    from edgekit.runtimes.torch_eager import TorchRunner

    with TorchRunner.on(torch_model, "cuda") as torch_runner:
        runner = Runner("pytorch", "cuda", "cuda", None, lambda x, _batch: torch_runner.run(x)[0], "PyTorch on CUDA",
                         gated=False, notes=["PyTorch CUDA vs PyTorch CPU, for scale; not a gate"],
                         tolerance=DEFAULT_TOLERANCES["fp32"])
        return compare_rows(runner, input_sets, expected, output_name, "fp32", DEFAULT_TOLERANCES["fp32"], None, on_stage)


def cross_runtime_rows(path: Path, input_sets: list[InputSet], expected: dict[str, np.ndarray], output_name: str,
                        precision: str, tolerance: Tolerance, file_config: dict, runtime_names: list[str],
                        batches: list[int], on_stage: Callable[[str], None]) -> list[Comparison]:
    """An imported file against its original, across runtimes as Polygraphy `run --onnxrt --openvino` does: ORT
    with graph optimisations disabled (gated: the normalised graph must compute the same without ORT's fusions), and
    OpenVINO where installed (for comparison, not a gate, unless --runtimes openvino asked for it: then its own rows
    gate it)."""
    import importlib.util

    from edgekit.runtimes.ort import create_session

    on_stage("ONNX Runtime without graph optimisations")
    plain = create_session(path, "cpu", optimization="none", session_config=file_config or None)
    rows = compare_rows(ort_runner(plain, kernels="no graph optimisations"), input_sets, expected, output_name, precision,
                 tolerance, None, on_stage)
    if "openvino" not in runtime_names and importlib.util.find_spec("openvino") is not None:
        openvino = openvino_runner(path, batches)
        openvino.gated = False
        extra = compare_rows(openvino, input_sets, expected, output_name, precision, tolerance, None, on_stage)
        for row in extra:
            row.notes.append("OpenVINO against the original file, for comparison (as Polygraphy --openvino); not a "
                             "gate: pass --runtimes ort,openvino to gate it")
        rows += extra
    return rows
