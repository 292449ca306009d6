"""`verify`: an ONNX file on each ONNX Runtime execution provider against the PyTorch model it was
made from, rebuilt from the file's own metadata. Returns a Report; never prints.

The reference is always PyTorch fp32 on CPU (for an int8 or fp16 file: the fp32 model it descends
from). Gates depend on the file's precision (compare.DEFAULT_TOLERANCES) and can be overridden.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from edgekit.artifact import check_readable_file, load_onnx, read_metadata, sha256_file
from edgekit.calibration import (
    DEFAULT_CALIBRATION_DIR,
    Preprocessing,
    decode_image,
    load_image_folder,
    load_tensor_file,
    pick_samples,
    scan_folder,
    seeded_random_inputs,
)
from edgekit.compare import DEFAULT_TOLERANCES, OutputMetrics, Tolerance, compare_outputs
from edgekit.errors import BadInput, CheckFailed

DEFAULT_RANDOM_INPUTS = 4
DYNAMIC_LARGE_BATCH = 8  # a dynamic batch axis is exercised at batch 1 and at this batch
REFERENCE_BATCH = 32  # PyTorch runs the reference in chunks of this many samples (bounded memory)
DATASET_CHUNK = 64  # --dataset images are decoded and run this many at a time
PRECISIONS = tuple(DEFAULT_TOLERANCES)
NAN_ONLY = Tolerance(atol=None, rtol=None, same_top1=False)  # a NaN or Inf fails whatever else is allowed


@dataclass
class Reference:
    """The PyTorch model the ONNX file is compared with, and where that knowledge came from."""

    model: str
    family: str
    from_metadata: bool
    weights: dict  # WeightsSource.to_dict()
    num_classes: int | None
    input_size: int
    preprocessing: Preprocessing
    devices: list[str] = field(default_factory=lambda: ["cpu"])

    def describe(self) -> str:
        from edgekit.models.weights import WeightsSource

        where = "rebuilt from the file's metadata" if self.from_metadata else "from --model/--weights"
        return (
            f"PyTorch {self.model} fp32, weights {WeightsSource.from_dict(self.weights).describe()}, "
            f"on {' and '.join(d.upper() for d in self.devices)} ({where})"
        )

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["preprocessing"] = self.preprocessing.to_dict()
        return data


@dataclass
class InputSet:
    """One named set of preprocessed inputs (N, C, H, W)."""

    name: str  # photos | tensors | random
    description: str
    tensors: np.ndarray = field(repr=False)

    def to_dict(self) -> dict:
        return {"name": self.name, "description": self.description, "samples": int(len(self.tensors))}


@dataclass
class ProviderRun:
    """Where one execution provider's session really ran, node by node."""

    requested: str
    ran_on: str
    fell_back: bool
    reason: str | None
    ort_providers: list[str]
    placement: dict[str, dict[str, int]]  # provider -> op type -> nodes that ran there (ORT profiling)

    @property
    def node_counts(self) -> dict[str, int]:
        return {p: sum(ops.values()) for p, ops in self.placement.items()}

    @property
    def elsewhere(self) -> dict[str, int]:
        """Op types (and node counts) that ran on another provider than the one that started."""
        out: dict[str, int] = {}
        for provider, ops in self.placement.items():
            if provider != self.ran_on:
                for op, n in ops.items():
                    out[op] = out.get(op, 0) + n
        return out

    @property
    def label(self) -> str:
        return f"{self.requested} -> {self.ran_on}" if self.fell_back else self.requested

    def describe(self) -> str:
        counts = ", ".join(f"{p.upper()} {n}" for p, n in sorted(self.node_counts.items())) or "not profiled"
        text = f"nodes run: {counts}"
        if self.fell_back:
            text = f"ran on {self.ran_on.upper()} instead of {self.requested.upper()} ({self.reason}); " + text
        elif self.elsewhere:
            ops = ", ".join(f"{op} x{n}" for op, n in sorted(self.elsewhere.items()))
            text += f" (not on {self.ran_on.upper()}: {ops})"
        return text

    def to_dict(self) -> dict:
        return {
            "requested": self.requested,
            "ran_on": self.ran_on,
            "fell_back": self.fell_back,
            "reason": self.reason,
            "ort_providers": self.ort_providers,
            "node_counts": self.node_counts,
            "node_placement": self.placement,
        }


@dataclass
class Comparison:
    """One row: a candidate runtime on one input set at one batch size, against the reference."""

    runtime: str  # onnxruntime | pytorch
    provider: str  # requested provider (or device, for pytorch)
    ran_on: str
    input_set: str
    batch: int
    samples: int
    outputs: list[OutputMetrics]
    tolerance: Tolerance
    gated: bool = True  # False: shown for information, not part of pass/fail
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(m.passed for m in self.outputs)

    @property
    def nan_only(self) -> bool:
        """True when NaN/Inf is the only gate this row has (int8 on random inputs)."""
        return self.tolerance == NAN_ONLY

    @property
    def label(self) -> str:
        where = self.provider if self.ran_on == self.provider else f"{self.provider} -> {self.ran_on}"
        return f"{'ORT' if self.runtime == 'onnxruntime' else 'PyTorch'} {where}"

    def failures(self) -> list[str]:
        return [f"output {m.name!r}: {f}" for m in self.outputs for f in m.failures]

    def to_dict(self) -> dict:
        return {
            "runtime": self.runtime,
            "provider": self.provider,
            "ran_on": self.ran_on,
            "input_set": self.input_set,
            "batch": self.batch,
            "samples": self.samples,
            "gated": self.gated,
            "passed": self.passed,
            "failures": self.failures(),
            "gates": self.tolerance.to_dict(),
            "notes": self.notes,
            "outputs": [m.to_dict() for m in self.outputs],
        }


@dataclass
class ProviderAccuracy:
    provider: str
    ran_on: str
    correct: int
    agree_with_torch: int
    samples: int
    reference_top1: float

    @property
    def top1(self) -> float:
        return 100.0 * self.correct / self.samples

    @property
    def drop(self) -> float:
        """Points of top-1 lost against the PyTorch reference (negative: gained)."""
        return self.reference_top1 - self.top1

    @property
    def agreement(self) -> float:
        return 100.0 * self.agree_with_torch / self.samples


@dataclass
class DatasetAccuracy:
    """Top-1 on a labelled image folder: PyTorch's and the ONNX file's on each provider."""

    folder: Path
    classes: list[str]
    samples: int
    torch_correct: int
    providers: list[ProviderAccuracy]
    max_drop: float | None
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def torch_top1(self) -> float:
        return 100.0 * self.torch_correct / self.samples

    def failures(self) -> list[str]:
        if self.max_drop is None:
            return []
        return [
            f"accuracy on {self.folder} ({p.provider}): top-1 {p.top1:.2f} % vs PyTorch {self.torch_top1:.2f} %, "
            f"a drop of {p.drop:.2f} points > --max-drop {self.max_drop:g}"
            for p in self.providers
            if p.drop > self.max_drop
        ]

    @property
    def passed(self) -> bool:
        return not self.failures()

    def to_dict(self) -> dict:
        return {
            "folder": str(self.folder),
            "classes": self.classes,
            "samples": self.samples,
            "skipped": [{"file": str(p), "reason": r} for p, r in self.skipped],
            "pytorch_top1": self.torch_top1,
            "max_drop": self.max_drop,
            "passed": self.passed,
            "failures": self.failures(),
            "notes": self.notes,
            "providers": [
                {
                    "provider": p.provider,
                    "ran_on": p.ran_on,
                    "top1": p.top1,
                    "drop_points": p.drop,
                    "top1_agreement_with_pytorch": p.agreement,
                }
                for p in self.providers
            ],
        }


@dataclass
class Report:
    """Everything `verify` measured; report.py renders it, the CLI decides the exit code from it."""

    file: Path
    sha256: str
    precision: str
    metadata: dict | None
    reference: Reference
    tolerance: Tolerance
    tolerance_source: str
    input_sets: list[InputSet]
    providers: list[ProviderRun]
    comparisons: list[Comparison]
    dataset: DatasetAccuracy | None
    versions: dict
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def failures(self) -> list[str]:
        out = [
            f"{c.label}, {c.input_set}, batch {c.batch}: {f}" for c in self.comparisons if c.gated for f in c.failures()
        ]
        if self.dataset is not None:
            out += self.dataset.failures()
        return out

    @property
    def passed(self) -> bool:
        return not self.failures()

    def to_dict(self) -> dict:
        return {
            "file": str(self.file),
            "sha256": self.sha256,
            "precision": self.precision,
            "passed": self.passed,
            "failures": self.failures(),
            "reference": self.reference.to_dict(),
            "gates": self.tolerance.to_dict(),
            "gates_source": self.tolerance_source,
            "inputs": [s.to_dict() for s in self.input_sets],
            "providers": [p.to_dict() for p in self.providers],
            "comparisons": [c.to_dict() for c in self.comparisons],
            "dataset": self.dataset.to_dict() if self.dataset else None,
            "notes": self.notes,
            "versions": self.versions,
            "metadata": self.metadata,
            "seconds": round(self.seconds, 2),
        }


# --- the reference ---------------------------------------------------------------------------


@dataclass
class _ReferencePlan:
    spec: object  # ModelSpec
    num_classes: int | None
    input_size: int
    weights_file: Path | None
    pretrained: bool
    seed: int
    preprocessing: Preprocessing
    from_metadata: bool
    weights: dict


_REQUIRED_KEYS = ("model", "num_classes", "input_size", "weights", "preprocessing")


def plan_reference(
    path: Path,
    model_proto,
    meta: dict | None,
    model: str | None,
    weights: Path | None,
    pretrained: bool,
    seed: int,
) -> _ReferencePlan:
    """Decide how to rebuild the PyTorch reference, checking weights files and their sha256 (no torch yet)."""
    from edgekit.models.registry import get_spec

    if meta is None:
        if model is None:
            raise BadInput(
                f"{path} carries no edgekit metadata, so the PyTorch model it came from is unknown",
                hint="pass --model NAME and --weights FILE (or --pretrained) it was exported from",
            )
        spec = get_spec(model)
        size, num_classes = _graph_geometry(model_proto, spec.default_input_size)
        weights_dict = _weights_for_cli(weights, pretrained, seed)
        return _ReferencePlan(
            spec, num_classes, size, weights, pretrained, seed, Preprocessing.for_input_size(size), False, weights_dict
        )

    missing = [k for k in _REQUIRED_KEYS if k not in meta]
    if missing:
        raise BadInput(
            f"the edgekit metadata of {path} lacks {', '.join(map(repr, missing))}",
            hint="re-export the file, or strip its metadata and pass --model/--weights",
        )
    spec = get_spec(str(meta["model"]))
    if model is not None and get_spec(model).name != spec.name:
        raise BadInput(
            f"{path} was exported from {spec.name} (its metadata says so), not {get_spec(model).name}",
            hint="drop --model; it is only for files without edgekit metadata",
        )
    recorded = meta["weights"] if isinstance(meta["weights"], dict) else {}
    kind = recorded.get("kind")
    weights_file: Path | None = None
    use_pretrained = False
    ref_seed = seed
    if kind == "random":
        if weights is not None or pretrained:
            raise BadInput(
                f"{path} was exported with seeded random weights (seed {recorded.get('seed')}); "
                "--weights/--pretrained do not apply",
                hint="drop them: the reference is rebuilt from the seed",
            )
        ref_seed = int(recorded.get("seed", 0))
        from edgekit.export import RANDOM_INIT

        if recorded.get("init") != RANDOM_INIT:
            # Same seed, different initialisation code: the rebuilt model would differ from the one
            # exported, and every gate would fail for a reason that is not the file's fault.
            raise BadInput(
                f"{path} has seeded random weights initialised by another edgekit version "
                f"(init {recorded.get('init')!r}, now {RANDOM_INIT!r}), so its PyTorch reference cannot be rebuilt",
                hint=f"re-export it: edgekit export {spec.name} --input-size {meta.get('input_size')}",
            )
    elif kind in ("file", "pretrained"):
        expected = recorded.get("sha256")
        if weights is not None:
            weights_file = Path(weights)
        elif kind == "file":
            weights_file = Path(recorded.get("path") or "")
            if not weights_file.is_file():
                raise BadInput(
                    f"the weights file {weights_file} that {path} was exported from is not there",
                    hint=f"pass it with --weights FILE (sha256 {str(expected)[:16]}...)",
                )
        else:
            use_pretrained = True
        if weights_file is not None:
            check_readable_file(weights_file, "weights file")
            actual = sha256_file(weights_file)
            if expected and actual != expected:
                raise BadInput(
                    f"weights {weights_file} have sha256 {actual}, but {path} was exported from weights "
                    f"with sha256 {expected}",
                    hint="pass the weights file it was exported from with --weights",
                )
    else:
        raise BadInput(f"the metadata of {path} records an unknown weights source {recorded!r}")
    try:
        size = int(meta["input_size"])
        num_classes = int(meta["num_classes"])
    except (TypeError, ValueError):
        raise BadInput(f"the metadata of {path} has a malformed input_size or num_classes") from None
    preprocessing = Preprocessing.from_dict(meta["preprocessing"])
    return _ReferencePlan(
        spec, num_classes, size, weights_file, use_pretrained, ref_seed, preprocessing, True, dict(recorded)
    )


def _weights_for_cli(weights: Path | None, pretrained: bool, seed: int) -> dict:
    if weights is not None:
        check_readable_file(Path(weights), "weights file")
        return {"kind": "file", "path": str(weights), "sha256": sha256_file(Path(weights))}
    if pretrained:
        return {"kind": "pretrained"}
    return {"kind": "random", "seed": seed}


def _graph_geometry(model_proto, default_size: int) -> tuple[int, int | None]:
    """(input size, classes) from a foreign graph's static dims, where it has them."""
    def static_dims(value_info) -> list[int | None]:
        return [d.dim_value if d.HasField("dim_value") else None for d in value_info.type.tensor_type.shape.dim]

    dims = static_dims(model_proto.graph.input[0])
    size = dims[-1] if len(dims) == 4 and dims[-1] else default_size
    out = static_dims(model_proto.graph.output[0])
    classes = out[1] if len(out) == 2 and out[1] else None
    return int(size), classes


def build_reference(plan: _ReferencePlan):
    """The PyTorch fp32 model in eval mode (export.build_model: the same code that made the file)."""
    from edgekit.export import build_model

    model, source = build_model(
        plan.spec, plan.num_classes, plan.weights_file, plan.pretrained, plan.seed, plan.input_size
    )
    if plan.pretrained and plan.weights.get("sha256") and source.sha256 != plan.weights["sha256"]:
        raise BadInput(
            f"the pretrained weights in the local cache ({source.path}) have sha256 {source.sha256}, but the file "
            f"was exported from weights with sha256 {plan.weights['sha256']}",
            hint="pass the weights file it was exported from with --weights",
        )
    if not plan.from_metadata:
        plan.weights = source.to_dict()
    return model


def detect_precision(model_proto) -> str:
    """int8 when the graph quantizes, fp16 when its float tensors are half, else fp32 (for foreign files)."""
    ops = {n.op_type for n in model_proto.graph.node}
    if ops & {"QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger"}:
        return "int8"
    from onnx import TensorProto

    if any(t.data_type == TensorProto.FLOAT16 for t in model_proto.graph.initializer):
        return "fp16"
    return "fp32"


def resolve_tolerance(
    precision: str,
    atol: float | None = None,
    rtol: float | None = None,
    min_top1_agreement: float | None = None,
    min_sqnr: float | None = None,
) -> tuple[Tolerance, str]:
    """The precision's default gates with the user's overrides, and a line saying which is which."""
    if precision not in DEFAULT_TOLERANCES:
        raise BadInput(
            f"unknown precision {precision!r} in the file's metadata", hint=f"one of {', '.join(PRECISIONS)}"
        )
    for name, value in (("--atol", atol), ("--rtol", rtol), ("--min-sqnr", min_sqnr)):
        if value is not None and not np.isfinite(value):
            raise BadInput(f"{name} {value} is not a finite number")
    for name, value in (("--atol", atol), ("--rtol", rtol)):
        if value is not None and value < 0:
            raise BadInput(f"{name} must be >= 0, got {value:g}")
    if min_top1_agreement is not None and not 0.0 <= min_top1_agreement <= 1.0:
        raise BadInput(
            f"--min-top1-agreement {min_top1_agreement:g} is not a fraction", hint="use 0..1, e.g. 0.95 for 95 %"
        )
    tol = DEFAULT_TOLERANCES[precision]
    changes: dict = {}
    if atol is not None or rtol is not None:
        changes["atol"] = atol if atol is not None else (tol.atol if tol.atol is not None else 0.0)
        changes["rtol"] = rtol if rtol is not None else (tol.rtol if tol.rtol is not None else 0.0)
    if min_top1_agreement is not None:
        changes["min_top1_agreement"] = min_top1_agreement
    if min_sqnr is not None:
        changes["min_sqnr_db"] = min_sqnr
    source = f"{precision} defaults"
    if changes:
        source += ", overridden: " + ", ".join(f"{k}={v:g}" for k, v in changes.items())
    return dataclasses.replace(tol, **changes), source


# --- running ---------------------------------------------------------------------------------


def _input_dtype(session) -> type:
    return np.float16 if session.session.get_inputs()[0].type == "tensor(float16)" else np.float32


def _batch_sizes(session) -> list[int]:
    dim = session.session.get_inputs()[0].shape[0]
    return [int(dim)] if isinstance(dim, int) and dim > 0 else [1, DYNAMIC_LARGE_BATCH]


def run_session(session, inputs: np.ndarray, batch: int) -> list[np.ndarray]:
    """All outputs of `session` on `inputs`, fed exactly `batch` samples per run (the last run padded
    with copies, so a static batch axis is honoured and a dynamic one really sees `batch`)."""
    name = session.input_name
    dtype = _input_dtype(session)
    chunks: list[list[np.ndarray]] = []
    for start in range(0, len(inputs), batch):
        chunk = inputs[start : start + batch]
        real = len(chunk)
        if real < batch:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch - real, axis=0)])
        outs = session.run({name: np.ascontiguousarray(chunk.astype(dtype, copy=False))})
        chunks.append([np.asarray(o)[:real] for o in outs])
    return [np.concatenate([c[i] for c in chunks]) for i in range(len(chunks[0]))]


def run_torch(model, inputs: np.ndarray, device: str = "cpu", dtype=None) -> np.ndarray:
    """Logits of a PyTorch model, in chunks of REFERENCE_BATCH."""
    import torch

    outs = []
    with torch.no_grad():
        for start in range(0, len(inputs), REFERENCE_BATCH):
            x = torch.from_numpy(np.ascontiguousarray(inputs[start : start + REFERENCE_BATCH])).to(device)
            if dtype is not None:
                x = x.to(dtype)
            y = model(x)
            y = y[0] if isinstance(y, (tuple, list)) else y
            outs.append(y.detach().float().cpu().numpy() if dtype is None else y.detach().cpu().double().numpy())
    return np.concatenate(outs)


def _no_tf32():
    """PyTorch lets cuDNN convolutions use TF32 by default: not fp32, so not a reference."""
    import contextlib

    import torch

    @contextlib.contextmanager
    def scope():
        saved = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
        try:
            yield
        finally:
            torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved

    return scope()


def load_input_sets(
    preprocessing: Preprocessing,
    chw: tuple[int, int, int],
    images: Path | None,
    inputs: Path | None,
    random_inputs: int,
    seed: int,
) -> tuple[list[InputSet], list[str]]:
    """Photos (default: the bundled calibration/ ones), a tensor file, and seeded random inputs."""
    sets: list[InputSet] = []
    notes: list[str] = []
    if random_inputs < 0:
        raise BadInput(f"--random-inputs must be >= 0, got {random_inputs}")
    if images is not None or inputs is None:
        folder = Path(images) if images is not None else DEFAULT_CALIBRATION_DIR
        photos = load_image_folder(folder, preprocessing)
        if tuple(photos.tensors.shape[1:]) != tuple(chw):
            raise BadInput(
                f"the model's preprocessing makes {tuple(photos.tensors.shape[1:])} tensors, but its input "
                f"expects (N, {', '.join(map(str, chw))})",
                hint="its metadata disagrees with its graph; re-export it",
            )
        sets.append(InputSet("photos", f"{len(photos)} images from {folder}", photos.tensors))
        if photos.corrupt:
            notes.append(
                f"skipped {len(photos.corrupt)} unreadable image(s) in {folder}: "
                + ", ".join(f"{p.name} ({r})" for p, r in photos.corrupt[:3])
            )
    if inputs is not None:
        tensors = load_tensor_file(Path(inputs), chw)
        sets.append(InputSet("tensors", f"{len(tensors)} tensors from {inputs}", tensors))
    if random_inputs:
        sets.append(
            InputSet(
                "random",
                f"{random_inputs} seeded standard-normal inputs (seed {seed})",
                seeded_random_inputs(random_inputs, chw, seed),
            )
        )
    if not sets:
        raise BadInput("no inputs to verify with", hint="give --images, --inputs or --random-inputs N")
    return sets, notes


def _expected_chw(session, preprocessing: Preprocessing) -> tuple[int, int, int]:
    shape = session.session.get_inputs()[0].shape
    if len(shape) != 4:
        raise BadInput(
            f"input {session.input_name!r} of the model has rank {len(shape)} ({shape}); "
            "edgekit verifies image classifiers with (N, C, H, W) inputs"
        )
    crop = preprocessing.crop
    return tuple(int(d) if isinstance(d, int) else default for d, default in zip(shape[1:], (3, crop, crop)))


class _ExactReference:
    """Float64 PyTorch outputs, computed at most once per input set, for the fp32 noise-floor check."""

    def __init__(self, model):
        self.model = model
        self.double = None
        self.cache: dict[str, np.ndarray] = {}

    def get(self, name: str, inputs: np.ndarray) -> np.ndarray:
        import torch

        if name not in self.cache:
            if self.double is None:
                self.double = copy.deepcopy(self.model).double()
            self.cache[name] = run_torch(self.double, inputs, dtype=torch.float64)
        return self.cache[name]


def _apply_noise_floor(
    metrics: OutputMetrics, exact: np.ndarray, reference: np.ndarray, candidate: np.ndarray
) -> str | None:
    """Deep random networks amplify fp32 rounding past a fixed atol (export.py says why); when only the
    elementwise gate failed, pass if ORT is no further from a float64 run than twice PyTorch fp32 is."""
    from edgekit.export import NoiseFloor, only_elementwise_failure

    if not only_elementwise_failure(metrics) or len(metrics.failures) != 1:
        return None
    floor = NoiseFloor(
        torch_fp32_error=float(np.abs(reference.astype(np.float64) - exact).max()),
        onnx_error=float(np.abs(candidate.astype(np.float64) - exact).max()),
    )
    if floor.explains_difference:
        metrics.failures = []
    return floor.describe()


def _versions() -> dict:
    import onnxruntime as ort

    from edgekit.export import library_versions
    from edgekit.runtime import cuda_device_available

    versions = dict(library_versions())
    versions["python"] = sys.version.split()[0]
    versions["platform"] = platform.platform()
    versions["ort_available_providers"] = ort.get_available_providers()
    if cuda_device_available():
        import torch

        versions["cuda_device"] = torch.cuda.get_device_name(0)
        versions["torch_cuda"] = torch.version.cuda
    return versions


# --- the dataset -----------------------------------------------------------------------------


def scan_dataset(folder: Path) -> tuple[list[str], list[tuple[Path, int]], list[str]]:
    """(class names, (file, label) pairs, classes without images) of an ImageFolder-style tree:
    one sub-folder per class, labels are the indices of the sorted folder names (torchvision's rule)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise BadInput(
            f"--dataset {folder} is not a folder" + ("" if folder.exists() else " (it does not exist)"),
            hint="one sub-folder of images per class, as torchvision's ImageFolder",
        )
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise BadInput(
            f"--dataset {folder} has no class sub-folders", hint="one sub-folder of images per class, as ImageFolder"
        )
    samples: list[tuple[Path, int]] = []
    empty: list[str] = []
    for label, name in enumerate(classes):
        files, _others = scan_folder(folder / name)
        if not files:
            empty.append(name)
        samples += [(f, label) for f in files]
    return classes, samples, empty


def check_dataset(folder: Path, num_classes: int | None) -> tuple[list[str], list[tuple[Path, int]], list[str]]:
    """scan_dataset, and BadInput when the folder cannot be scored against a `num_classes` model."""
    classes, samples, empty = scan_dataset(folder)
    if num_classes is not None and len(classes) > num_classes:
        raise BadInput(
            f"--dataset {folder} has {len(classes)} classes but the model has {num_classes} outputs",
            hint="point to a folder with at most as many class sub-folders as the model has classes",
        )
    if not samples:
        raise BadInput(f"--dataset {folder}: its {len(classes)} class folders hold no images")
    return classes, samples, empty


def measure_dataset(
    folder: Path,
    model,
    sessions: list,
    preprocessing: Preprocessing,
    num_classes: int,
    max_drop: float | None,
    samples: int | None,
    seed: int,
    on_stage: Callable[[str], None],
) -> DatasetAccuracy:
    """Top-1 of PyTorch and of each session on a labelled folder, decoded and run in chunks."""
    classes, pairs, empty = check_dataset(folder, num_classes)
    label_of = dict(pairs)
    chosen = pick_samples([p for p, _ in pairs], samples, seed)
    notes = []
    if empty:
        notes.append(f"class folders without images: {', '.join(empty[:5])}")
    if len(classes) < num_classes:
        notes.append(
            f"{len(classes)} class folders for a {num_classes}-class model: label i is the i-th folder name in "
            "sorted order (torchvision's ImageFolder rule)"
        )
    skipped: list[tuple[Path, str]] = []
    torch_correct = 0
    correct = [0] * len(sessions)
    agree = [0] * len(sessions)
    used = 0
    for start in range(0, len(chosen), DATASET_CHUNK):
        on_stage(f"dataset {min(start + DATASET_CHUNK, len(chosen))}/{len(chosen)}")
        arrays, labels = [], []
        for path in chosen[start : start + DATASET_CHUNK]:
            try:
                arrays.append(decode_image(path, preprocessing))
                labels.append(label_of[path])
            except ValueError as exc:
                skipped.append((path, str(exc)))
        if not arrays:
            continue
        x = np.stack(arrays).astype(np.float32)
        y = np.asarray(labels)
        torch_pred = run_torch(model, x).argmax(axis=1)
        torch_correct += int((torch_pred == y).sum())
        for i, session in enumerate(sessions):
            pred = run_session(session, x, _batch_sizes(session)[-1])[0].reshape(len(x), -1).argmax(axis=1)
            correct[i] += int((pred == y).sum())
            agree[i] += int((pred == torch_pred).sum())
        used += len(x)
    if used == 0:
        raise BadInput(f"--dataset {folder}: none of its {len(chosen)} images could be decoded")
    reference_top1 = 100.0 * torch_correct / used
    return DatasetAccuracy(
        folder=Path(folder),
        classes=classes,
        samples=used,
        torch_correct=torch_correct,
        providers=[
            ProviderAccuracy(s.requested, s.ran_on, correct[i], agree[i], used, reference_top1)
            for i, s in enumerate(sessions)
        ],
        max_drop=max_drop,
        skipped=skipped,
        notes=notes,
    )


def _provider_rows(
    session, input_sets: list[InputSet], expected: dict[str, np.ndarray], precision: str, tolerance: Tolerance,
    exact: "_ExactReference | None", on_stage: Callable[[str], None],
) -> tuple[ProviderRun, list[Comparison]]:
    """Node placement and one Comparison per input set x batch size for one ORT session."""
    output_name = session.session.get_outputs()[0].name
    batches = _batch_sizes(session)
    on_stage(f"ONNX Runtime on {session.requested}: node placement")
    # One profiled run tells which provider ran each node; node_placement() then ends profiling.
    run_session(session, input_sets[0].tensors[: batches[0]], batches[0])
    run = ProviderRun(
        requested=session.requested,
        ran_on=session.ran_on,
        fell_back=session.fell_back,
        reason=session.reason,
        ort_providers=list(session.providers),
        placement=session.node_placement(),
    )
    rows = []
    for s in input_sets:
        for batch in batches:
            on_stage(f"ONNX Runtime on {session.requested}: {s.name}, batch {batch}")
            got = run_session(session, s.tensors, batch)[0]
            ref = expected[s.name]
            row_tol, notes = tolerance, []
            if precision == "int8" and s.name == "random":
                # int8 scales are calibrated on images; standard-normal noise lies outside the
                # calibrated ranges and saturates (random-weight resnet18 at 224: 4.7 dB, 0 % top-1
                # agreement, against 27 dB and 100 % on the photos). Only NaN/Inf are gated there.
                row_tol = NAN_ONLY
            try:
                metrics = compare_outputs(ref, got, output_name, row_tol)
            except CheckFailed as exc:
                raise CheckFailed(f"ORT {session.requested} on {s.name}, batch {batch}: {exc}") from None
            if exact is not None and not metrics.passed:
                on_stage("float64 PyTorch run (fp32 noise floor)")
                note = _apply_noise_floor(metrics, exact.get(s.name, s.tensors), ref, got)
                if note:
                    notes.append(note)
            rows.append(
                Comparison(
                    "onnxruntime", session.requested, session.ran_on, s.name, batch, len(s.tensors),
                    [metrics], row_tol, notes=notes,
                )
            )
    return run, rows


def _torch_cuda_rows(
    torch_model, input_sets: list[InputSet], expected: dict[str, np.ndarray], output_name: str,
    on_stage: Callable[[str], None],
) -> list[Comparison]:
    """PyTorch's own GPU result against its CPU one, for scale (not a gate): fp32 noise on this GPU."""
    import torch

    on_stage("PyTorch on CUDA")
    fp32 = DEFAULT_TOLERANCES["fp32"]
    rows = []
    cuda_model = copy.deepcopy(torch_model).to("cuda")
    try:
        with _no_tf32():
            for s in input_sets:
                got = run_torch(cuda_model, s.tensors, device="cuda")
                rows.append(
                    Comparison(
                        "pytorch", "cuda", "cuda", s.name, min(REFERENCE_BATCH, len(s.tensors)), len(s.tensors),
                        [compare_outputs(expected[s.name], got, output_name, fp32)], fp32, gated=False,
                        notes=["PyTorch CUDA vs PyTorch CPU, for scale; not a gate"],
                    )
                )
    finally:
        del cuda_model
        torch.cuda.empty_cache()
    return rows


# --- verify ----------------------------------------------------------------------------------


def verify(
    path: Path,
    *,
    providers: str | None = None,
    allow_fallback: bool = False,
    images: Path | None = None,
    inputs: Path | None = None,
    random_inputs: int = DEFAULT_RANDOM_INPUTS,
    seed: int = 0,
    model: str | None = None,
    weights: Path | None = None,
    pretrained: bool = False,
    atol: float | None = None,
    rtol: float | None = None,
    min_top1_agreement: float | None = None,
    min_sqnr: float | None = None,
    dataset: Path | None = None,
    max_drop: float | None = None,
    dataset_samples: int | None = None,
    on_stage: Callable[[str], None] | None = None,
) -> Report:
    """Compare ONNX Runtime on each provider with the PyTorch reference; the Report says what passed."""
    from edgekit.runtime import check_inputs, create_session, cuda_device_available, parse_providers

    on_stage = on_stage or (lambda _s: None)
    started = time.perf_counter()
    path = Path(path)
    if weights is not None and pretrained:
        raise BadInput("--weights and --pretrained exclude each other", hint="choose one")
    if max_drop is not None and not (np.isfinite(max_drop) and max_drop >= 0):
        raise BadInput(f"--max-drop must be a number of points >= 0, got {max_drop}")
    if max_drop is not None and dataset is None:
        raise BadInput("--max-drop gates the accuracy on --dataset", hint="give --dataset DIR too")
    if dataset_samples is not None and dataset_samples < 1:
        raise BadInput(f"--samples must be at least 1, got {dataset_samples}")

    on_stage("loading the file")
    model_proto = load_onnx(path)
    meta = read_metadata(model_proto)
    plan = plan_reference(path, model_proto, meta, model, weights, pretrained, seed)
    precision = str(meta.get("precision", "fp32")) if meta else detect_precision(model_proto)
    tolerance, tolerance_source = resolve_tolerance(precision, atol, rtol, min_top1_agreement, min_sqnr)
    if dataset is not None:
        check_dataset(Path(dataset), plan.num_classes)  # a bad folder fails now, not after the reference is built
    user_elementwise = atol is not None or rtol is not None
    digest = sha256_file(path)
    del model_proto  # the sessions read the file themselves; large graphs need not stay in memory

    # Sessions before any PyTorch work: a provider that cannot start fails in seconds (exit 3).
    wanted = parse_providers(providers)
    sessions: list = []
    with contextlib.ExitStack() as cleanup:
        # ORT writes a profiled session's trace when it is freed: end every one, whatever fails
        cleanup.callback(lambda: [s.discard_profile() for s in sessions])
        notes: list[str] = []
        for provider in wanted:
            on_stage(f"starting ONNX Runtime on {provider}")
            # ORT's CUDA provider uses TF32 for fp32 convolutions by default: that is not fp32 math.
            # (TensorRT has no such option in ORT; its fp32 engines may use TF32 on Ampere and later.)
            options = {"use_tf32": "0"} if provider == "cuda" else None
            session = create_session(
                path, provider, allow_fallback=allow_fallback, enable_profiling=True, provider_options=options
            )
            sessions.append(session)

        first = sessions[0]
        chw = _expected_chw(first, plan.preprocessing)
        on_stage("loading inputs")
        input_sets, input_notes = load_input_sets(plan.preprocessing, chw, images, inputs, random_inputs, seed)
        notes += input_notes
        for session in sessions:
            probe = input_sets[0].tensors[:1]
            probe = np.repeat(probe, _batch_sizes(session)[0], axis=0).astype(_input_dtype(session))
            check_inputs(session.session, {session.input_name: probe})
        if _input_dtype(first) == np.float16:
            notes.append("the model takes float16 inputs: the float32 inputs are cast to float16 for ONNX Runtime")

        on_stage(f"building the PyTorch reference ({plan.spec.name})")
        torch_model = build_reference(plan)
        reference = Reference(
            model=plan.spec.name,
            family=plan.spec.family,
            from_metadata=plan.from_metadata,
            weights=plan.weights,
            num_classes=plan.num_classes,
            input_size=plan.input_size,
            preprocessing=plan.preprocessing,
        )
        if not plan.from_metadata and plan.weights.get("kind") == "random":
            notes.append(
                f"no --weights: the reference has seeded random weights (seed {seed}); a foreign file matches it "
                "only if it was exported from the same seeded model"
            )
        expected_outputs = {}
        for s in input_sets:
            on_stage(f"PyTorch on {s.name}")
            ref = run_torch(torch_model, s.tensors)
            if not np.isfinite(ref).all():
                raise CheckFailed(
                    f"the PyTorch reference itself produced NaN/Inf on the {s.name} inputs; nothing to compare against"
                )
            expected_outputs[s.name] = ref
        first_ref = expected_outputs[input_sets[0].name]
        num_classes = int(first_ref.reshape(len(first_ref), -1).shape[1])
        reference.num_classes = num_classes

        if precision == "int8" and any(s.name == "random" for s in input_sets):
            notes.append(
                "int8 on the random inputs: only NaN/Inf are gated (standard-normal noise lies outside the ranges "
                "the int8 scales were calibrated on, and saturates); the photos carry the int8 gates"
            )
        first_output = first.session.get_outputs()[0].name
        if len(first.session.get_outputs()) > 1:
            notes.append(f"the model has several outputs; PyTorch gives one, compared with {first_output!r}")
        exact = _ExactReference(torch_model) if precision == "fp32" and not user_elementwise else None
        runs: list[ProviderRun] = []
        comparisons: list[Comparison] = []
        for session in sessions:
            run, rows = _provider_rows(session, input_sets, expected_outputs, precision, tolerance, exact, on_stage)
            runs.append(run)
            comparisons += rows
        if cuda_device_available() and any(p in ("cuda", "tensorrt") for p in wanted):
            reference.devices = ["cpu", "cuda"]
            comparisons += _torch_cuda_rows(torch_model, input_sets, expected_outputs, first_output, on_stage)

        accuracy = None
        if dataset is not None:
            on_stage("dataset")
            accuracy = measure_dataset(
                Path(dataset), torch_model, sessions, plan.preprocessing, num_classes, max_drop, dataset_samples, seed,
                on_stage,
            )

        return Report(
            file=path,
            sha256=digest,
            precision=precision,
            metadata=meta,
            reference=reference,
            tolerance=tolerance,
            tolerance_source=tolerance_source,
            input_sets=input_sets,
            providers=runs,
            comparisons=comparisons,
            dataset=accuracy,
            versions=_versions(),
            notes=notes,
            seconds=time.perf_counter() - started,
        )
