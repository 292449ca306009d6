"""OpenVINO as a second runtime for the same .onnx files (an optional extra: pip install 'edgekit[openvino]').

The one place that imports openvino, lazily: `edgekit --help` and every ONNX Runtime path never
touch it, and asking for it where it is not installed is EnvironmentUnavailable (exit 3) with the
one line that says how to get it.

Models are compiled for the CPU with one stream, the LATENCY hint and the given threads (what
`bench` compares with ONNX Runtime). OpenVINO's CPU plugin picks its own inference precision:
on a CPU with bf16 support (AMX, AVX512_BF16) it runs an fp32 model in bfloat16 unless told
otherwise, which is not what the file says. edgekit asks for f32 by default (int8 layers of a
quantized file still run in int8), and `executed_precisions()` reads what really ran from the
compiled model's runtime graph.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from edgekit.core.errors import BadInput, CheckFailed, EnvironmentUnavailable, one_line

NOT_INSTALLED = "OpenVINO is not installed: pip install 'edgekit[openvino]'"
DEVICE = "CPU"
# Precision hints OpenVINO's CPU plugin takes; None leaves OpenVINO's own choice for this CPU.
PRECISION_HINTS = ("f32", "bf16", "f16")
DEFAULT_PRECISION_HINT = "f32"
# Runtime-graph nodes that move or hold data rather than compute: left out of the precision count.
NON_COMPUTE_LAYERS = frozenset({"Const", "Input", "Output", "Parameter", "Result", "Reshape", "Reorder"})
# OpenVINO's element types as edgekit names precisions (u8/i8 activations: int8 kernels).
_PRECISION_NAMES = {"u8": "int8", "i8": "int8", "f32": "fp32", "f16": "fp16", "bf16": "bf16"}
_NP_TYPES = {"f32": np.float32, "f16": np.float16, "f64": np.float64, "i64": np.int64, "i32": np.int32,
             "u8": np.uint8, "i8": np.int8}


def _import_openvino():
    """The openvino module, or EnvironmentUnavailable (exit 3) saying how to install it."""
    try:
        import openvino
    except ModuleNotFoundError:
        raise EnvironmentUnavailable(NOT_INSTALLED) from None
    except Exception as exc:  # installed but broken (a missing shared library, an ABI mismatch)
        raise EnvironmentUnavailable(
            f"OpenVINO is installed but cannot be imported: {one_line(exc, 200)}",
            hint="reinstall it: pip install --force-reinstall 'edgekit[openvino]'",
        ) from None
    return openvino


def openvino_available() -> bool:
    """True when `import openvino` works in this process."""
    try:
        _import_openvino()
    except EnvironmentUnavailable:
        return False
    return True


def openvino_version() -> str | None:
    """OpenVINO's version string (e.g. 2026.4.1-...), or None when it is not installed."""
    try:
        return str(_import_openvino().get_version())
    except EnvironmentUnavailable:
        return None


def require_openvino() -> None:
    """Raise EnvironmentUnavailable (exit 3) now, before any work, when OpenVINO cannot be used."""
    _import_openvino()


def _type_name(element_type) -> str:
    """'f32', 'u8', ... for an openvino Type (or whatever its properties return)."""
    name = getattr(element_type, "get_type_name", None)
    return str(name() if callable(name) else element_type)


def _static_dims(partial_shape) -> list[int | None]:
    return [int(d.get_length()) if d.is_static else None for d in partial_shape]


def precision_summary(executed: dict[str, int]) -> str:
    """'u8 22, f32 2' (most layers first): OpenVINO's own names for what its compute layers ran in."""
    return ", ".join(f"{p} {n}" for p, n in sorted(executed.items(), key=lambda kv: (-kv[1], kv[0])))


def dominant_precision(executed: dict[str, int]) -> str | None:
    """The edgekit name (int8, fp32, bf16, fp16) of the precision most compute layers ran in."""
    if not executed:
        return None
    top = max(executed.items(), key=lambda kv: (kv[1], kv[0]))[0]
    return _PRECISION_NAMES.get(top, top)


@dataclass
class OpenVinoModel:
    """An .onnx file compiled by OpenVINO for the CPU."""

    path: Path
    compiled: object  # openvino.CompiledModel
    version: str
    threads: int | None
    precision_hint: str | None  # what edgekit asked for (None: OpenVINO's default)
    input_name: str
    input_shape: list[int | None]  # None where dynamic (as compiled)
    input_dtype: type
    output_names: list[str]
    config: dict = field(default_factory=dict)  # the compiled model's properties that matter for timing
    _request: object | None = None

    @classmethod
    def load(
        cls,
        path: Path,
        threads: int | None = None,
        *,
        precision_hint: str | None = DEFAULT_PRECISION_HINT,
        batch: int | None = None,
        perf_count: bool = False,
    ) -> "OpenVinoModel":
        """Read and compile `path` for the CPU: one stream, LATENCY hint, `threads` inference threads.

        `precision_hint` is OpenVINO's INFERENCE_PRECISION_HINT (f32 by default: compute what the
        file says; None keeps OpenVINO's choice for this CPU, bf16 on CPUs that have it).
        `batch` fixes a dynamic batch axis to that size before compiling (static shapes run faster);
        a static batch is left as it is. `perf_count` turns on OpenVINO's per-layer counters (PERF_COUNT)."""
        from edgekit.onnxfile.artifact import check_readable_file

        ov = _import_openvino()
        path = check_readable_file(Path(path), "ONNX file")
        if precision_hint is not None and precision_hint not in PRECISION_HINTS:
            raise BadInput(f"unknown OpenVINO precision hint {precision_hint!r}", hint=f"use one of {', '.join(PRECISION_HINTS)}")
        core = ov.Core()
        try:
            model = core.read_model(str(path))
        except Exception as exc:
            raise BadInput(f"OpenVINO cannot read {path}: {one_line(exc, 300)}") from None
        if len(model.inputs) != 1:
            raise BadInput(f"{path} has {len(model.inputs)} inputs; edgekit runs classifiers with one image input")
        port = model.inputs[0]
        dims = _static_dims(port.get_partial_shape())
        if batch is not None and dims and dims[0] is None:
            shape = [batch, *dims[1:]]
            if None in shape:
                raise BadInput(f"{path} has dynamic dimensions {dims[1:]}; OpenVINO needs a static input size here")
            try:
                model.reshape({port.get_any_name(): shape})
            except Exception as exc:
                raise BadInput(f"OpenVINO cannot fix the batch of {path} to {batch}: {one_line(exc, 300)}") from None
            dims = shape
        config = {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1}
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        if precision_hint is not None:
            config["INFERENCE_PRECISION_HINT"] = precision_hint
        if perf_count:
            config["PERF_COUNT"] = True
        try:
            compiled = core.compile_model(model, DEVICE, config)
        except Exception as exc:
            raise BadInput(f"OpenVINO cannot compile {path} for the {DEVICE}: {one_line(exc, 300)}") from None
        input_type = _type_name(port.get_element_type())
        return cls(
            path=path,
            compiled=compiled,
            version=str(ov.get_version()),
            threads=threads,
            precision_hint=precision_hint,
            input_name=port.get_any_name(),
            input_shape=dims,
            input_dtype=_NP_TYPES.get(input_type, np.float32),
            output_names=[o.get_any_name() for o in model.outputs],
            config=_compiled_config(compiled),
        )

    @property
    def batch(self) -> int | None:
        """The static batch size, or None when the batch axis is dynamic."""
        return self.input_shape[0] if self.input_shape else None

    def _check_input(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x)
        want = self.input_shape
        if x.ndim != len(want) or any(w is not None and w != a for w, a in zip(want, x.shape)):
            shown = "(" + ", ".join("?" if w is None else str(w) for w in want) + ")"
            raise BadInput(f"input {self.input_name!r} has shape {tuple(x.shape)}; the model expects {shown}")
        return np.ascontiguousarray(x.astype(self.input_dtype, copy=False))

    def _infer_request(self):
        if self._request is None:
            self._request = self.compiled.create_infer_request()
        return self._request

    def run(self, x: np.ndarray) -> list[np.ndarray]:
        """Every output, in the model's output order, for one batch `x` (cast to the model's input dtype)."""
        x = self._check_input(x)
        request = self._infer_request()
        try:
            result = request.infer({0: x})
        except Exception as exc:
            raise CheckFailed(f"OpenVINO failed to run {self.path.name}: {one_line(exc, 300)}") from exc
        return [np.array(result[output]) for output in self.compiled.outputs]

    def timed_runner(self, x: np.ndarray) -> Callable[[], None]:
        """A zero-argument call that runs one synchronous inference on `x`: the infer request is
        created once and reused, the input tensor is set once (no copy per run), outputs stay in
        OpenVINO's buffers. What bench times."""
        ov = _import_openvino()
        x = self._check_input(x)
        request = self.compiled.create_infer_request()
        request.set_input_tensor(ov.Tensor(x, shared_memory=True))

        def run(request=request, _x=x):  # _x: the tensor shares x's memory, keep it alive
            request.infer()

        return run

    def executed_layers(self) -> dict[str, dict[str, int]]:
        """{layer type: {runtime precision: layers}} of the compiled model's runtime graph (what the
        CPU plugin really executes after its fusions), compute layers only."""
        layers: dict[str, Counter] = {}
        for op in self.compiled.get_runtime_model().get_ordered_ops():
            info = op.get_rt_info()
            layer_type = _rt_value(info, "layerType")
            if layer_type is None or layer_type in NON_COMPUTE_LAYERS:
                continue
            precision = _rt_value(info, "runtimePrecision") or "unknown"
            layers.setdefault(layer_type, Counter())[precision] += 1
        return {k: dict(v) for k, v in sorted(layers.items())}

    def executed_precisions(self) -> dict[str, int]:
        """{runtime precision: compute layers} as OpenVINO ran them, e.g. {"u8": 22, "f32": 2}: u8/i8
        are int8 kernels, bf16 means the fp32 file ran in bfloat16."""
        total: Counter = Counter()
        for precisions in self.executed_layers().values():
            total.update(precisions)
        return dict(total.most_common())

    def to_dict(self) -> dict:
        executed = self.executed_precisions()
        return {
            "runtime": "openvino", "version": self.version, "device": DEVICE, "file": str(self.path),
            "threads": self.threads, "precision_hint": self.precision_hint, "config": self.config,
            "input": {"name": self.input_name, "shape": self.input_shape, "dtype": np.dtype(self.input_dtype).name},
            "outputs": self.output_names, "executed_precisions": executed, "executed_layers": self.executed_layers(),
        }


def _rt_value(info, key: str) -> str | None:
    try:
        value = info[key]
    except (KeyError, IndexError, RuntimeError):
        return None
    astype = getattr(value, "astype", None)
    try:
        return str(astype(str)) if callable(astype) else str(value)
    except Exception:
        return str(value)


def _compiled_config(compiled) -> dict:
    """The properties of a compiled model that decide its speed and precision, as plain values."""
    out = {}
    for key in ("INFERENCE_PRECISION_HINT", "INFERENCE_NUM_THREADS", "NUM_STREAMS", "PERFORMANCE_HINT",
                "ENABLE_CPU_PINNING", "ENABLE_HYPER_THREADING", "EXECUTION_MODE_HINT"):
        try:
            value = compiled.get_property(key)
        except Exception:
            continue
        if key == "INFERENCE_PRECISION_HINT":
            value = _type_name(value)
        elif not isinstance(value, (bool, int, float, str)):
            value = str(value).split(".")[-1]
        out[key] = value
    return out


def default_precision_hint() -> str | None:
    """The inference precision OpenVINO's CPU plugin would pick on this machine for an fp32 model
    (bf16 on CPUs with bf16 support), or None when OpenVINO is not installed."""
    try:
        ov = _import_openvino()
        return _type_name(ov.Core().get_property(DEVICE, "INFERENCE_PRECISION_HINT"))
    except Exception:
        return None


# --- which runtimes a command runs ----------------------------------------------------------------

RUNTIMES = ("ort", "openvino")
_RUNTIME_ALIASES = {"ort": "ort", "onnxruntime": "ort", "openvino": "openvino", "ov": "openvino"}


def parse_runtimes(spec: str | list[str] | None) -> list[str]:
    """'ort,openvino' (or a list) -> ['ort', 'openvino'], in the order given, duplicates dropped;
    None or empty -> ['ort']. An unknown name is BadInput (exit 2); openvino asked for where it is not
    installed is EnvironmentUnavailable (exit 3), raised here, before any work."""
    items = spec.split(",") if isinstance(spec, str) else list(spec or [])
    names: list[str] = []
    for raw in items:
        name = _RUNTIME_ALIASES.get(str(raw).strip().lower())
        if not str(raw).strip():
            continue
        if name is None:
            raise BadInput(f"unknown runtime {str(raw).strip()!r}", hint=f"use one of {', '.join(RUNTIMES)}")
        if name not in names:
            names.append(name)
    if not names:
        names = ["ort"]
    if "openvino" in names:
        require_openvino()
    return names


def openvino_golden_check(path: Path, inputs, reference, tolerance, batch: int | None) -> dict:
    """The bundle's model in OpenVINO on this CPU against the same reference and gates (recorded in the
    manifest: which runtimes passed); {"available": False} without the optional extra."""
    from edgekit.judge.compare import compare_outputs
    from edgekit.runtimes.runners import run_batched

    if not openvino_available():
        return {"available": False, "reason": "OpenVINO is not installed (pip install 'edgekit[openvino]')"}
    model = OpenVinoModel.load(path, batch=batch or 1)
    got = run_batched(model.run, inputs, model.batch or batch or 1)[0]
    metrics = compare_outputs(reference, got, "output", tolerance)
    return {"available": True, "version": model.version, "passed": metrics.passed, "failures": metrics.failures,
            "sqnr_db": metrics.sqnr_db, "top1_agreement": metrics.top1_agreement,
            "executed": precision_summary(model.executed_precisions())}


# --- per-layer counters (PERF_COUNT) -----------------------------------------------------------------

@dataclass
class OpenVinoLayer:
    """One layer of OpenVINO's compiled (fused) graph with its measured time: median ms per run over the runs."""

    name: str
    layer_type: str
    exec_type: str  # the kernel, e.g. brgconv_avx512_amx_I8, jit_avx512_f32
    precision: str  # runtime precision (u8/i8: int8 kernels)
    ms: float
    original_names: list[str]  # the file's node names it was made of (rt_info originalLayersNames)

    def to_dict(self) -> dict:
        return {"name": self.name, "layer_type": self.layer_type, "exec_type": self.exec_type,
                "precision": self.precision, "ms": self.ms, "original_names": list(self.original_names)}


def layer_profiler(path: Path, x: np.ndarray, threads: int | None = None):
    """(run, layers): `run` is one synchronous inference on `x` with OpenVINO's PERF_COUNT on, recording each
    executed layer's real time; `layers(skip)` then gives the OpenVinoLayer list (median over the recorded runs,
    the first `skip` (warm-up) runs left out, slowest first). The compiled model is the one bench times (OpenVinoModel.load) plus PERF_COUNT."""
    model = OpenVinoModel.load(path, threads=threads, batch=int(np.asarray(x).shape[0]), perf_count=True)
    x = model._check_input(x)
    request = model.compiled.create_infer_request()
    times: dict[str, list[float]] = {}

    def run(request=request, _x=x):
        try:
            request.infer({0: _x})
        except Exception as exc:
            raise CheckFailed(f"OpenVINO failed to run {model.path.name}: {one_line(exc, 300)}") from exc
        for info in request.get_profiling_info():
            if str(info.status).endswith("EXECUTED") and not str(info.status).endswith("NOT_EXECUTED"):
                times.setdefault(info.node_name, []).append(info.real_time.total_seconds() * 1000)

    def layers(skip: int = 0) -> list[OpenVinoLayer]:
        out = []
        for op in model.compiled.get_runtime_model().get_ordered_ops():
            info = op.get_rt_info()
            name = op.get_friendly_name()
            if not times.get(name, [])[skip:]:
                continue
            originals = [n for n in (_rt_value(info, "originalLayersNames") or "").split(",") if n]
            out.append(OpenVinoLayer(name=name, layer_type=_rt_value(info, "layerType") or "?",
                                     exec_type=_rt_value(info, "primitiveType") or "?",
                                     precision=_rt_value(info, "runtimePrecision") or "?",
                                     ms=float(np.median(times[name][skip:])), original_names=originals or [name]))
        return sorted(out, key=lambda layer: -layer.ms)

    return run, layers
