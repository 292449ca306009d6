"""Where an ONNX file's time goes in ONNX Runtime: its per-node profile, summarised.

Answers "why is my int8 not faster?": time per op type and per node, which nodes run an int8
kernel and which a float one, what the QuantizeLinear/DequantizeLinear conversions cost, and the
layout transposes/reorders ORT inserts around NHWC (int8) and NCHWc (fp32) kernels; for a pair of
files (fp32 vs int8), where the second gains and where it loses.

The numbers are ORT's own `<node>_kernel_time` events (wall time of each kernel, microseconds)
from `enable_profiling`, counted after ORT's graph optimisation (fused nodes, inserted layout
nodes), so node names and counts differ from the file's. The first (warm-up) run is left out;
each node's ms per run is its median over the rest (a run another process interrupted does not
count). Sessions run without thread spinning (as edgekit's bench does), so an idle pool does not
steal the cores; `profile_files` interleaves several files (A B A B ...) so drift hits them alike.

No printing here: the cli formats `Profile.to_dict()` / `ProfileDiff.to_dict()`.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgekit.core.errors import BadInput, CheckFailed, one_line
from edgekit.runtimes.factory import session_options

# Kernels that compute in 8-bit integers (the point of a quantized file).
INT8_OPS = frozenset({
    "QLinearConv", "QGemm", "QLinearConcat", "QLinearAdd", "QLinearMul", "QLinearMatMul", "MatMulInteger",
    "ConvInteger", "MatMulIntegerToFloat", "DynamicQuantizeMatMul", "QLinearGlobalAveragePool",
    "QLinearAveragePool", "QLinearSigmoid", "QLinearLeakyRelu", "QLinearSoftmax", "QLinearReduceMean",
    "QLinearWhere", "QAttention", "NhwcQLinearConv",
})
# Conversions between float and 8-bit: the price of a float island in an int8 graph.
CONVERT_OPS = frozenset({"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"})
# Pure data layout changes ORT inserts (NHWC for int8 kernels, NCHWc blocks for fp32 ones).
LAYOUT_OPS = frozenset({"Transpose", "ReorderInput", "ReorderOutput"})
_INT_TYPES = {"uint8", "int8"}

KINDS = ("int8", "float", "convert", "layout")

# Op types doing the same job in an fp32 and an int8 graph, so a pair can be compared by role.
ROLES = {
    "conv": {"Conv", "FusedConv", "NchwcConv", "NhwcConv", "NhwcFusedConv", "QLinearConv", "ConvInteger",
             "NhwcQLinearConv"},
    "gemm": {"Gemm", "FusedGemm", "MatMul", "FusedMatMul", "QGemm", "QLinearMatMul", "MatMulInteger",
             "MatMulIntegerToFloat"},
    "concat": {"Concat", "QLinearConcat"},
    "add": {"Add", "Sum", "QLinearAdd"},
    "pool": {"MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "NhwcMaxPool", "NchwcMaxPool",
             "NchwcAveragePool", "NchwcGlobalAveragePool", "NchwcGlobalMaxPool", "QLinearAveragePool",
             "QLinearGlobalAveragePool"},
    "batchnorm": {"BatchNormalization"},
    "activation": {"Relu", "Clip", "Sigmoid", "LeakyRelu", "QLinearSigmoid", "QLinearLeakyRelu"},
    "convert": set(CONVERT_OPS),
    "layout": set(LAYOUT_OPS),
}
_ROLE_OF = {op: role for role, ops in ROLES.items() for op in ops}

_SUFFIX = re.compile(r"(_kernel_time|_fence_before|_fence_after)$")


def role_of(op_type: str) -> str:
    return _ROLE_OF.get(op_type, "other")


def kind_of(op_type: str, input_types: list[str]) -> str:
    """int8 | convert | layout | float: what kind of kernel a profiled node ran.

    An op outside the lists whose first input is 8-bit (MaxPool / NhwcMaxPool on uint8, Reshape,
    Flatten) works on int8 data and counts as int8; everything else is float."""
    if op_type in CONVERT_OPS:
        return "convert"
    if op_type in LAYOUT_OPS:
        return "layout"
    if op_type in INT8_OPS or (input_types and input_types[0] in _INT_TYPES):
        return "int8"
    return "float"


@dataclass
class NodeTime:
    """One node as ORT ran it (after its graph optimisation); ms is per run (mean of the measured runs)."""

    name: str
    op_type: str
    kind: str  # int8 | float | convert | layout
    provider: str
    ms: float
    calls_per_run: float
    input: str  # first input as dtype[shape], e.g. uint8[1,56,56,128] (NHWC for ORT's int8 kernels)
    order: int  # position in the first measured run

    def to_dict(self) -> dict:
        return {"name": self.name, "op_type": self.op_type, "kind": self.kind, "provider": self.provider,
                "ms": self.ms, "calls_per_run": self.calls_per_run, "input": self.input}


@dataclass
class OpTime:
    """All nodes of one op type: count, ms per run, share of the kernel time."""

    op_type: str
    kind: str
    nodes: int
    ms: float
    percent: float

    def to_dict(self) -> dict:
        return {"op_type": self.op_type, "kind": self.kind, "nodes": self.nodes, "ms": self.ms, "percent": self.percent}


@dataclass
class Profile:
    """The per-node profile of one file: totals are per run, averaged over the measured runs."""

    path: str
    runs: int  # measured runs (the warm-up run excluded)
    threads: int | None
    run_ms: float  # median (or mean) wall time of ORT's model_run
    kernel_ms: float  # sum of the nodes' kernel ms per run (run_ms less ORT's own overhead between kernels)
    run_ms_each: list[float]
    nodes: list[NodeTime]  # slowest first
    ops: list[OpTime]  # slowest first
    session_config: dict[str, str] = field(default_factory=dict)
    statistic: str = "median"  # how each node's ms per run was averaged over the runs

    def by_kind(self) -> dict[str, dict[str, float]]:
        """{kind: {"nodes": n, "ms": per run, "percent": of kernel time}} for int8/float/convert/layout."""
        out = {}
        for kind in KINDS:
            members = [n for n in self.nodes if n.kind == kind]
            ms = sum(n.ms for n in members)
            out[kind] = {"nodes": len(members), "ms": ms, "percent": _pct(ms, self.kernel_ms)}
        return out

    def by_role(self) -> dict[str, float]:
        """ms per run per role (conv, gemm, concat, add, pool, batchnorm, activation, convert, layout, other)."""
        out: dict[str, float] = defaultdict(float)
        for n in self.nodes:
            out[role_of(n.op_type)] += n.ms
        return dict(sorted(out.items(), key=lambda kv: -kv[1]))

    def layout(self) -> dict:
        """The layout transposes/reorders ORT inserted: count, ms per run, per op type."""
        members = [n for n in self.nodes if n.kind == "layout"]
        per_op: dict[str, dict] = {}
        for n in members:
            entry = per_op.setdefault(n.op_type, {"nodes": 0, "ms": 0.0})
            entry["nodes"] += 1
            entry["ms"] += n.ms
        ms = sum(n.ms for n in members)
        return {"nodes": len(members), "ms": ms, "percent": _pct(ms, self.kernel_ms), "ops": per_op}

    def float_compute(self) -> list[NodeTime]:
        """Compute nodes that ran a float kernel (slowest first): in an int8 file, what was not quantized."""
        return [n for n in self.nodes if n.kind == "float" and role_of(n.op_type) not in ("other",)]

    def top(self, n: int = 15) -> list[NodeTime]:
        return self.nodes[:n]

    def to_dict(self, top: int = 15) -> dict:
        return {
            "path": self.path, "runs": self.runs, "statistic": self.statistic, "threads": self.threads, "session_config": dict(self.session_config),
            "run_ms": self.run_ms, "run_ms_min": min(self.run_ms_each) if self.run_ms_each else None,
            "kernel_ms": self.kernel_ms, "nodes": len(self.nodes),
            "by_kind": self.by_kind(), "by_role": self.by_role(), "layout": self.layout(),
            "ops": [o.to_dict() for o in self.ops],
            "top_nodes": [n.to_dict() for n in self.top(top)],
        }


@dataclass
class OpDelta:
    """One op type (or role) in a pair of profiles: ms per run in each, b - a, and a/b (> 1: b is faster)."""

    name: str
    a_ms: float
    b_ms: float

    @property
    def delta_ms(self) -> float:
        return self.b_ms - self.a_ms

    @property
    def speedup(self) -> float | None:
        return self.a_ms / self.b_ms if self.b_ms > 0 else None

    def to_dict(self) -> dict:
        return {"name": self.name, "a_ms": self.a_ms, "b_ms": self.b_ms, "delta_ms": self.delta_ms,
                "speedup": self.speedup}


@dataclass
class NodeDelta:
    name: str
    a_op: str
    b_op: str
    a_ms: float
    b_ms: float

    def to_dict(self) -> dict:
        return {"name": self.name, "a_op": self.a_op, "b_op": self.b_op, "a_ms": self.a_ms, "b_ms": self.b_ms,
                "delta_ms": self.b_ms - self.a_ms, "speedup": self.a_ms / self.b_ms if self.b_ms > 0 else None}


@dataclass
class ProfileDiff:
    """File b against file a (typically a = fp32, b = int8)."""

    a: str
    b: str
    a_ms: float  # kernel ms per run
    b_ms: float
    ops: list[OpDelta]  # per op type, union of both; biggest loss (b - a) first
    roles: list[OpDelta]  # per role (conv, concat, layout, convert ...), biggest loss first
    nodes_matched: int
    slower_nodes: list[NodeDelta]  # nodes matched by name that take longer in b, biggest loss first

    @property
    def speedup(self) -> float | None:
        return self.a_ms / self.b_ms if self.b_ms > 0 else None

    def gains(self, by: str = "roles") -> list[OpDelta]:
        """Where b is faster, biggest gain first."""
        return sorted((d for d in getattr(self, by) if d.delta_ms < 0), key=lambda d: d.delta_ms)

    def losses(self, by: str = "roles") -> list[OpDelta]:
        """Where b is slower (including what only b has: conversions, layout), biggest loss first."""
        return sorted((d for d in getattr(self, by) if d.delta_ms > 0), key=lambda d: -d.delta_ms)

    def to_dict(self, top: int = 15) -> dict:
        return {
            "a": self.a, "b": self.b, "a_ms": self.a_ms, "b_ms": self.b_ms, "speedup": self.speedup,
            "ops": [d.to_dict() for d in self.ops], "roles": [d.to_dict() for d in self.roles],
            "gains": [d.to_dict() for d in self.gains()], "losses": [d.to_dict() for d in self.losses()],
            "nodes_matched": self.nodes_matched, "slower_nodes": [d.to_dict() for d in self.slower_nodes[:top]],
        }


def _pct(ms: float, total: float) -> float:
    return 100.0 * ms / total if total > 0 else 0.0


def _type_shape(entry) -> tuple[str, str]:
    if isinstance(entry, dict) and entry:
        dtype, shape = next(iter(entry.items()))
        return str(dtype), f"{dtype}[{','.join(str(d) for d in shape)}]" if isinstance(shape, list) else str(dtype)
    return "", ""


def summarise_trace(events: list[dict], *, path: str = "", skip_runs: int = 1, threads: int | None = None,
                    session_config: dict[str, str] | None = None, statistic: str = "median") -> Profile:
    """A Profile from the events of an ORT profiling trace (its JSON list); the first `skip_runs`
    model runs are warm-up and left out. Each node's ms per run is the median (or mean) over the
    measured runs: on a shared machine the median ignores the runs another process interrupted.
    CheckFailed when the trace holds no measured run."""
    if statistic not in ("median", "mean"):
        raise BadInput(f"statistic must be median or mean, got {statistic!r}")
    runs = sorted((e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"),
                  key=lambda e: e.get("ts", 0))
    measured = runs[skip_runs:]
    if not measured:
        raise CheckFailed(f"ORT's profile of {path or 'the model'} holds {len(runs)} run(s): nothing to measure "
                          f"after {skip_runs} warm-up run(s)")
    starts = np.array([r["ts"] for r in measured], dtype=np.int64)
    ends = starts + np.array([r.get("dur", 0) for r in measured], dtype=np.int64)
    per_node: dict[str, dict] = {}
    first_run_order: dict[str, int] = {}
    for e in events:
        args = e.get("args") or {}
        if e.get("cat") != "Node" or not str(e.get("name", "")).endswith("_kernel_time") or "op_name" not in args:
            continue
        ts = int(e.get("ts", 0))
        i = int(np.searchsorted(starts, ts, side="right")) - 1
        if i < 0 or ts > ends[i]:
            continue  # warm-up run (or outside any run)
        name = _SUFFIX.sub("", str(e["name"]))
        entry = per_node.get(name)
        if entry is None:
            types = [_type_shape(t) for t in args.get("input_type_shape") or []]
            entry = per_node[name] = {
                "op": str(args["op_name"]), "provider": str(args.get("provider", "")),
                "types": [t for t, _ in types], "input": types[0][1] if types else "", "us": 0, "calls": 0,
            }
        entry["us"] += int(e.get("dur", 0))
        entry["calls"] += 1
        entry.setdefault("per_run", [0] * len(measured))[i] += int(e.get("dur", 0))
        if i == 0 and name not in first_run_order:
            first_run_order[name] = len(first_run_order)
    n = len(measured)
    average = np.median if statistic == "median" else np.mean
    nodes = [
        NodeTime(name=name, op_type=v["op"], kind=kind_of(v["op"], v["types"]), provider=v["provider"],
                 ms=float(average(v["per_run"])) / 1000.0, calls_per_run=v["calls"] / n, input=v["input"],
                 order=first_run_order.get(name, len(first_run_order)))
        for name, v in per_node.items()
    ]
    nodes.sort(key=lambda x: (-x.ms, x.order))
    kernel_ms = sum(x.ms for x in nodes)
    grouped: dict[str, list[NodeTime]] = defaultdict(list)
    for x in nodes:
        grouped[x.op_type].append(x)
    ops = []
    for op, members in grouped.items():
        ms = sum(m.ms for m in members)
        kinds = {m.kind for m in members}
        ops.append(OpTime(op, kinds.pop() if len(kinds) == 1 else "mixed", len(members), ms, _pct(ms, kernel_ms)))
    ops.sort(key=lambda o: -o.ms)
    run_each = [float(r.get("dur", 0)) / 1000.0 for r in measured]
    return Profile(path=path, runs=n, threads=threads, run_ms=float(average(run_each)), kernel_ms=kernel_ms,
                   run_ms_each=run_each, nodes=nodes, ops=ops, session_config=dict(session_config or {}),
                   statistic=statistic)




def profile_file(path, x: np.ndarray, *, threads: int | None = 2, runs: int = 20,
                 session_config: dict[str, str] | None = None, statistic: str = "median") -> Profile:
    """Profile `path` in ONNX Runtime (CPU) on input `x`: one warm-up run plus `runs` measured ones (profiled_runs).
    The session runs with spinning off plus `session_config`, or, when that is None, the options the file's metadata
    says it needs on every CPU (an int8 file with nodes kept in float: ORT must not quantize them again)."""
    path = Path(path)
    if runs < 1:
        raise BadInput(f"runs must be >= 1, got {runs}")
    if not path.is_file():
        raise BadInput(f"no such file: {path}")
    config = session_options(None, timing=True, extra=file_session_config(path) if session_config is None else session_config)
    events = profiled_runs(path, x, threads, config, runs)
    return summarise_trace(events, path=str(path), skip_runs=1, threads=threads, session_config=config,
                           statistic=statistic)


def profiled_runs(path: Path, x: np.ndarray, threads: int | None, config: dict[str, str], runs: int,
                  beside: dict | None = None) -> list[dict]:
    """ORT's trace of one warm-up and `runs` profiled calls of `path` on `x`, interleaved with the zero-argument
    calls in `beside` (another runtime timed on the same input); the trace is read and deleted, also on failure."""
    from edgekit.runtimes.ort import create_session
    from edgekit.runtimes.timer import interleaved

    session = create_session(path, "cpu", threads=threads, session_config=config, enable_profiling=True)
    events = None
    try:
        interleaved({str(path): session.timed_runner(x), **(beside or {})}, runs, warmup=1)
        events = _end_profiling(session)
    finally:
        if events is None:
            session.discard_profile()
    if not events:
        raise CheckFailed(f"ONNX Runtime wrote no profile for {path}")
    return events


def profile_files(paths, x: np.ndarray, *, threads: int | None = 2, runs: int = 20,
                  session_config: dict[str, str] | None = None, statistic: str = "median") -> dict[str, Profile]:
    """Profile several files interleaved (A B C A B C ...), so that drift and other processes on a
    shared machine hit them alike: {str(path): Profile}. One warm-up run each, then `runs` rounds.
    `session_config` as in profile_file (None: each file's own recorded options)."""
    from edgekit.runtimes.ort import create_session
    from edgekit.runtimes.timer import interleaved

    paths = [Path(p) for p in paths]
    if runs < 1:
        raise BadInput(f"runs must be >= 1, got {runs}")
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise BadInput(f"no such file: {', '.join(missing)}")
    if len({str(p) for p in paths}) != len(paths):
        raise BadInput("the same file was given twice")
    sessions: list = []
    profiles: dict[str, Profile] = {}
    try:
        configs = {}
        for p in paths:
            configs[str(p)] = session_options(None, timing=True,
                                             extra=file_session_config(p) if session_config is None else session_config)
            sessions.append(create_session(p, "cpu", threads=threads, session_config=configs[str(p)],
                                           enable_profiling=True))
        interleaved({str(p): s.timed_runner(x) for p, s in zip(paths, sessions)}, runs, warmup=1)
        for p, s in zip(paths, sessions):
            events = _end_profiling(s)
            if not events:
                raise CheckFailed(f"ONNX Runtime wrote no profile for {p}")
            profiles[str(p)] = summarise_trace(events, path=str(p), skip_runs=1, threads=threads,
                                               session_config=configs[str(p)], statistic=statistic)
    finally:
        for s in sessions:
            s.discard_profile()  # a no-op for the ones already read
    return profiles


def file_session_config(path) -> dict[str, str]:
    """The ORT session options an edgekit file records as needed on every CPU ({} for a foreign file)."""
    from edgekit.onnxfile import OnnxFile

    return OnnxFile.open(Path(path), check=False).session_config()


def _end_profiling(session) -> list[dict] | None:
    """End the session's profiling; the trace's events (its file deleted)."""
    # runtime.Session keeps the trace handling (temp prefix, deletion, atexit) in one place
    try:
        return session.profile_events() or None
    except Exception as exc:  # pragma: no cover - ORT failing to write its own trace
        raise CheckFailed(f"could not read ONNX Runtime's profile: {one_line(exc, 200)}") from exc


_NAME_NOISE = re.compile(r"(_nchwc|_token_\d+|_output_0|_quant|_dequant|_DequantizeLinear|_QuantizeLinear)+$")


def _match_key(name: str) -> str:
    return _NAME_NOISE.sub("", name)


def compare_profiles(a: Profile, b: Profile) -> ProfileDiff:
    """Where b gains and where it loses against a: per op type, per role, and per node matched by name.

    ORT names fused nodes differently in fp32 (NCHWc: `<output>_nchwc`) and int8 (NHWC:
    `<node>_token_N`) graphs, so the node match is best effort (`nodes_matched` says how many); the
    per-role rows (conv, gemm, concat, convert, layout ...) always line up."""
    def per(p: Profile, key) -> dict[str, float]:
        out: dict[str, float] = defaultdict(float)
        for n in p.nodes:
            out[key(n)] += n.ms
        return out

    def deltas(key) -> list[OpDelta]:
        da, db = per(a, key), per(b, key)
        rows = [OpDelta(k, da.get(k, 0.0), db.get(k, 0.0)) for k in set(da) | set(db)]
        return sorted(rows, key=lambda d: -d.delta_ms)

    index_a: dict[str, list[NodeTime]] = defaultdict(list)
    for n in a.nodes:
        index_a[_match_key(n.name)].append(n)
    matched: list[NodeDelta] = []
    for n in b.nodes:
        candidates = index_a.get(_match_key(n.name)) or []
        if len(candidates) == 1:
            m = candidates[0]
            matched.append(NodeDelta(n.name, m.op_type, n.op_type, m.ms, n.ms))
    slower = sorted((d for d in matched if d.b_ms > d.a_ms), key=lambda d: -(d.b_ms - d.a_ms))
    return ProfileDiff(a=a.path, b=b.path, a_ms=a.kernel_ms, b_ms=b.kernel_ms,
                       ops=deltas(lambda n: n.op_type), roles=deltas(lambda n: role_of(n.op_type)),
                       nodes_matched=len(matched), slower_nodes=slower)
