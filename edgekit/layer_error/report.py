"""Per-layer int8 error: the records (one per quantized activation and weight), the report that ranks them, and the
SQNR arithmetic they share. SQNR is 10 log10(sum x^2 / sum (x - y)^2) over every element of every input, x the
reference. How the numbers are measured: layer_error/measure.py."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from edgekit.core.errors import CheckFailed
from edgekit.core.serialize import json_safe


@dataclass
class ActivationError:
    """One quantized activation (a node output with a QuantizeLinear/DequantizeLinear pair)."""

    tensor: str
    node: str | None  # the node computing it in the int8 graph (the Conv when a Relu was folded into it)
    op_type: str  # "input" for the graph input
    fp32_node: str | None  # the fp32-graph node name to pass to nodes_to_exclude (None: the graph input)
    position: int  # topological index of that node in the fp32 graph (-1: the graph input)
    sqnr_db: float  # fp32 vs int8 as ORT's CPU kernels computed it (session_config applied)
    simulated_sqnr_db: float  # fp32 vs the QDQ graph evaluated in float (qdq_loss_debug's xmodel_err)
    qdq_sqnr_db: float  # this tensor before vs after its own Q/DQ (qdq_loss_debug's qdq_err)
    input_sqnr_db: float  # sqnr_db of the noisiest quantized activation feeding the node (inf: clean inputs)
    added_noise: float  # noise-to-signal power the node adds: 10^(-sqnr/10) - 10^(-input_sqnr/10)
    inputs: list[str] = field(default_factory=list)  # the quantized activations it reads

    @property
    def drop_db(self) -> float:
        """SQNR lost across this node (input_sqnr_db - sqnr_db)."""
        return self.input_sqnr_db - self.sqnr_db


@dataclass
class WeightError:
    """One quantized initializer: float value vs its dequantized int8/int32 value."""

    name: str
    node: str | None  # the node it feeds (int8 graph)
    op_type: str
    role: str  # "weight", "bias" or "input <i>"
    position: int  # topological index of that node in the fp32 graph (-1: not there)
    sqnr_db: float


@dataclass
class LayerReport:
    """Per-layer error of an int8 QDQ file against its fp32 parent; lists are worst (lowest SQNR) first."""

    fp32_path: Path
    int8_path: Path
    samples: int
    batch: int  # samples per ORT run
    runs: int  # ORT runs per model
    session_config: dict[str, str]
    seconds: float
    activations: list[ActivationError]
    weights: list[WeightError]
    unmatched_activations: list[str] = field(default_factory=list)  # quantized in the int8 file, not in the fp32 one
    unmatched_weights: list[str] = field(default_factory=list)  # quantized initializers without an fp32 counterpart
    notes: list[str] = field(default_factory=list)

    def worst(self, n: int = 10) -> list[ActivationError]:
        """The `n` activations with the lowest SQNR (fp32 vs int8 as the CPU computed it)."""
        return self.activations[: max(n, 0)]

    def ranked(self) -> list[ActivationError]:
        """Activations produced by a node, most added noise first (see `sensitive_nodes`)."""
        candidates = [a for a in self.activations if a.fp32_node is not None]
        return sorted(candidates, key=lambda a: (-_finite_or(a.added_noise, 0.0), _finite_or(a.sqnr_db, math.inf)))

    def sensitive_nodes(self, n: int = 5) -> list[str]:
        """fp32-graph node names, most sensitive first, for quantize_static's `nodes_to_exclude`.

        Ranked by the noise a node adds, not by the SQNR at its output. Error accumulates along
        depth, so the lowest absolute SQNRs sit near the logits whichever layer caused them; what
        a node is responsible for is the difference between the noise at its output and the noise
        already on its noisiest quantized input. The difference is taken in linear noise-to-signal
        power (10^(-SQNR/10)), not in dB: to first order the relative noise at the logits is the
        sum of what each node adds, carried forward like the signal, so this is the part of the
        final error that keeping the node in fp32 can remove. A dB drop would rank a layer going
        from 45 to 35 dB (adds 3e-4) above one going from 20 to 18 dB (adds 6e-3).

        A node's added noise covers its weights' quantization, its arithmetic in int8 on this
        CPU, and the quantization of its output. Limits, measured on textbook_resnet18:
        (1) with QDQ a tensor stays quantized while its producer or any consumer is quantized. A
        tensor whose per-tensor range is set by one outlier channel loses its other channels, yet
        reads well in SQNR (the outlier carries the energy); the loss shows at its consumer, which
        ranks first, and is removed only by excluding producer and consumer together (each alone:
        no gain). `ActivationError.inputs` names the tensors to widen the exclusion to.
        (2) ORT's WeightBiasQuantization optimizer re-quantizes the float weights of an excluded
        Conv/Gemm that sits between a DequantizeLinear and a QuantizeLinear when the session
        starts, so the node is not in fp32 at run time unless the session has
        {"optimization.disable_specified_optimizers": "WeightBiasQuantization"}; measure with the
        session config the deployment uses (`session_config`).
        (3) It is a first-order estimate: re-measure after each exclusion, as a fallback loop does.
        """
        names: list[str] = []
        for act in self.ranked():
            if act.fp32_node not in names:
                names.append(act.fp32_node)
            if len(names) >= n:
                break
        return names

    def to_dict(self) -> dict:
        """JSON-safe (no NaN/Inf floats: those are written as the strings "nan", "inf", "-inf")."""
        ranked = self.ranked()
        data = {
            "fp32_path": str(self.fp32_path),
            "int8_path": str(self.int8_path),
            "samples": self.samples,
            "batch": self.batch,
            "runs": self.runs,
            "session_config": dict(self.session_config),
            "seconds": self.seconds,
            "activations": [{**asdict(a), "drop_db": a.drop_db} for a in self.activations],
            "weights": [asdict(w) for w in self.weights],
            "sensitive_nodes": self.sensitive_nodes(len(ranked)),
            "unmatched_activations": list(self.unmatched_activations),
            "unmatched_weights": list(self.unmatched_weights),
            "notes": list(self.notes),
        }
        return json_safe(data)


def _finite_or(value: float, default: float) -> float:
    return value if value is not None and math.isfinite(value) else default


# --- error arithmetic -------------------------------------------------------------------------


def _energies(reference, candidate) -> tuple[float, float]:
    """(signal energy, noise energy) over a list of arrays (or one array).

    float32 tensors are compared in float32 (BLAS dot products: the rounding is ~1e-6 relative, far
    below what a dB figure shows); anything else, or a sum that overflows float32, in float64.
    """
    refs, cands = _arrays(reference), _arrays(candidate)
    if len(refs) != len(cands):
        raise CheckFailed(f"cannot compare {len(refs)} reference tensors with {len(cands)} int8 ones")
    signal = noise = 0.0
    for r, c in zip(refs, cands):
        r, c = np.asarray(r).ravel(), np.asarray(c).ravel()
        if r.shape != c.shape:
            raise CheckFailed(f"a tensor has {r.size} elements in the fp32 run and {c.size} in the int8 run")
        pair = None
        if r.dtype == np.float32 and c.dtype == np.float32:
            d = r - c
            pair = float(np.dot(r, r)), float(np.dot(d, d))
        if pair is None or not all(math.isfinite(v) for v in pair):
            r, c = r.astype(np.float64), c.astype(np.float64)
            d = r - c
            pair = float(np.dot(r, r)), float(np.dot(d, d))
        signal += pair[0]
        noise += pair[1]
    return signal, noise


def _arrays(value) -> list:
    """One array, or a list of arrays, as a list. A 0-d weight (a scalar shared by many Adds) reaches here as a
    numpy scalar (np.float32), not an ndarray: it is one array of one element."""
    if isinstance(value, (np.ndarray, np.generic, float, int)):
        return [np.asarray(value)]
    return list(value)


def _db(signal: float, noise: float) -> float:
    if not (math.isfinite(signal) and math.isfinite(noise)):
        return math.nan
    if noise == 0.0:
        return math.inf if signal > 0 else math.nan
    if signal == 0.0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)


def sqnr_db(reference, candidate) -> float:
    """SQNR in dB of `candidate` against `reference` (arrays or lists of arrays); inf when identical."""
    return _db(*_energies(reference, candidate))


def _noise_ratio(db: float) -> float:
    """Noise-to-signal power for an SQNR in dB (0 for inf, inf for -inf, nan stays nan)."""
    if math.isnan(db):
        return math.nan
    if db == math.inf:
        return 0.0
    if db == -math.inf:
        return math.inf
    return 10.0 ** (-db / 10.0)


def _sort_db(value: float) -> float:
    return math.inf if math.isnan(value) else value
