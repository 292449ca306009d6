"""OpenVINO on the device: the bundle's .onnx compiled for the CPU as edgekit's bench and verify compile it (one
stream, LATENCY hint, f32 inference precision: the file's own arithmetic), shaped like an onnxruntime session
(get_inputs(), run(None, feed)) so that check.py runs it with the same batching, gates and golden outputs.
The device side's only OpenVINO calls; edgekit's own are in edgekit/runtimes/openvino*.py. openvino is optional.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

COMPILE_CONFIG = {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1, "INFERENCE_PRECISION_HINT": "f32"}
_ORT_TYPES = {"f32": "tensor(float)", "f16": "tensor(float16)"}


def openvino_missing() -> str | None:
    """None when `import openvino` works here, else why not (one line)."""
    try:
        import openvino  # noqa: F401
    except ImportError:
        return "openvino not installed here"
    except Exception as exc:  # installed but broken: a missing shared library, an ABI mismatch
        text = next((line for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        return f"openvino cannot be imported here: {text[:200]}"
    return None


class _Input:
    def __init__(self, name: str, shape: list, type_: str):
        self.name, self.shape, self.type = name, shape, type_


class OpenVinoSession:
    """An .onnx compiled by OpenVINO for this CPU; a dynamic batch axis stays dynamic (None in get_inputs())."""

    def __init__(self, path: Path):
        import openvino as ov

        core = ov.Core()
        model = core.read_model(str(path))
        if len(model.inputs) != 1:
            raise ValueError(f"{Path(path).name} has {len(model.inputs)} inputs; the check feeds one image input")
        port = model.inputs[0]
        shape = port.get_partial_shape()
        self._inputs = [_Input(port.get_any_name(),
                               [d.get_length() if d.is_static else None for d in shape],
                               _ORT_TYPES.get(port.get_element_type().get_type_name(), "tensor(float)"))]
        self.compiled = core.compile_model(model, "CPU", dict(COMPILE_CONFIG))
        self.version = str(ov.get_version())
        self._request = self.compiled.create_infer_request()

    def get_inputs(self) -> list[_Input]:
        return list(self._inputs)

    def run(self, _output_names, feed: dict) -> list[np.ndarray]:
        """Every output for the one input in `feed`, in the model's output order (onnxruntime's run signature)."""
        (x,) = feed.values()
        result = self._request.infer({0: np.ascontiguousarray(x)})
        return [np.array(result[output]) for output in self.compiled.outputs]


def openvino_session(path: Path, _provider: str | None = None, _config: dict | None = None) -> OpenVinoSession:
    """check.py's OpenVINO factory (its ORT factory's signature; ORT's session options do not apply)."""
    return OpenVinoSession(Path(path))
