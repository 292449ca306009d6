"""One factory for every way edgekit runs a model, and the one place that decides the session options a file needs.

`open_runner(path, runtime, provider, device, ...)` gives a runner with the interface of runtimes/runner.py:
`run(batch)`, `timed_runner(x)`, `executed()`, `close()`, for ONNX Runtime on a provider (on this machine, or
inside an emulated device), or OpenVINO on the CPU. `session_options(recipe, ...)` is the decision itself: what an
int8 file's recipe needs on every CPU (float nodes kept float), the exact-accumulation kernels where the file is
judged as another CPU computes it, and no thread spinning where it is timed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgekit.core.errors import BadInput
from edgekit.judge.targets import KEEP_FLOAT_SESSION, exact_session_for, merge_session_configs, session_config_for

KERNELS = ("default", "exact")  # ORT's default int8 kernels on this CPU, or exact int32 accumulation


def session_options(
    recipe: dict | None, *, kernels: str = "default", timing: bool = False, spin: bool = False,
    keep_float: bool = False, extra: dict[str, str] | None = None,
) -> dict[str, str]:
    """The ORT session options for a file of `recipe` (None: a float file) on this CPU.

    `kernels`: "exact" adds what makes ORT accumulate int8 exactly on a CPU whose default kernels can saturate
    (recorded per recipe); `timing`: the session is timed, so its pool does not spin between calls unless `spin`;
    `keep_float`: nodes reverted or kept in float between quantized ones (the fp32 fallback's trials, a debug
    search's groups) stay float: ORT's re-quantizing WeightBiasQuantization pass is off, as a file whose recipe
    records float nodes already says; `extra`: further entries (the gated kernels of a judgement), merged last."""
    from edgekit.runtimes.ort import NO_SPIN

    if kernels not in KERNELS:
        raise BadInput(f"unknown kernels {kernels!r}", hint=f"use one of {', '.join(KERNELS)}")
    return merge_session_configs(
        NO_SPIN if timing and not spin else None,
        session_config_for(recipe),
        exact_session_for(recipe) if kernels == "exact" else None,
        KEEP_FLOAT_SESSION if keep_float else None,
        extra,
    )


class OrtRunner:
    """ONNX Runtime as a runner: an edgekit Session (provider checked, no silent fallback) behind run/timed/executed."""

    runtime = "ort"

    def __init__(self, session, batch: int | None = None):
        self.session = session
        self.batch = batch
        self.device = session.ran_on

    def run(self, x: np.ndarray) -> list[np.ndarray]:
        from edgekit.runtimes.runners import run_session

        return run_session(self.session, x, self.batch)

    def timed_runner(self, x: np.ndarray):
        return self.session.timed_runner(x)

    def executed(self) -> dict:
        """{provider: {op type: nodes}} of the nodes that ran (a profiled session; {} otherwise)."""
        return self.session.node_placement()

    def close(self) -> None:
        self.session.discard_profile()


def open_runner(
    path: Path, runtime: str = "ort", provider: str = "cpu", device: str | None = None, *, recipe: dict | None = None,
    kernels: str = "default", timing: bool = False, spin: bool = False, threads: int | None = None,
    batch: int | None = None, allow_fallback: bool = False, profiling: bool = False, keep_float: bool = False,
):
    """A runner for the file at `path`: ONNX Runtime ("ort") on `provider` (of `device`: None is this machine), or
    OpenVINO ("openvino") on the CPU. A provider or runtime that cannot start is exit 3 (ProviderUnavailable)."""
    if runtime == "ort":
        from edgekit.runtimes.ort import create_session

        config = session_options(recipe, kernels=kernels, timing=timing, spin=spin, keep_float=keep_float)
        session = create_session(
            Path(path), provider, allow_fallback=allow_fallback, threads=threads, session_config=config or None,
            enable_profiling=profiling and device is None, device=device if provider == "cpu" else None,
        )
        return OrtRunner(session, batch)
    if runtime == "openvino":
        if device not in (None, "host"):
            raise BadInput(f"--device {device} runs ONNX Runtime only; drop --runtimes openvino")
        from edgekit.runtimes.openvino import OpenVinoRunner

        return OpenVinoRunner.load(Path(path), threads=threads, batch=batch)
    raise BadInput(f"unknown runtime {runtime!r}", hint="use ort or openvino")
