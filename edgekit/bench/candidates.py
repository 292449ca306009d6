"""What bench times: one Candidate per file x runtime (ONNX Runtime on each provider, OpenVINO on the
CPU) and the PyTorch eager model, each a ready-to-call run() fed the same seeded input, with the facts
the report carries beside its times (file bytes, precision, MACs, the memory its session took)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from edgekit.core.errors import BadInput


@dataclass
class Candidate:
    """One thing to time: an ONNX file in a runtime (ONNX Runtime on a provider, or OpenVINO on the CPU),
    or the PyTorch eager model."""

    label: str
    kind: str  # onnx | torch
    provider: str
    run: Callable[[], None]
    runtime: str = "ort"  # ort | openvino | torch
    executed_precisions: dict[str, int] | None = None  # OpenVINO: what its compute layers really ran in
    runtime_config: dict | None = None  # OpenVINO: the compiled model's threads, streams, precision hint
    file: str | None = None
    file_bytes: int | None = None
    precision: str | None = None
    macs: int | None = None  # per image, from the model's architecture
    memory_bytes: int | None = None
    samples_ms: list[float] = field(default_factory=list)
    paced_ms: list[float] = field(default_factory=list)


def _rss_bytes() -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def macs_for(meta: dict | None) -> int | None:
    """Multiply-accumulates per image of the model a file came from (None for a foreign file)."""
    if not meta or "model" not in meta or "input_size" not in meta:
        return None
    from edgekit.models.zoo import model_macs

    return model_macs(str(meta["model"]), int(meta.get("num_classes") or 0) or None, int(meta["input_size"]))


def _label(path: Path, runtime: str, provider: str, runtimes: list[str], providers: list[str], suffix: str = "") -> str:
    """file.onnx, or file.onnx [ort cpu] / [openvino] / [x64quantprecision=1] when several are timed."""
    parts = [runtime] if len(runtimes) > 1 else []
    if runtime == "ort" and len(providers) > 1:
        parts.append(provider)
    if suffix:
        parts.append(suffix.strip())
    return f"{path.name} [{' '.join(parts)}]" if parts else path.name


def file_candidates(
    path: Path, runtimes: list[str], providers: list[str], threads: int, batch: int, skipped: list[str],
    explicit: bool, spin: bool,
):
    """The candidates of one file: each ORT provider, then OpenVINO, all fed the same seeded input."""
    from edgekit.onnxfile.artifact import artifact_bytes
    from edgekit.onnxfile import OnnxFile

    source = OnnxFile.open(path)  # validated once (external data inside its folder, checker) for every runtime
    meta, spec, precision = source.metadata, source.spec, source.precision
    del source
    if spec.batch and spec.batch != batch:
        raise BadInput(f"{path} has a static batch of {spec.batch}; --batch {batch} cannot run it", hint=f"use --batch {spec.batch}")
    if any(d is None for d in spec.chw):
        raise BadInput(f"{path} has dynamic dimensions {spec.chw}; bench needs a static input size")
    x = np.random.default_rng(0).standard_normal([batch, *spec.chw]).astype(np.float16 if spec.dtype == "float16" else np.float32)
    facts = dict(file=str(path), file_bytes=artifact_bytes(path), precision=precision, macs=macs_for(meta))
    recipe = (meta or {}).get("recipe") if precision == "int8" else None
    out = []
    if "ort" in runtimes:
        out += _onnx_candidates(path, x, facts, runtimes, providers, threads, skipped, explicit, spin, recipe)
    if "openvino" in runtimes:
        out.append(_openvino_candidate(path, x, facts, runtimes, providers, threads, batch))
    return out, meta


def _openvino_candidate(path: Path, x: np.ndarray, facts: dict, runtimes, providers, threads: int, batch: int) -> Candidate:
    """OpenVINO on the CPU, same threads and batch: one infer request reused, its input set once, synchronous infer."""
    from edgekit.runtimes.openvino import OpenVinoRunner

    before = _rss_bytes()
    runner = OpenVinoRunner.load(path, threads=threads, batch=batch)
    run = runner.timed_runner(x)
    run()
    after = _rss_bytes()
    return Candidate(
        label=_label(path, "openvino", "cpu", runtimes, providers), kind="onnx", provider="cpu", run=run,
        runtime="openvino", executed_precisions=runner.executed(), runtime_config=runner.config,
        memory_bytes=(after - before) if before is not None and after is not None else None, **facts,
    )


def _onnx_candidates(
    path: Path, x: np.ndarray, facts: dict, runtimes: list[str], providers: list[str], threads: int,
    skipped: list[str], explicit: bool, spin: bool, recipe: dict | None = None,
) -> list[Candidate]:
    """ORT on each provider, with the session options the file records as needed on every CPU; an int8
    file that this CPU's default kernels can saturate is timed a second time with exact accumulation
    (targets.exact_session_for: x64quantprecision=1, or s8s8 as written), so the safe option's cost is measured."""
    from edgekit.core.provenance import this_cpu
    from edgekit.judge.targets import exact_session_for, kernels_label, saturates_on
    from edgekit.runtimes.factory import open_runner, session_options
    from edgekit.runtimes.ort import cuda_device_available

    variants = [("", "default")]
    if recipe is not None and saturates_on(recipe, this_cpu()):
        variants.append((f" {kernels_label(exact_session_for(recipe))}", "exact"))
    out = []
    for provider, (suffix, kernels) in ((p, v) for p in providers for v in (variants if p == "cpu" else variants[:1])):
        if provider != "cpu" and not explicit and not cuda_device_available():
            skipped.append(f"{path.name} on {provider}: no CUDA device visible")
            continue
        before = _rss_bytes()
        # No spinning by default: an idle ORT thread pool otherwise busy-waits after each run and
        # steals the cores from the candidate timed next. It costs ORT ~5 % on back-to-back runs.
        runner = open_runner(path, "ort", provider, recipe=recipe, kernels=kernels, timing=True, spin=spin,
                             threads=threads)  # exit 3 if asked and absent
        run = runner.timed_runner(x)
        run()
        after = _rss_bytes()
        out.append(
            Candidate(
                label=_label(path, "ort", provider, runtimes, providers, suffix), kind="onnx", provider=provider, run=run,
                runtime_config=session_options(recipe, kernels=kernels) or None,
                memory_bytes=(after - before) if before is not None and after is not None else None, **facts,
            )
        )
    return out


def torch_candidate(path: Path, meta: dict | None, threads: int, batch: int) -> Candidate:
    """The PyTorch eager model the file was exported from (rebuilt from its metadata), same threads and batch."""
    import torch

    from edgekit.onnxfile.artifact import load_onnx
    from edgekit.models.reference import rebuild_reference
    from edgekit.runtimes.torch_eager import TorchRunner

    if not meta:
        raise BadInput(f"{path} has no edgekit metadata: --torch cannot rebuild its PyTorch model")
    model, _plan = rebuild_reference(path, load_onnx(path, check=False), meta)
    size = int(meta["input_size"])
    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))
    run = TorchRunner(model, "cpu").timed_runner(x.numpy())
    before = _rss_bytes()
    torch.set_num_threads(threads)
    run()
    after = _rss_bytes()
    return Candidate(
        label=f"PyTorch eager ({meta['model']})", kind="torch", provider="cpu", run=run, runtime="torch",
        precision="fp32", macs=macs_for(meta),
        memory_bytes=(after - before) if before is not None and after is not None else None,
    )
