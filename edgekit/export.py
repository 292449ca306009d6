"""torch -> ONNX: export, check the opset, simplify (onnxsim), check the invariants, compare with
PyTorch on real images, embed the provenance, and only then write the file (atomically). Its knobs are
ExportOptions (below)."""

from __future__ import annotations

import contextlib
import io
import logging
import time
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, NamedTuple

import numpy as np

from edgekit.onnxfile.artifact import (
    StagedOutput,
    artifact_bytes,
    check_onnx,
    default_output,
    load_onnx,
    opset_of,
    resolve_output,
    stage_output,
    write_metadata,
)
from edgekit.data.images import DEFAULT_CALIBRATION_DIR, load_image_folder
from edgekit.data.tensors import seeded_random_inputs
from edgekit.judge.compare import (
    EXPORT_TOLERANCE,
    SIMPLIFY_TOLERANCE,
    NoiseFloor,
    OutputMetrics,
    compare_outputs,
    only_elementwise_failure,
)
from edgekit.core.errors import BadInput, CheckFailed, EdgekitError, GateFailed, InvariantBroken, ShapeMismatch
from edgekit.core.knobs import knob, with_knobs
from edgekit.core.limits import MAX_BATCH, MAX_INPUT_SIZE, MAX_SEED
from edgekit.models.reference import build_model, resolve_model
from edgekit.models.registry import DEFAULT_SEED
from edgekit.models.user import user_export_facts
from edgekit.data.preprocessing import Preprocessing
from edgekit.core.provenance import library_versions
from edgekit.runtimes.runners import run_onnx, run_torch
from edgekit.onnxfile.structure import Structure, onnx_concat_count, onnx_grouped_conv_count, op_counts, torch_structure

EXPORTERS = ("torchscript", "dynamo")
DEFAULT_EXPORTER = "torchscript"  # 1.5 s and honours the opset; dynamo takes ~16 s and may emit a newer one
DEFAULT_OPSET = 17
MIN_OPSET = 7
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
RANDOM_CHECK_INPUTS = 4


@dataclass(frozen=True)
class ExportOptions:
    """The knobs of `export`, with the defaults, help and ranges `edgekit export` shows (cli/export_cmd.py; knobs
    without help take it from the option several commands share, cli/options.py). `preprocessing`: the model's
    own (the CLI's --preprocessing FILE and --resize/--crop/--mean/...); default torchvision's ImageNet recipe at
    the input size, or the transforms of the torchvision weights with `pretrained`."""

    opset: int = knob(DEFAULT_OPSET, "ONNX opset of the file; checked, never silently changed")
    input_size: int | None = knob(None, "height = width (default: the model's, 224)")
    batch: int = knob(1, low=1, high=MAX_BATCH)
    dynamic_batch: bool = knob(False, "make the batch axis dynamic")
    num_classes: int | None = knob(None, "default: the model's, or the weights file's", low=1, high=100_000)
    weights: Path | None = knob(None)
    pretrained: bool = knob(False)
    seed: int = knob(DEFAULT_SEED, "seed of the random weights", low=0, high=MAX_SEED)
    exporter: str = knob(DEFAULT_EXPORTER)
    simplify_graph: bool = knob(True, "skip onnxsim")  # the help of --no-simplify, which turns it off
    output: Path | None = knob(None)
    images: Path | None = knob(None)
    preprocessing: Preprocessing | None = knob(None)


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

    def to_dict(self) -> dict:
        return {
            "path": str(self.path), "model": self.model, "file_bytes": self.file_bytes, "simplified": self.simplified,
            "simplify_note": self.simplify_note, "grouped_convs": self.grouped_convs, "concats": self.concats,
            "torch_structure": self.torch_structure, "ops_exported": self.ops_exported, "ops_final": self.ops_final,
            "vs_torch": self.vs_torch.to_dict(), "check_inputs": self.check_inputs, "stage_seconds": self.stage_seconds,
            "notes": self.notes, "metadata": self.metadata,
        }


def _torchscript_export(model, example, opset: int, dynamic_batch: bool) -> bytes:
    import torch

    buffer = io.BytesIO()
    dynamic_axes = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}} if dynamic_batch else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation notice; the opset is checked below
        torch.onnx.export(model, (example,), buffer, dynamo=False, opset_version=opset, input_names=[INPUT_NAME],
                          output_names=[OUTPUT_NAME], dynamic_axes=dynamic_axes, do_constant_folding=True)
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


def check_inputs_for(preprocessing: Preprocessing, images: Path | None, seed: int) -> tuple[np.ndarray, str]:
    """Real photos through the model's preprocessing plus seeded random inputs."""
    folder = Path(images) if images is not None else DEFAULT_CALIBRATION_DIR
    photos = load_image_folder(folder, preprocessing)
    chw = photos.tensors.shape[1:]
    random = seeded_random_inputs(RANDOM_CHECK_INPUTS, chw, seed)
    description = f"{len(photos)} images from {folder} + {RANDOM_CHECK_INPUTS} seeded random"
    return np.concatenate([photos.tensors, random]), description


def export(
    model_name: str,
    options: ExportOptions | None = None,
    *,
    on_stage: Callable[[str], None] | None = None,
    **knobs,
) -> ExportResult:
    """Export a registered model, or a user's own (`file.py:factory`, `pkg.module:factory`, `timm:NAME`:
    models/user.py), to a checked, simplified ONNX file; nothing is written unless every check passes.

    OPTIONS (ExportOptions) with any keyword KNOBS replaced: `export(name, opset=18)` is
    `export(name, ExportOptions(opset=18))`."""
    import onnx

    o = with_knobs(ExportOptions, options, knobs)
    opset, input_size, batch, preprocessing = o.opset, o.input_size, o.batch, o.preprocessing
    spec = resolve_model(model_name)
    size = input_size or spec.default_input_size
    if not 32 <= size <= MAX_INPUT_SIZE:
        raise BadInput(
            f"--input-size {size} is out of range: these networks downsample 32x", hint=f"use 32 to {MAX_INPUT_SIZE}"
        )
    if not 1 <= batch <= MAX_BATCH:
        raise BadInput(f"--batch must be 1 to {MAX_BATCH}, got {batch}")
    newest = onnx.defs.onnx_opset_version()
    if not MIN_OPSET <= opset <= newest:
        raise BadInput(
            f"--opset {opset} is not an ONNX opset edgekit can target",
            hint=f"use {MIN_OPSET} to {newest} (onnx {onnx.__version__}); the default is {DEFAULT_OPSET}",
        )
    if preprocessing is not None and preprocessing.crop != size:
        raise BadInput(
            f"the preprocessing crops to {preprocessing.crop} but --input-size is {size}",
            hint="the crop is the model's input size: make them equal",
        )
    final = resolve_output(o.output, default_output(getattr(spec, "stem", spec.name)))
    staged = stage_output(final)  # an unwritable destination fails here, before any work
    try:
        return _export_staged(spec, staged, o, size, preprocessing, on_stage or (lambda _s: None))
    except BaseException:
        staged.discard()
        raise


class _Built(NamedTuple):
    """What the build step hands on: the PyTorch model and its outputs on the check inputs."""

    model: Any
    source: Any  # where the weights came from (models.reference.build_model)
    user: dict  # a user's own model's facts (models/user.py); empty for a registered one
    preprocessing: Preprocessing
    example: Any  # the exporter's example input (a torch tensor of the batch)
    structure: Structure
    inputs: np.ndarray  # the check inputs: photos + seeded random
    check_description: str
    reference: np.ndarray  # PyTorch's outputs on them


def _export_staged(spec, staged: StagedOutput, o: ExportOptions, size: int, preprocessing: Preprocessing | None,
                   on_stage: Callable[[str], None]) -> ExportResult:
    """The steps of one export, in order: build, export, simplify, the structure checks, the metadata, save, check
    the saved bytes. Each step raises (and nothing is written) or hands the next what it needs."""
    times: dict[str, float] = {}
    notes: list[str] = []

    @contextlib.contextmanager
    def stage(name):  # the stage line, and the stage's seconds when it ends
        on_stage(name)
        start = time.perf_counter()
        yield
        times[name] = time.perf_counter() - start

    with stage("build"):
        built = _build(spec, o, size, preprocessing, notes)
    with stage("export"):
        exported = export_to_onnx(built.model, built.example, o.exporter, o.opset, o.dynamic_batch)
    _check_opset(exported, o.exporter, o.opset)
    ops_exported = dict(op_counts(exported))
    final_model, simplified, simplify_note = _simplified(exported, built.inputs, o, stage)
    if simplify_note:
        notes.append(simplify_note)
    grouped, concats = _check_structure(final_model, built.structure)
    metadata = _fp32_metadata(spec, built, o, size, simplified)
    write_metadata(final_model, metadata)
    with stage("save"):
        staged.save(final_model)
    with stage("check"):
        vs_torch = _check_written(staged.path, built, o, notes)
    path = staged.commit()
    return ExportResult(
        path=path, model=spec.name, metadata=metadata, stage_seconds=times, ops_exported=ops_exported,
        ops_final=dict(op_counts(final_model)), torch_structure=built.structure, grouped_convs=grouped, concats=concats,
        file_bytes=artifact_bytes(path), simplified=simplified, simplify_note=simplify_note, vs_torch=vs_torch,
        check_inputs=built.check_description, notes=notes,
    )


def _build(spec, o: ExportOptions, size: int, preprocessing: Preprocessing | None, notes: list[str]) -> _Built:
    """The PyTorch model (with its weights), its preprocessing, its structure, and its outputs on the check inputs."""
    import torch

    model, source = build_model(spec, o.num_classes, o.weights, o.pretrained, o.seed, size)
    user = user_export_facts(spec, model, source, notes)
    if preprocessing is None:
        preprocessing = _default_preprocessing(source, size, notes)
    _check_input_channels(model, preprocessing)
    example = torch.zeros(o.batch, *preprocessing.chw)
    structure = torch_structure(model, example)
    inputs, check_description = check_inputs_for(preprocessing, o.images, o.seed)
    reference = run_torch(model, inputs)
    return _Built(model, source, user, preprocessing, example, structure, inputs, check_description, reference)


def _check_opset(exported, exporter: str, opset: int) -> None:
    """The exporter must produce the opset asked for: never silently another."""
    got = opset_of(exported)
    if got != opset:
        raise InvariantBroken(
            f"the {exporter} exporter produced opset {got}, not the opset {opset} asked for; nothing was written",
            hint="use --exporter torchscript, or ask for --opset " + str(got),
        )


def _simplified(exported, inputs: np.ndarray, o: ExportOptions, stage) -> tuple[object, bool, str | None]:
    """onnxsim's graph where it runs and leaves the outputs as they were (SIMPLIFY_TOLERANCE), else the exported one
    and why: (the graph, simplified, the note or None)."""
    if not o.simplify_graph:
        return exported, False, None
    with stage("simplify"):
        try:
            candidate = simplify(exported)
        except Exception as exc:
            return exported, False, f"onnxsim failed ({' '.join(str(exc).split())[:160]}); kept the unsimplified graph"
    with stage("compare simplified"):
        before = run_onnx(exported, inputs, None if o.dynamic_batch else o.batch)
        after = run_onnx(candidate, inputs, None if o.dynamic_batch else o.batch)
        drift = compare_outputs(before, after, OUTPUT_NAME, SIMPLIFY_TOLERANCE)
    if drift.passed:
        return candidate, True, None
    return exported, False, f"onnxsim changed the outputs ({'; '.join(drift.failures)}); kept the unsimplified graph"


def _check_structure(final_model, structure: Structure) -> tuple[int, int]:
    """The graph keeps the PyTorch model's grouped convolutions and concatenations: (grouped convs, concats)."""
    grouped = onnx_grouped_conv_count(final_model)
    concats = onnx_concat_count(final_model)
    if grouped != structure.grouped_convs:
        raise InvariantBroken(
            f"the ONNX graph has {grouped} grouped Conv nodes but the PyTorch model has "
            f"{structure.grouped_convs} grouped Conv2d; grouped convolutions were not preserved"
        )
    if concats < structure.concats:
        raise InvariantBroken(
            f"the ONNX graph has {concats} Concat nodes but the PyTorch model concatenates "
            f"{structure.concats} times; DenseNet's concatenations were not preserved"
        )
    return grouped, concats


def _fp32_metadata(spec, built: _Built, o: ExportOptions, size: int, simplified: bool) -> dict:
    """The provenance embedded in the file: what it is, where its weights came from, how it was made."""
    user = built.user
    return {
        "schema": 1, "model": spec.name, "family": user.get("family", spec.family), "source": spec.source,
        "num_classes": int(built.reference.shape[1]), "input_size": size,
        "input_shape": ["batch" if o.dynamic_batch else o.batch, 3, size, size], "dynamic_batch": o.dynamic_batch,
        "input_name": INPUT_NAME, "output_name": OUTPUT_NAME, "weights": built.source.to_dict(),
        "preprocessing": built.preprocessing.to_dict(), "opset": o.opset, "exporter": o.exporter,
        "simplified": simplified, "precision": "fp32", "versions": {**library_versions(), **user.get("versions", {})},
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **({"entry": user["entry"]} if user else {}),
    }


def _check_written(path: Path, built: _Built, o: ExportOptions, notes: list[str]) -> OutputMetrics:
    """Every check on the staged file itself, the bytes that will ship: the ONNX checker, the opset, ONNX Runtime
    against PyTorch (a difference no larger than PyTorch fp32's own from float64 is waived, with a note), the dynamic
    batch."""
    check_onnx(path, full_check=True)
    written = load_onnx(path, check=False)
    if opset_of(written) != o.opset:
        raise InvariantBroken(f"the written file declares opset {opset_of(written)}, not {o.opset}")
    candidate_out = run_onnx(path, built.inputs, None if o.dynamic_batch else o.batch)
    vs_torch = compare_outputs(built.reference, candidate_out, OUTPUT_NAME, EXPORT_TOLERANCE)
    noise = None
    if not vs_torch.passed and only_elementwise_failure(vs_torch):
        noise = NoiseFloor.measure(_float64_outputs(built.model, built.inputs), built.reference, candidate_out)
        if noise.explains_difference:
            notes.append(noise.describe())
            vs_torch.waived = vs_torch.failures + [noise.describe()]
            vs_torch.failures = []
    if not vs_torch.passed:
        raise GateFailed(
            f"ONNX Runtime (CPU) output {OUTPUT_NAME!r} does not match PyTorch on {built.check_description}: "
            + "; ".join(vs_torch.failures)
            + (f" ({noise.describe()})" if noise else "")
            + "; nothing was written"
        )
    if o.dynamic_batch:
        _check_dynamic_batch(path, built.inputs)
    return vs_torch


def _default_preprocessing(source, size: int, notes: list[str]) -> Preprocessing:
    """torchvision's transforms for its pretrained weights where they fit the input size, else its
    ImageNet evaluation recipe scaled to the input size."""
    from edgekit.data.preprocessing import preprocessing_for_torchvision_weights

    if source.kind == "pretrained" and source.name:
        own = preprocessing_for_torchvision_weights(source.name)
        if own is not None and own.crop == size:
            return own
        if own is not None:
            notes.append(
                f"{source.name} was trained with a {own.crop} px crop; at --input-size {size} the ImageNet recipe "
                "scaled to that size is recorded instead"
            )
    return Preprocessing.for_input_size(size)


def _check_input_channels(model, preprocessing: Preprocessing) -> None:
    """The preprocessing's channel count must be what the model's first convolution takes."""
    from torch import nn

    first = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    if first is not None and first.in_channels != preprocessing.input_channels:
        raise BadInput(
            f"the preprocessing makes {preprocessing.input_channels}-channel inputs but the model's first "
            f"convolution takes {first.in_channels}",
            hint="use --channels gray with --input-channels 3 for a gray model with an RGB stem",
        )


def _float64_outputs(model, inputs: np.ndarray) -> np.ndarray:
    """The exact answer: the same PyTorch model run in float64."""
    import copy

    import torch

    return run_torch(copy.deepcopy(model).double(), inputs, dtype=torch.float64)


def _check_dynamic_batch(path: Path, inputs: np.ndarray) -> None:
    """A dynamic batch axis must really accept batch 1 and batch 3."""
    from edgekit.runtimes.ort import create_session

    session = create_session(path, "cpu")
    for n in (1, 3):
        x = np.resize(inputs, (n, *inputs.shape[1:])).astype(np.float32)
        out = session.run({session.input_name: x})[0]
        if out.shape[0] != n:
            raise ShapeMismatch(f"--dynamic-batch asked, but batch {n} gave an output of batch {out.shape[0]}")
