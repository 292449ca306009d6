"""The one small interface a runtime's runner offers, whichever stage uses it: run on a batch, a timed single run,
and what the runtime actually executed. bench times `timed_runner`; verify compares what `run` returns.

Every runner comes from runtimes/factory.py open_runner: ONNX Runtime's is factory.OrtRunner (over
runtimes/ort.py's Session, on this machine or inside an emulated device), OpenVINO's is runtimes/openvino.py;
PyTorch eager on the CPU or a CUDA device is runtimes/torch_eager.py.
"""

from __future__ import annotations

from typing import Callable, Protocol

import numpy as np


class Runner(Protocol):
    runtime: str  # ort | openvino | torch
    device: str  # cpu | cuda

    def run(self, x: np.ndarray) -> list[np.ndarray]:
        """Every output, in the model's output order, for the batch `x`."""

    def timed_runner(self, x: np.ndarray) -> Callable[[], None]:
        """A zero-argument call that runs one inference on `x`, everything else prepared once: what bench times."""

    def executed(self) -> dict:
        """What the runtime actually executed, in its own terms (OpenVINO: {precision: compute layers})."""

    def close(self) -> None:
        """Release what the runner holds (an ORT session's profile trace, a device worker)."""
