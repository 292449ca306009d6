"""Running a model on a batch of inputs: one ONNX Runtime runner, one PyTorch runner, one batching rule.

The batching rule (edgekit/ondevice/sessions.py, the device check's own): inputs are fed exactly `batch` samples
at a time; a last chunk that is short is padded with copies of its last sample, and only the real rows are kept.
A static batch axis is honoured, and a dynamic one really sees `batch`.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Callable

import numpy as np

# The batching rule and the batch sizes a file is checked at are the device check's own (one rule, host and board)
from edgekit.ondevice.sessions import DYNAMIC_LARGE_BATCH, batch_sizes_for, input_dtype_for, padded_batches  # noqa: F401

REFERENCE_BATCH = 32  # PyTorch runs in chunks of this many samples (bounded memory)


def run_batched(fn: Callable[[np.ndarray], list[np.ndarray]], inputs: np.ndarray, batch: int | None) -> list[np.ndarray]:
    """Every output of `fn` over `inputs`, fed by the batching rule, real rows only."""
    chunks = [[np.asarray(o)[:real] for o in fn(chunk)] for chunk, real in padded_batches(inputs, batch)]
    return [np.concatenate([c[i] for c in chunks]) for i in range(len(chunks[0]))]


def input_dtype(session) -> type:
    """numpy dtype of the session's first input (float16 models take float16)."""
    return input_dtype_for(session.input_type)


def batch_sizes(session) -> list[int]:
    """The batch sizes to exercise: the static one, or 1 and DYNAMIC_LARGE_BATCH (the device check's rule)."""
    return batch_sizes_for(session.input_shape[0])


def run_session(session, inputs: np.ndarray, batch: int | None) -> list[np.ndarray]:
    """All outputs of an edgekit runtime.Session on `inputs` (cast to the model's input dtype)."""
    name = session.input_name
    dtype = input_dtype(session)
    return run_batched(
        lambda x: session.run({name: np.ascontiguousarray(x.astype(dtype, copy=False))}), inputs, batch
    )


def top1(session, x: np.ndarray) -> np.ndarray:
    """The class each input of `x` gets from an ORT session's first output, at the session's largest batch."""
    return run_session(session, x, batch_sizes(session)[-1])[0].reshape(len(x), -1).argmax(axis=1)


def run_onnx(
    model: Path | bytes | object, inputs: np.ndarray, batch: int | None, session_config: dict[str, str] | None = None,
    device: str | None = None, threads: int | None = None,
) -> np.ndarray:
    """The first output of an ONNX file (or ModelProto, or bytes) on the CPU provider (of `device`: see
    runtime.create_session), on THREADS ORT threads (ORT's default when None; a device's worker keeps its own)."""
    from edgekit.runtimes.ort import create_session

    if not isinstance(model, (Path, bytes)):
        model = model.SerializeToString()
    session = create_session(model, "cpu", session_config=session_config, device=device, threads=threads)
    return run_session(session, inputs, batch)[0]


def every_output(
    path: Path, feeds: list[dict[str, np.ndarray]], *, optimization: str = "none",
    session_config: dict[str, str] | None = None, device: str | None = None,
) -> dict[str, list[np.ndarray]]:
    """{output name: [its value on each feed]} of the ONNX file at `path` on the CPU provider (of `device`, emulated
    where it is not this machine): what onnxruntime.quantization.qdq_loss_debug's collect_activations computes, through
    edgekit's own session (checked provider, the device's kernels)."""
    from edgekit.runtimes.ort import create_session

    session = create_session(Path(path), "cpu", optimization=optimization, session_config=session_config or None,
                             device=device)
    names = session.output_names
    collected: dict[str, list[np.ndarray]] = {name: [] for name in names}
    for feed in feeds:
        for name, value in zip(names, session.run(feed)):
            collected[name].append(value)
    return collected


def latency_ms(
    paths: dict[str, Path], x: np.ndarray, configs: dict[str, dict[str, str]] | None = None, rounds: int = 15,
    threads: int | None = None,
) -> dict[str, float]:
    """Median latency of each file at batch len(x) on the CPU provider, spinning off, interleaved A B C A B C ...
    (runtimes/timer.py): what the quantize budget and the sweep report beside accuracy."""
    from edgekit.runtimes.ort import NO_SPIN, create_session
    from edgekit.runtimes.timer import medians

    sessions = {label: create_session(path, "cpu", threads=threads,
                                      session_config={**NO_SPIN, **(configs or {}).get(label, {})})
                for label, path in paths.items()}
    return medians({label: s.timed_runner(x) for label, s in sessions.items()}, rounds)


def run_torch(model, inputs: np.ndarray, device: str = "cpu", dtype=None, batch: int = REFERENCE_BATCH) -> np.ndarray:
    """Logits of a PyTorch model in chunks of `batch` (float64 when dtype is torch.float64)."""
    import torch

    def forward(x: np.ndarray) -> list[np.ndarray]:
        t = torch.from_numpy(np.ascontiguousarray(x)).to(device)
        if dtype is not None:
            t = t.to(dtype)
        y = model(t)
        y = y[0] if isinstance(y, (tuple, list)) else y
        y = y.detach().cpu()
        return [y.double().numpy() if dtype is not None else y.float().numpy()]

    with torch.no_grad():
        outs = [forward(inputs[start : start + batch])[0] for start in range(0, len(inputs), batch)]
    return np.concatenate(outs)


@contextlib.contextmanager
def no_tf32():
    """PyTorch lets cuDNN convolutions use TF32 by default: not fp32, so not a reference."""
    import torch

    saved = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved
