"""OpenVINO's runner on the CPU (runtimes/runner.py's interface), over openvino_model.OpenVinoModel: the file
compiled once per batch size, its outputs on a batch, a reusable timed call, and the precisions its compiled
graph really ran in."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from edgekit.runtimes.openvino_model import OpenVinoModel, precision_summary


@dataclass
class OpenVinoRunner:
    model: OpenVinoModel
    runtime: str = "openvino"
    device: str = "cpu"

    @classmethod
    def load(cls, path: Path, threads: int | None = None, batch: int | None = None) -> "OpenVinoRunner":
        """`path` compiled for the CPU with `threads` threads and its dynamic batch fixed to `batch` (OpenVinoModel.load)."""
        return cls(OpenVinoModel.load(path, threads=threads, batch=batch))

    def run(self, x: np.ndarray) -> list[np.ndarray]:
        return self.model.run(x)

    def timed_runner(self, x: np.ndarray) -> Callable[[], None]:
        return self.model.timed_runner(x)

    def executed(self) -> dict[str, int]:
        """{runtime precision: compute layers}, e.g. {"u8": 22, "f32": 2}."""
        return self.model.executed_precisions()

    def close(self) -> None:
        """Nothing to end: the compiled model is freed with the runner."""

    @property
    def config(self) -> dict:
        """The compiled model's threads, streams and precision hint."""
        return self.model.config

    def describe(self) -> str:
        """One line for a report: the OpenVINO version and what it executed."""
        return f"OpenVINO {self.model.version} executed: {precision_summary(self.executed())}"
