"""ORT and OpenVINO per layer, side by side, on the same file and the same input.

ORT's per-node profile (profile.py's summary of its trace) and OpenVINO's per-layer counters (PERF_COUNT,
runtimes/openvino_model.layer_profiler) are recorded in one interleaved run (timer.interleaved: ORT, OpenVINO,
ORT, ...), then aligned by node name. OpenVINO fuses (a conv with its requantize, the residual Add and the
Relu after it) and renames its layers; each compiled layer keeps the file's node names it was made of
(rt_info "originalLayersNames"). An ORT node matches the OpenVINO layer that lists its name (ORT's own
suffixes, `_token_N`, `_nchwc`, `_quant`, stripped first, and OpenVINO's `/WithoutBiases`), else the layer whose original name is the longest
prefix of it. Several ORT nodes can land on one OpenVINO layer (ORT runs the Add of a residual block on its
own, OpenVINO inside the conv): a row is one OpenVINO layer with every ORT node matched to it. What did not
match on either side is listed with its time, never dropped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass
class LayerRow:
    """One OpenVINO layer and the ORT nodes matched to it: ms per run in each (medians over the runs)."""

    layer: str
    layer_type: str
    openvino_ms: float
    openvino_kernel: str
    openvino_precision: str
    ort_ms: float
    ort_nodes: list[str]
    ort_ops: list[str]
    ort_kind: str  # int8 | float | mixed

    @property
    def ort_loses_ms(self) -> float:
        return self.ort_ms - self.openvino_ms

    def to_dict(self) -> dict:
        return {"layer": self.layer, "layer_type": self.layer_type, "openvino_ms": self.openvino_ms,
                "openvino_kernel": self.openvino_kernel, "openvino_precision": self.openvino_precision,
                "ort_ms": self.ort_ms, "ort_nodes": list(self.ort_nodes), "ort_ops": list(self.ort_ops),
                "ort_kind": self.ort_kind, "ort_loses_ms": self.ort_loses_ms}


@dataclass
class SideBySide:
    """Both runtimes on one file: matched rows (where ORT loses most first) and what did not match."""

    file: str
    runs: int
    threads: int | None
    ort_kernel_ms: float  # sum of ORT's node times per run
    openvino_layer_ms: float  # sum of OpenVINO's executed layers per run
    rows: list[LayerRow]
    ort_unmatched: list[dict] = field(default_factory=list)  # {"name", "op_type", "ms"}
    openvino_unmatched: list[dict] = field(default_factory=list)  # {"name", "layer_type", "exec_type", "ms"}
    ort_nodes: int = 0
    openvino_layers: int = 0

    def top_losses(self, n: int = 10) -> list[LayerRow]:
        return [r for r in self.rows if r.ort_loses_ms > 0][:n]

    def to_dict(self, top: int = 25) -> dict:
        return {
            "file": self.file, "runs": self.runs, "threads": self.threads, "statistic": "median",
            "ort_kernel_ms": self.ort_kernel_ms, "openvino_layer_ms": self.openvino_layer_ms,
            "ort_nodes": self.ort_nodes, "openvino_layers": self.openvino_layers,
            "matched_rows": len(self.rows), "rows": [r.to_dict() for r in self.rows[:top]],
            "ort_unmatched": self.ort_unmatched, "openvino_unmatched": self.openvino_unmatched,
            "ort_unmatched_ms": sum(u["ms"] for u in self.ort_unmatched),
            "openvino_unmatched_ms": sum(u["ms"] for u in self.openvino_unmatched),
        }


_OPENVINO_SUFFIXES = ("/WithoutBiases",)


def _ort_keys(name: str) -> list[str]:
    """The names an ORT node may go by in the file: its own, then with ORT's suffixes stripped one by one."""
    from edgekit.bench.profile import _match_key

    keys = [name]
    stripped = _match_key(name)
    if stripped != name:
        keys.append(stripped)
    return keys


def align(ort_nodes: list, openvino_layers: list, *, file: str = "", runs: int = 0, threads: int | None = None) -> SideBySide:
    """Align ORT's NodeTime list (profile.Profile.nodes) with OpenVINO's OpenVinoLayer list by node name."""
    by_original: dict[str, int] = {}
    for i, layer in enumerate(openvino_layers):
        for original in layer.original_names:
            by_original.setdefault(original, i)
            for suffix in _OPENVINO_SUFFIXES:  # a conv or gemm OpenVINO split from its bias keeps the suffix
                if original.endswith(suffix):
                    by_original.setdefault(original[: -len(suffix)], i)
    originals = sorted(by_original, key=len, reverse=True)
    matched: dict[int, list] = {}
    ort_unmatched = []
    for node in ort_nodes:
        hit = next((by_original[k] for k in _ort_keys(node.name) if k in by_original), None)
        if hit is None:  # the longest original name that prefixes ORT's (a node ORT split or renamed)
            hit = next((by_original[o] for o in originals if len(o) > 3 and node.name.startswith(o)), None)
        if hit is None:
            ort_unmatched.append({"name": node.name, "op_type": node.op_type, "ms": node.ms})
        else:
            matched.setdefault(hit, []).append(node)
    rows, openvino_unmatched = [], []
    for i, layer in enumerate(openvino_layers):
        nodes = matched.get(i)
        if not nodes:
            openvino_unmatched.append({"name": layer.name, "layer_type": layer.layer_type,
                                       "exec_type": layer.exec_type, "ms": layer.ms})
            continue
        kinds = {n.kind for n in nodes if n.kind in ("int8", "float")}
        rows.append(LayerRow(
            layer=layer.name, layer_type=layer.layer_type, openvino_ms=layer.ms, openvino_kernel=layer.exec_type,
            openvino_precision=layer.precision, ort_ms=sum(n.ms for n in nodes), ort_nodes=[n.name for n in nodes],
            ort_ops=sorted({n.op_type for n in nodes}), ort_kind=kinds.pop() if len(kinds) == 1 else ("mixed" if kinds else "-"),
        ))
    rows.sort(key=lambda r: -r.ort_loses_ms)
    return SideBySide(
        file=file, runs=runs, threads=threads, ort_kernel_ms=sum(n.ms for n in ort_nodes),
        openvino_layer_ms=sum(layer.ms for layer in openvino_layers), rows=rows,
        ort_unmatched=sorted(ort_unmatched, key=lambda u: -u["ms"]),
        openvino_unmatched=sorted(openvino_unmatched, key=lambda u: -u["ms"]),
        ort_nodes=len(ort_nodes), openvino_layers=len(openvino_layers),
    )


def side_by_side(path: Path, x: np.ndarray, *, threads: int | None = 2, runs: int = 20) -> SideBySide:
    """Profile `path` in ORT (CPU, the file's own session options, spinning off, as profile_file) and in
    OpenVINO (CPU, PERF_COUNT) interleaved on input `x`, one warm-up each, then align them by name."""
    from edgekit.bench.profile import file_session_config, profiled_runs, summarise_trace
    from edgekit.runtimes.factory import session_options
    from edgekit.runtimes.openvino_model import layer_profiler

    path = Path(path)
    config = session_options(None, timing=True, extra=file_session_config(path))
    run, layers = layer_profiler(path, x, threads=threads)
    events = profiled_runs(path, x, threads, config, runs, beside={"openvino": run})
    ort = summarise_trace(events, path=str(path), skip_runs=1, threads=threads, session_config=config)
    return align(ort.nodes, layers(skip=1), file=str(path), runs=runs, threads=threads)
