"""Latency, throughput, size and memory of ONNX files (and the PyTorch model they came from),
measured side by side in one run, interleaved so that drift on a shared machine hits every
candidate equally, against this machine's own fp32 matrix-multiply peak.

This module times and reports (the round-robin, paced runs, statistics, the machine's peak); what is timed,
one ready-to-call candidate per file x runtime, is candidates.py's. Its knobs are BenchOptions (bench/options.py)."""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from edgekit.bench.candidates import Candidate, file_candidates, torch_candidate
from edgekit.bench.options import BenchOptions
from edgekit.core.errors import BadInput, ProviderUnavailable
from edgekit.core.knobs import with_knobs
from edgekit.runtimes.timer import interleaved, paced, percentiles
from edgekit.runtimes.timer import rotation as interleaved_order  # noqa: F401  (its old name here)


@dataclass
class Timing:
    """Statistics of one candidate."""

    label: str
    kind: str
    provider: str
    file: str | None
    precision: str | None
    runs: int
    p50_ms: float
    p90_ms: float
    mean_ms: float
    throughput: float  # images per second
    file_bytes: int | None
    memory_bytes: int | None
    gflops: float | None  # 2 x MACs / latency (for int8: "effective" fp32-equivalent)
    peak_fraction: float | None
    speedup: float | None = None  # baseline p50 / this p50
    size_ratio: float | None = None  # baseline bytes / these bytes
    runtime: str = "ort"  # ort | openvino | torch
    executed_precisions: dict[str, int] | None = None  # OpenVINO: {runtime precision: compute layers}
    runtime_config: dict | None = None
    paced_p50_ms: float | None = None  # one inference every `interval_ms` (a camera's pace), not back to back
    paced_p90_ms: float | None = None


@dataclass
class BenchReport:
    threads: int
    batch: int
    warmup: int
    spin: bool
    machine: dict
    sgemm_gflops: float
    baseline: str
    timings: list[Timing]
    skipped: list[str]
    order: list[str]
    runtimes: list[str] = field(default_factory=lambda: ["ort"])
    runtime_versions: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    interval_ms: float | None = None
    profiles: dict[str, dict] = field(default_factory=dict)  # ORT CPU files: per-op-type and per-node profile
    profile_diffs: list[dict] = field(default_factory=list)  # each file against the first: where it gains and loses
    profile_objects: dict = field(default_factory=dict, repr=False)  # the Profile objects, for the plot
    side_by_side: dict[str, dict] = field(default_factory=dict)  # with openvino: ORT and OpenVINO per layer (layers.py)
    side_objects: dict = field(default_factory=dict, repr=False)  # the SideBySide objects, for the table and plot
    verdict: dict | None = None  # the fastest runtime whose outputs pass, per file (verdict.py)
    periodic: list[dict] = field(default_factory=list)  # --interval: ORT spinning off/on and OpenVINO, paced (periodic.py)

    def to_dict(self) -> dict:
        objects, self.profile_objects = self.profile_objects, {}
        sides, self.side_objects = self.side_objects, {}
        try:
            data = asdict(self)
        finally:
            self.profile_objects, self.side_objects = objects, sides
        del data["profile_objects"], data["side_objects"]
        data["order"] = self.order[: 3 * max(1, len(self.timings))]  # the pattern, not every run
        return data


def machine_info() -> dict:
    """CPU model, cores and the flags that matter for int8 kernels, and the recipe `auto` picks here."""
    from edgekit.core.provenance import this_cpu
    from edgekit.judge.targets import auto_target

    cpu = this_cpu()
    return {**cpu.to_dict(), "cpu": cpu.model, "cores": os.cpu_count(), "int8_target": auto_target(cpu)}


def sgemm_gflops(threads: int, n: int = 2048, repeats: int = 5) -> float:
    """This machine's fp32 matrix-multiply throughput with `threads` threads (best of `repeats`)."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        generator = torch.Generator().manual_seed(0)
        a = torch.randn(n, n, generator=generator)
        b = torch.randn(n, n, generator=generator)
        torch.mm(a, b)
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            torch.mm(a, b)
            best = min(best, time.perf_counter() - start)
    finally:
        torch.set_num_threads(previous)
    return 2 * n**3 / best / 1e9


def bench(
    files: list[Path],
    options: BenchOptions | None = None,
    *,
    on_progress: Callable[[int, int], None] | None = None,
    **knobs,
) -> BenchReport:
    """Time every file in every runtime (x provider for ONNX Runtime), interleaved in one round-robin;
    ratios against the first file, or PyTorch with `with_torch`. `runtimes`: ort (default), openvino.
    OPTIONS (BenchOptions) with any keyword KNOBS replaced: `bench(files, runs=3)` is
    `bench(files, BenchOptions(runs=3))`."""
    o = with_knobs(BenchOptions, options, knobs)
    providers, threads, batch, warmup, runs, seconds = o.providers, o.threads, o.batch, o.warmup, o.runs, o.seconds
    with_torch, spin, runtimes, interval_ms, profile = o.with_torch, o.spin, o.runtimes, o.interval_ms, o.profile
    from edgekit.runtimes.openvino_model import parse_runtimes
    from edgekit.runtimes.ort import parse_providers

    if not files:
        raise BadInput("no ONNX files to benchmark", hint="edgekit bench FILE.onnx [FILE.onnx ...]")
    real = [os.path.realpath(f) for f in files]
    if len(set(real)) != len(real):
        raise BadInput("the same file is listed twice", hint="list each file once")
    if batch < 1 or warmup < 0 or runs < 1:
        raise BadInput("--batch and --runs must be at least 1 and --warmup at least 0")
    runtime_names = parse_runtimes(runtimes)  # exit 3 now if openvino is asked for and absent
    threads = threads or os.cpu_count() or 1
    explicit = providers is not None
    if explicit and "ort" not in runtime_names:
        raise BadInput("--providers chooses ONNX Runtime's execution providers", hint="add ort to --runtimes, or drop --providers")
    provider_names = parse_providers(",".join(providers)) if providers else parse_providers(None)
    skipped: list[str] = []
    candidates: list[Candidate] = []
    first_meta = None
    for i, path in enumerate(files):
        made, meta = file_candidates(Path(path), runtime_names, provider_names, threads, batch, skipped, explicit, spin)
        candidates.extend(made)
        if i == 0:
            first_meta = meta
    if with_torch:
        candidates.insert(0, torch_candidate(Path(files[0]), first_meta, threads, batch))
    if not candidates:
        raise ProviderUnavailable("nothing could be timed: " + "; ".join(skipped))
    labels = [c.label for c in candidates]
    if len(set(labels)) != len(labels):  # two files of one name in different folders: label them by path
        for c in candidates:
            if c.file and labels.count(c.label) > 1:
                c.label = c.label.replace(Path(c.file).name, str(c.file), 1)
        labels = [c.label for c in candidates]
    by_label = {c.label: c for c in candidates}
    samples, order = interleaved({c.label: c.run for c in candidates}, runs, warmup=warmup, seconds=seconds,
                                 on_progress=on_progress)
    for label, ms in samples.items():
        by_label[label].samples_ms.extend(ms)
    if interval_ms:
        for label, ms in paced({c.label: c.run for c in candidates}, min(runs, 50), interval_ms).items():
            by_label[label].paced_ms.extend(ms)
    peak = sgemm_gflops(threads)
    timings = [_timing(c, batch, peak) for c in candidates]
    base = timings[0]
    for t in timings:
        t.speedup = base.p50_ms / t.p50_ms
        t.size_ratio = (base.file_bytes / t.file_bytes) if base.file_bytes and t.file_bytes else None
    report = BenchReport(
        threads=threads, batch=batch, warmup=warmup, spin=spin, machine=machine_info(), sgemm_gflops=peak,
        baseline=base.label, timings=timings, skipped=skipped, order=order, runtimes=runtime_names,
        runtime_versions=_runtime_versions(runtime_names), notes=_runtime_notes(runtime_names), interval_ms=interval_ms,
    )
    if interval_ms:
        from edgekit.bench.periodic import periodic

        report.periodic = [r.to_dict() for r in periodic([Path(f) for f in files], runtime_names, threads=threads,
                                                         batch=batch, interval_ms=interval_ms, frames=min(runs, 50))]
    if any(t.kind == "onnx" for t in timings):
        from edgekit.bench.verdict import fastest_passing

        report.verdict = fastest_passing(timings, batch=batch, threads=threads)
    if profile:
        _profile_into(report, [Path(f) for f in files], threads, batch, min(runs, 20))
        if "openvino" in runtime_names:
            _side_by_side_into(report, [Path(f) for f in files], threads, batch, min(runs, 20))
    return report


def _side_by_side_into(report: BenchReport, files: list[Path], threads: int, batch: int, runs: int) -> None:
    """ORT's per-node profile and OpenVINO's per-layer counters of each file, on the same input, aligned by name."""
    from edgekit.bench.layers import side_by_side
    from edgekit.onnxfile.artifact import load_onnx
    from edgekit.onnxfile.graph import input_spec

    for path in files:
        spec = input_spec(load_onnx(path, check=False), path)
        x = np.random.default_rng(0).standard_normal([batch, *spec.chw]).astype(np.float32)
        sides = side_by_side(path, x, threads=threads, runs=runs)
        report.side_objects[path.name] = sides
        report.side_by_side[path.name] = sides.to_dict()


def _profile_into(report: BenchReport, files: list[Path], threads: int, batch: int, runs: int) -> None:
    """ORT's per-node profile of each file on the CPU, interleaved; each file compared with the first."""
    from edgekit.onnxfile.graph import input_spec
    from edgekit.onnxfile.artifact import load_onnx
    from edgekit.bench.profile import compare_profiles, profile_files

    spec = input_spec(load_onnx(files[0], check=False), files[0])
    x = np.random.default_rng(0).standard_normal([batch, *spec.chw]).astype(np.float32)
    profiles = profile_files(files, x, threads=threads, runs=runs)
    report.profile_objects = {Path(k).name: v for k, v in profiles.items()}
    report.profiles = {name: p.to_dict() for name, p in report.profile_objects.items()}
    names = list(report.profile_objects)
    report.profile_diffs = [
        {"baseline": names[0], "file": n, **compare_profiles(report.profile_objects[names[0]], report.profile_objects[n]).to_dict()}
        for n in names[1:]
    ]


def _runtime_versions(runtimes: list[str]) -> dict[str, str]:
    import onnxruntime

    versions = {"onnxruntime": onnxruntime.__version__}
    if "openvino" in runtimes:
        from edgekit.runtimes.openvino_model import openvino_version

        versions["openvino"] = openvino_version() or "unknown"
    return versions


def _runtime_notes(runtimes: list[str]) -> list[str]:
    if "openvino" not in runtimes:
        return []
    from edgekit.runtimes.openvino_model import DEFAULT_PRECISION_HINT, default_precision_hint

    own = default_precision_hint()
    notes = [
        f"OpenVINO runs on the CPU with one stream, the LATENCY hint and inference precision {DEFAULT_PRECISION_HINT} "
        "(int8 layers of a quantized file still run in int8); 'executed' is what its compiled graph ran in"
    ]
    if own and own != DEFAULT_PRECISION_HINT:
        notes.append(
            f"OpenVINO's own default on this CPU is {own}: it would run an fp32 file in {own}, not what the file says"
        )
    return notes


def _timing(c: Candidate, batch: int, peak: float) -> Timing:
    p50, p90, mean = percentiles(c.samples_ms)
    paced = percentiles(c.paced_ms)[:2] if c.paced_ms else (None, None)
    gflops = 2 * c.macs * batch / (p50 / 1000) / 1e9 if c.macs else None
    return Timing(
        label=c.label, kind=c.kind, provider=c.provider, file=c.file, precision=c.precision, runs=len(c.samples_ms),
        runtime=c.runtime, executed_precisions=c.executed_precisions, runtime_config=c.runtime_config,
        p50_ms=p50, p90_ms=p90, mean_ms=mean, throughput=batch / (mean / 1000), file_bytes=c.file_bytes,
        memory_bytes=c.memory_bytes, gflops=gflops, peak_fraction=(gflops / peak) if gflops and c.provider == "cpu" else None,
        paced_p50_ms=paced[0], paced_p90_ms=paced[1],
    )
