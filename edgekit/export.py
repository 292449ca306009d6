"""torch -> ONNX: export, check the opset, simplify (onnxsim), check the invariants, compare with
PyTorch on real images, embed the provenance, and only then write the file (atomically)."""

from __future__ import annotations

import contextlib
import io
import logging
import time
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np

from edgekit.artifact import (
    StagedOutput,
    artifact_bytes,
    check_onnx,
    load_onnx,
    opset_of,
    resolve_output,
    stage_output,
    write_metadata,
)
from edgekit.calibration import DEFAULT_CALIBRATION_DIR, Preprocessing, load_image_folder, seeded_random_inputs
from edgekit.compare import OutputMetrics, Tolerance, compare_outputs
from edgekit.errors import BadInput, CheckFailed, EdgekitError
from edgekit.models.registry import DEFAULT_SEED, ModelSpec, classifier_weight_key, create_model, get_spec
from edgekit.structure import Structure, onnx_concat_count, onnx_grouped_conv_count, op_counts, torch_structure

EXPORTERS = ("torchscript", "dynamo")
DEFAULT_EXPORTER = "torchscript"  # 1.5 s and honours the opset; dynamo takes ~16 s and may emit a newer one
DEFAULT_OPSET = 17
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
# The export gate of the export issue: max abs diff 1e-4 on logits, identical top-1.
EXPORT_TOLERANCE = Tolerance(atol=1e-4, rtol=0.0, same_top1=True)
# Simplification may reorder float arithmetic (BatchNorm folding); anything past this is not noise.
SIMPLIFY_TOLERANCE = Tolerance(atol=1e-5, rtol=1e-4, same_top1=True)
RANDOM_CHECK_INPUTS = 4
RANDOM_INIT = "seeded init; BatchNorm statistics and classifier scale settled on the bundled calibration photos"


@dataclass
class ExportResult:
    """What `export` did and measured."""

    path: Path
    model: str
    metadata: dict
    stage_seconds: dict[str, float]
    ops_exported: dict[str, int]
    ops_final: dict[str, int]
    torch_structure: Structure
    grouped_convs: int
    concats: int
    file_bytes: int
    simplified: bool
    simplify_note: str | None
    vs_torch: OutputMetrics
    check_inputs: str
    notes: list[str] = field(default_factory=list)


def default_output(model_name: str, folder: Path = Path("exports")) -> Path:
    return folder / f"{model_name}.onnx"


def build_model(
    spec: ModelSpec,
    num_classes: int | None,
    weights: Path | None,
    pretrained: bool,
    seed: int,
    input_size: int | None = None,
):
    """The PyTorch model in eval mode and where its weights came from."""
    from edgekit.models.weights import WeightsSource, apply_state_dict, load_pretrained_state, load_state_dict_file

    if weights is not None and pretrained:
        raise BadInput("--weights and --pretrained exclude each other", hint="choose one")
    if weights is None and not pretrained:
        return create_model(spec.name, num_classes, seed, input_size), WeightsSource(
            kind="random", seed=seed, init=RANDOM_INIT
        )
    if pretrained:
        state, source = load_pretrained_state(spec.name, spec.torchvision_weights)
        where = source.path
    else:
        from edgekit.artifact import sha256_file

        state = load_state_dict_file(Path(weights))
        source = WeightsSource(kind="file", path=str(Path(weights).resolve()), sha256=sha256_file(Path(weights)))
        where = str(weights)
    inferred = infer_num_classes(spec, state)
    if num_classes is not None and inferred is not None and num_classes != inferred:
        raise BadInput(
            f"{where} has {inferred} classes but --num-classes {num_classes} was given",
            hint="drop --num-classes to use the file's",
        )
    model = create_model(spec.name, num_classes or inferred, seed, input_size, settle=False)
    apply_state_dict(model, state, where, spec.name)
    return model.eval(), source


def infer_num_classes(spec: ModelSpec, state: dict) -> int | None:
    """Rows of the classifier weight in `state` (the key is found on a meta-device copy of the model)."""
    import torch

    with torch.device("meta"):
        key = classifier_weight_key(spec.builder(spec.default_num_classes))
    tensor = state.get(key)
    return int(tensor.shape[0]) if tensor is not None and tensor.ndim == 2 else None


def _torchscript_export(model, example, opset: int, dynamic_batch: bool) -> bytes:
    import torch

    buffer = io.BytesIO()
    dynamic_axes = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}} if dynamic_batch else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation notice; the opset is checked below
        torch.onnx.export(
            model,
            (example,),
            buffer,
            dynamo=False,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes=dynamic_axes,
            do_constant_folding=True,
        )
    return buffer.getvalue()


def _dynamo_export(model, example, opset: int, dynamic_batch: bool) -> bytes:
    import torch

    dynamic_shapes = ({0: torch.export.Dim("batch", min=1, max=1024)},) if dynamic_batch else None
    # The dynamo exporter prints tracebacks and progress as warnings/log lines even when it
    # "succeeds"; what matters is checked on the result (opset, checker, comparison).
    sink = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        warnings.simplefilter("ignore")
        logging.disable(logging.WARNING)
        try:
            program = torch.onnx.export(
                model,
                (example,),
                dynamo=True,
                opset_version=opset,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_shapes=dynamic_shapes,
                optimize=True,
                verify=False,
                report=False,
            )
        finally:
            logging.disable(logging.NOTSET)
    return program.model_proto.SerializeToString()


def export_to_onnx(model, example, exporter: str, opset: int, dynamic_batch: bool):
    """Run the chosen exporter; returns the ModelProto. Exporter failures are one-line errors."""
    import onnx

    if exporter not in EXPORTERS:
        raise BadInput(f"unknown exporter {exporter!r}", hint=f"use one of {', '.join(EXPORTERS)}")
    run = _torchscript_export if exporter == "torchscript" else _dynamo_export
    try:
        data = run(model, example, opset, dynamic_batch)
    except EdgekitError:
        raise
    except Exception as exc:
        text = " ".join(str(exc).split())[:300] or type(exc).__name__
        if "opset" in text.lower() or "version" in text.lower():
            raise BadInput(
                f"the {exporter} exporter cannot produce opset {opset}: {text}",
                hint="choose another --opset or --exporter",
            ) from None
        raise CheckFailed(f"the {exporter} exporter failed: {text}") from exc
    return onnx.load_from_string(data)


def simplify(model_proto):
    """onnxsim with its own check off: edgekit compares in ONNX Runtime itself, on real images."""
    import onnxsim

    simplified, _ = onnxsim.simplify(model_proto, check_n=0)
    return simplified


def run_onnx(model_or_path, inputs: np.ndarray, batch: int | None) -> np.ndarray:
    """Logits of an ONNX model on the CPU provider, fed in batches of `batch` (None: all at once)."""
    from edgekit.runtime import create_session

    source = model_or_path if isinstance(model_or_path, Path) else model_or_path.SerializeToString()
    session = create_session(source, "cpu")
    return _run_batched(lambda x: session.run({session.input_name: x})[0], inputs, batch)


def run_torch(model, inputs: np.ndarray, batch: int | None) -> np.ndarray:
    import torch

    with torch.no_grad():
        return _run_batched(lambda x: model(torch.from_numpy(x)).numpy(), inputs, batch)


def _run_batched(fn: Callable[[np.ndarray], np.ndarray], inputs: np.ndarray, batch: int | None) -> np.ndarray:
    if batch is None:
        return fn(inputs)
    outputs = []
    for start in range(0, len(inputs), batch):
        chunk = inputs[start : start + batch]
        real = len(chunk)
        if real < batch:  # a static batch: pad with copies, keep only the real rows
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch - real, axis=0)])
        outputs.append(fn(chunk)[:real])
    return np.concatenate(outputs)


def check_inputs_for(preprocessing: Preprocessing, images: Path | None, seed: int) -> tuple[np.ndarray, str]:
    """Real photos through the model's preprocessing plus seeded random inputs."""
    folder = Path(images) if images is not None else DEFAULT_CALIBRATION_DIR
    photos = load_image_folder(folder, preprocessing)
    chw = photos.tensors.shape[1:]
    random = seeded_random_inputs(RANDOM_CHECK_INPUTS, chw, seed)
    description = f"{len(photos)} images from {folder} + {RANDOM_CHECK_INPUTS} seeded random"
    return np.concatenate([photos.tensors, random]), description


def library_versions() -> dict[str, str]:
    import onnx
    import onnxruntime
    import onnxsim
    import torch
    import torchvision

    import edgekit

    return {
        "edgekit": edgekit.__version__,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "onnxsim": getattr(onnxsim, "__version__", "unknown"),
    }


def export(
    model_name: str,
    *,
    opset: int = DEFAULT_OPSET,
    input_size: int | None = None,
    batch: int = 1,
    dynamic_batch: bool = False,
    num_classes: int | None = None,
    weights: Path | None = None,
    pretrained: bool = False,
    seed: int = DEFAULT_SEED,
    exporter: str = DEFAULT_EXPORTER,
    simplify_graph: bool = True,
    output: Path | None = None,
    images: Path | None = None,
    on_stage: Callable[[str], None] | None = None,
) -> ExportResult:
    """Export a registered model to a checked, simplified ONNX file; nothing is written unless every check passes."""
    spec = get_spec(model_name)
    size = input_size or spec.default_input_size
    if size < 32:
        raise BadInput(f"--input-size {size} is too small: these networks downsample 32x", hint="use 32 or more")
    if batch < 1:
        raise BadInput(f"--batch must be at least 1, got {batch}")
    if not 7 <= opset <= 30:
        raise BadInput(f"--opset {opset} is not an ONNX opset edgekit can target", hint="use 13 to 21")
    final = resolve_output(output, default_output(spec.name))
    staged = stage_output(final)  # an unwritable destination fails here, before any work
    try:
        return _export_staged(
            spec, staged, opset, size, batch, dynamic_batch, num_classes, weights, pretrained, seed,
            exporter, simplify_graph, images, on_stage or (lambda _s: None),
        )
    except BaseException:
        staged.discard()
        raise


def _export_staged(
    spec, staged: StagedOutput, opset, size, batch, dynamic_batch, num_classes, weights, pretrained, seed,
    exporter, simplify_graph, images, on_stage,
) -> ExportResult:
    import torch

    times: dict[str, float] = {}
    notes: list[str] = []

    def stage(name):
        on_stage(name)
        times[name] = time.perf_counter()

    def done(name):
        times[name] = time.perf_counter() - times[name]

    stage("build")
    model, source = build_model(spec, num_classes, weights, pretrained, seed, size)
    preprocessing = Preprocessing.for_input_size(size)
    example = torch.zeros(batch, 3, size, size)
    structure = torch_structure(model, example)
    inputs, check_description = check_inputs_for(preprocessing, images, seed)
    reference = run_torch(model, inputs, None if dynamic_batch else batch)
    done("build")

    stage("export")
    exported = export_to_onnx(model, example, exporter, opset, dynamic_batch)
    done("export")
    got = opset_of(exported)
    if got != opset:
        raise CheckFailed(
            f"the {exporter} exporter produced opset {got}, not the opset {opset} asked for; nothing was written",
            hint="use --exporter torchscript, or ask for --opset " + str(got),
        )
    ops_exported = dict(op_counts(exported))

    final_model = exported
    simplified = False
    simplify_note = None
    if simplify_graph:
        stage("simplify")
        try:
            candidate = simplify(exported)
        except Exception as exc:
            candidate = None
            simplify_note = f"onnxsim failed ({' '.join(str(exc).split())[:160]}); kept the unsimplified graph"
        done("simplify")
        if candidate is not None:
            stage("compare simplified")
            before = run_onnx(exported, inputs, None if dynamic_batch else batch)
            after = run_onnx(candidate, inputs, None if dynamic_batch else batch)
            drift = compare_outputs(before, after, OUTPUT_NAME, SIMPLIFY_TOLERANCE)
            done("compare simplified")
            if drift.passed:
                final_model, simplified = candidate, True
            else:
                simplify_note = (
                    f"onnxsim changed the outputs ({'; '.join(drift.failures)}); kept the unsimplified graph"
                )
    if simplify_note:
        notes.append(simplify_note)

    grouped = onnx_grouped_conv_count(final_model)
    concats = onnx_concat_count(final_model)
    if grouped != structure.grouped_convs:
        raise CheckFailed(
            f"the ONNX graph has {grouped} grouped Conv nodes but the PyTorch model has "
            f"{structure.grouped_convs} grouped Conv2d; grouped convolutions were not preserved"
        )
    if concats < structure.concats:
        raise CheckFailed(
            f"the ONNX graph has {concats} Concat nodes but the PyTorch model concatenates "
            f"{structure.concats} times; DenseNet's concatenations were not preserved"
        )

    versions = library_versions()
    metadata = {
        "schema": 1,
        "model": spec.name,
        "family": spec.family,
        "source": spec.source,
        "num_classes": int(reference.shape[1]),
        "input_size": size,
        "input_shape": ["batch" if dynamic_batch else batch, 3, size, size],
        "dynamic_batch": dynamic_batch,
        "input_name": INPUT_NAME,
        "output_name": OUTPUT_NAME,
        "weights": source.to_dict(),
        "preprocessing": preprocessing.to_dict(),
        "opset": opset,
        "exporter": exporter,
        "simplified": simplified,
        "precision": "fp32",
        "versions": versions,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    write_metadata(final_model, metadata)

    stage("save")
    staged.save(final_model)
    done("save")

    stage("check")
    # Every check below runs on the staged file itself: the bytes that will ship.
    check_onnx(staged.path, full_check=True)
    written = load_onnx(staged.path, check=False)
    if opset_of(written) != opset:
        raise CheckFailed(f"the written file declares opset {opset_of(written)}, not {opset}")
    candidate_out = run_onnx(staged.path, inputs, None if dynamic_batch else batch)
    vs_torch = compare_outputs(reference, candidate_out, OUTPUT_NAME, EXPORT_TOLERANCE)
    noise = None
    if not vs_torch.passed and only_elementwise_failure(vs_torch):
        noise = fp32_noise_floor(model, inputs, reference, candidate_out, None if dynamic_batch else batch)
        if noise.explains_difference:
            notes.append(noise.describe())
            vs_torch.failures = []
    if not vs_torch.passed:
        raise CheckFailed(
            f"ONNX Runtime (CPU) output {OUTPUT_NAME!r} does not match PyTorch on {check_description}: "
            + "; ".join(vs_torch.failures)
            + (f" ({noise.describe()})" if noise else "")
            + "; nothing was written"
        )
    if dynamic_batch:
        _check_dynamic_batch(staged.path, inputs)
    done("check")

    path = staged.commit()
    return ExportResult(
        path=path,
        model=spec.name,
        metadata=metadata,
        stage_seconds=times,
        ops_exported=ops_exported,
        ops_final=dict(op_counts(final_model)),
        torch_structure=structure,
        grouped_convs=grouped,
        concats=concats,
        file_bytes=artifact_bytes(path),
        simplified=simplified,
        simplify_note=simplify_note,
        vs_torch=vs_torch,
        check_inputs=check_description,
        notes=notes,
    )


def only_elementwise_failure(metrics: OutputMetrics) -> bool:
    """True when the only failed gate is elementwise closeness (no NaN/Inf, no top-1 flip)."""
    return bool(metrics.allclose_violations) and not (metrics.nan or metrics.inf or metrics.top1_mismatches)


@dataclass(frozen=True)
class NoiseFloor:
    """How far PyTorch's own fp32 result and ONNX Runtime's are from a float64 PyTorch run."""

    torch_fp32_error: float
    onnx_error: float
    factor: float = 2.0

    @property
    def explains_difference(self) -> bool:
        return self.onnx_error <= max(self.factor * self.torch_fp32_error, EXPORT_TOLERANCE.atol)

    def describe(self) -> str:
        return (
            f"fp32 noise floor: PyTorch fp32 is {self.torch_fp32_error:.2g} max abs from a float64 run, "
            f"ONNX Runtime {self.onnx_error:.2g}; the ONNX file is "
            + ("as accurate as PyTorch fp32 itself" if self.explains_difference else "less accurate than that")
        )


def fp32_noise_floor(model, inputs, reference, candidate, batch) -> NoiseFloor:
    """Deep random networks amplify rounding (a random ResNet-152 turns 1e-7 into 1e-3 on logits),
    so a fixed atol cannot tell noise from error. The float64 run is the exact answer; the export
    passes when ORT is no further from it than twice PyTorch's own fp32 result."""
    import copy

    import torch

    exact_model = copy.deepcopy(model).double()
    with torch.no_grad():
        exact = _run_batched(lambda x: exact_model(torch.from_numpy(x).double()).numpy(), inputs, batch)
    return NoiseFloor(
        torch_fp32_error=float(np.abs(reference.astype(np.float64) - exact).max()),
        onnx_error=float(np.abs(candidate.astype(np.float64) - exact).max()),
    )


def _check_dynamic_batch(path: Path, inputs: np.ndarray) -> None:
    """A dynamic batch axis must really accept batch 1 and batch 3."""
    from edgekit.runtime import create_session

    session = create_session(path, "cpu")
    for n in (1, 3):
        x = np.resize(inputs, (n, *inputs.shape[1:])).astype(np.float32)
        out = session.run({session.input_name: x})[0]
        if out.shape[0] != n:
            raise CheckFailed(f"--dynamic-batch asked, but batch {n} gave an output of batch {out.shape[0]}")
