"""PyTorch eager's runner (runtimes/runner.py's interface) on the CPU or a CUDA device: a model's outputs on a
batch in fp32 (TF32 off on CUDA: not fp32, so not a reference), and a timed call in inference mode."""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np

from edgekit.runtimes.runners import no_tf32, run_torch


@dataclass
class TorchRunner:
    model: object  # torch.nn.Module, on `device`
    device: str = "cpu"
    runtime: str = "torch"

    @classmethod
    @contextlib.contextmanager
    def on(cls, model, device: str) -> Iterator["TorchRunner"]:
        """A copy of `model` on `device` for the block (the caller's model stays where it is); the copy and the
        device's cached memory are freed after it."""
        import torch

        runner = cls(copy.deepcopy(model).to(device), device)
        try:
            yield runner
        finally:
            runner.model = None  # the copy's last reference: its memory is free before the cache is emptied
            if device == "cuda":
                torch.cuda.empty_cache()

    def run(self, x: np.ndarray) -> list[np.ndarray]:
        """The logits of `x` (runners.run_torch, in its reference-sized chunks), fp32."""
        with no_tf32() if self.device == "cuda" else contextlib.nullcontext():
            return [run_torch(self.model, x, device=self.device)]

    def timed_runner(self, x: np.ndarray) -> Callable[[], None]:
        """One forward pass on `x` (moved to the device once), in inference mode."""
        import torch

        tensor = torch.from_numpy(np.ascontiguousarray(x)).to(self.device)
        model = self.model

        def run():
            with torch.inference_mode():
                model(tensor)

        return run

    def executed(self) -> dict:
        return {"device": self.device, "precision": "fp32"}

    def close(self) -> None:
        """Nothing to end here: `TorchRunner.on` gives the model back to the CPU when its block ends."""
