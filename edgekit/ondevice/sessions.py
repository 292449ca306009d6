"""Running a model on the device: ONNX Runtime's provider names, a session that really runs where it was asked
to, and the one batching rule. One copy: edgekit's runtimes (runtimes/ort.py, runtimes/runners.py) import the
provider table, the name parsing, the batching and the batch sizes from here, so a file is run the same way on the
host and on the board. numpy and onnxruntime only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np

PROVIDERS = {
    "cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider",
    "openvino": "OpenVINOExecutionProvider", "coreml": "CoreMLExecutionProvider", "nnapi": "NnapiExecutionProvider",
    "xnnpack": "XnnpackExecutionProvider", "qnn": "QNNExecutionProvider", "dml": "DmlExecutionProvider",
    "rocm": "ROCMExecutionProvider", "acl": "ACLExecutionProvider", "armnn": "ArmNNExecutionProvider",
}
DYNAMIC_LARGE_BATCH = 8  # a dynamic batch axis is exercised at batch 1 and at this batch, on the host and the board


class ProviderNotStarted(Exception):
    """A requested execution provider (or runtime) did not start here (exit 3)."""


def provider_name(short: str) -> str:
    """'cuda' -> 'CUDAExecutionProvider'; a full name (or one this table does not know) is kept as given."""
    name = short.strip()
    return PROVIDERS.get(name.lower(), name)


def short_name(name: str) -> str:
    """'CUDAExecutionProvider' (any case) or 'cuda' -> 'cuda'; a name this table does not know, lower-cased."""
    key = name.strip().lower()
    return next((k for k, v in PROVIDERS.items() if v.lower() == key), key)


def parse_providers(spec: str | None) -> list[str]:
    """'cpu,cuda' -> full ORT names, each once; 'available' -> every provider this onnxruntime build has."""
    if not spec:
        return [PROVIDERS["cpu"]]
    if spec.strip().lower() == "available":
        import onnxruntime as ort

        return list(ort.get_available_providers())
    names = []
    for part in spec.split(","):
        if part.strip() and provider_name(part) not in names:
            names.append(provider_name(part))
    return names


def ort_session(path: Path, provider: str, config: dict):
    """An onnxruntime session on `provider` (full name) that really runs there; else ProviderNotStarted."""
    import contextlib
    import io

    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    for key, value in config.items():
        options.add_session_config_entry(key, value)
    if provider != PROVIDERS["cpu"] and hasattr(ort, "preload_dlls"):
        with contextlib.suppress(Exception), contextlib.redirect_stdout(io.StringIO()):
            ort.preload_dlls()  # onnxruntime-gpu finds pip-installed CUDA libraries only after this
    if provider not in ort.get_available_providers():
        raise ProviderNotStarted(f"{provider} is not in this onnxruntime build ({', '.join(ort.get_available_providers())})")
    chain = [provider] if provider == PROVIDERS["cpu"] else [provider, PROVIDERS["cpu"]]
    with contextlib.redirect_stdout(io.StringIO()):
        session = ort.InferenceSession(str(path), sess_options=options, providers=chain)
    if provider not in session.get_providers():
        raise ProviderNotStarted(f"{provider} did not start (onnxruntime runs this session on {session.get_providers()})")
    return session


def padded_batches(inputs: np.ndarray, batch: int | None) -> Iterator[tuple[np.ndarray, int]]:
    """The batching rule: (chunk of exactly `batch` samples, how many of them are real); a short last chunk is
    padded with copies of its last sample; None: everything at once."""
    if batch is None:
        yield inputs, len(inputs)
        return
    for start in range(0, len(inputs), batch):
        chunk = inputs[start : start + batch]
        real = len(chunk)
        if real < batch:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch - real, axis=0)])
        yield chunk, real


def batch_sizes_for(first_dim) -> list[int]:
    """The batch sizes a file is checked at: its static batch, or 1 and DYNAMIC_LARGE_BATCH for a dynamic one."""
    return [int(first_dim)] if isinstance(first_dim, int) and first_dim > 0 else [1, DYNAMIC_LARGE_BATCH]


def batch_sizes(session) -> list[int]:
    """batch_sizes_for the first input of an onnxruntime-like session (get_inputs())."""
    return batch_sizes_for(session.get_inputs()[0].shape[0])


def input_dtype_for(ort_type: str) -> type:
    """numpy dtype of a model input of ORT type `ort_type` (float16 models take float16)."""
    return np.float16 if ort_type == "tensor(float16)" else np.float32


def run_model(session, inputs: np.ndarray, batch: int) -> np.ndarray:
    """The first output of an onnxruntime-like session (get_inputs(), run(None, feed)), fed by the batching rule."""
    meta = session.get_inputs()[0]
    dtype = input_dtype_for(meta.type)
    outs = []
    for chunk, real in padded_batches(inputs, batch):
        got = session.run(None, {meta.name: np.ascontiguousarray(chunk.astype(dtype))})[0]
        outs.append(np.asarray(got)[:real])
    return np.concatenate(outs).astype(np.float32)


def first_line(exc: BaseException, limit: int = 300) -> str:
    lines = [line for line in str(exc).splitlines() if line.strip()]
    return (lines[0] if lines else type(exc).__name__)[:limit]
