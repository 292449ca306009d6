"""What verify measured: the reference, input sets, provider runs, comparison rows, dataset accuracy, the Report."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgekit.judge.compare import NAN_ONLY, OutputMetrics, Tolerance
from edgekit.data.preprocessing import Preprocessing


@dataclass
class Reference:
    """What the ONNX file is compared with (edgekit.reference: PyTorch, or ONNX Runtime on the fp32 parent or the
    original file), and where that knowledge came from."""

    model: str | None
    family: str | None
    from_metadata: bool
    weights: dict | None  # WeightsSource.to_dict(); None for an ONNX reference (the weights are unknown)
    num_classes: int | None
    input_size: int | None
    preprocessing: Preprocessing
    devices: list[str] = field(default_factory=lambda: ["cpu"])
    kind: str = "pytorch"  # pytorch | parent | original
    file: str | None = None  # the ONNX reference (parent, original)
    sha256: str | None = None
    task: str = "classify"
    text: str = ""  # edgekit.reference.Reference.describe()

    @property
    def short(self) -> str:
        return "PyTorch" if self.kind == "pytorch" else ("the fp32 parent" if self.kind == "parent" else "the original")

    def describe(self) -> str:
        return f"{self.text}, on {' and '.join(d.upper() for d in self.devices)}"

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
    kernels: str = ""  # "" for ORT's defaults; "x64quantprecision=1" / "s8s8 as written": exact int8 (targets.kernels_label)
    device: str | None = None  # the emulated device whose ORT kernels ran it (runtimes.devices); None: this machine

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
        kernels = f" [{self.kernels}]" if self.kernels else ""
        name = {"onnxruntime": "ORT", "openvino": "OpenVINO"}.get(self.runtime, "PyTorch")
        device = f" on {self.device}" if self.device else ""
        return f"{name} {where}{device}{kernels}"

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
            "kernels": self.kernels or "default",
            "device": self.device or "host",
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
    device: str | None = None  # the emulated device whose kernels ran it (None: this machine)

    @property
    def label(self) -> str:
        where = self.provider if self.ran_on == self.provider else f"{self.provider} -> {self.ran_on}"
        return f"ORT {where}" + (f" on {self.device}" if self.device else "")

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
            f"accuracy on {self.folder} ({p.label}): top-1 {p.top1:.2f} % vs PyTorch {self.torch_top1:.2f} %, "
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
                    "device": p.device or "host",
                    "top1": p.top1,
                    "drop_points": p.drop,
                    "top1_agreement_with_pytorch": p.agreement,
                }
                for p in self.providers
            ],
        }


@dataclass
class Saturation:
    """An int8 file on an x86 CPU without VNNI: ORT's default kernels against exact accumulation."""

    cpu: dict
    recipe_target: str | None
    judged_for: str  # the target whose arithmetic the gates used
    default_sqnr_db: float
    exact_sqnr_db: float
    default_top1_agreement: float
    exact_top1_agreement: float
    gated_on_default: bool
    max_gap_db: float
    exact_kernels: str = "x64quantprecision=1"  # the session option that makes this CPU exact for this file

    @property
    def exact_option(self) -> str:
        """The session option, as the manifest and the docs spell it, that gives this CPU the exact kernels."""
        from edgekit.judge.targets import AS_WRITTEN_S8_SESSION, EXACT_INT8_SESSION

        config = EXACT_INT8_SESSION if self.exact_kernels == "x64quantprecision=1" else AS_WRITTEN_S8_SESSION
        return ", ".join(f"{k}={v}" for k, v in config.items())

    @property
    def gap_db(self) -> float:
        return self.exact_sqnr_db - self.default_sqnr_db

    @property
    def failure(self) -> str | None:
        """One line naming the cause and the fix, when this CPU's saturation is gated and present."""
        if not self.gated_on_default or not self.gap_db > self.max_gap_db:
            return None
        return (
            f"saturation on this CPU ({self.cpu.get('kind')}): the file ({self.recipe_target or 'unknown'} recipe, "
            f"8-bit weights) reads {self.default_sqnr_db:.1f} dB in ORT's default int8 kernels against "
            f"{self.exact_sqnr_db:.1f} dB with exact accumulation ({self.gap_db:.1f} dB lost, top-1 agreement "
            f"{self.default_top1_agreement:.1%} vs {self.exact_top1_agreement:.1%}); fix: re-quantize with --target "
            f"x86-avx2 (7-bit weights), or deploy with the session option {self.exact_option}, or pass "
            f"--target {self.recipe_target or 'TARGET'} if the file is not meant for this CPU"
        )

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "gap_db": self.gap_db, "failure": self.failure}


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
    saturation: "Saturation | None" = None
    layers: object | None = None  # edgekit.layer_error.LayerReport (verify --layers)

    def failures(self) -> list[str]:
        out = [self.saturation.failure] if self.saturation and self.saturation.failure else []
        out += [
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
            "int8_saturation": self.saturation.to_dict() if self.saturation else None,
            "layers": self.layers.to_dict() if self.layers is not None else None,
            "versions": self.versions,
            "metadata": self.metadata,
            "seconds": round(self.seconds, 2),
        }
