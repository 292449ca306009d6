"""ONNX Runtime sessions, created in one place: provider selection and no silent fallback.

ORT asked for CUDA on a machine where CUDA cannot start prints an error and quietly runs on
CPU (docs/field-notes.md); every session made here is checked with `get_providers()`.
"""

from __future__ import annotations

import atexit
import contextlib
import io
import json
import os
import re
import tempfile
import weakref
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgekit.core.errors import BadInput, CheckFailed, ProviderUnavailable, one_line
from edgekit.core.provenance import cuda_device_available  # noqa: F401  (re-exported: stages ask the runtime)
from edgekit.ondevice.sessions import PROVIDERS as DEVICE_PROVIDERS
from edgekit.ondevice.sessions import short_name

# The providers edgekit runs, named as the device check names them (one table: edgekit/ondevice/sessions.py).
PROVIDERS = {name: DEVICE_PROVIDERS[name] for name in ("cpu", "cuda", "tensorrt")}


# For timing: an idle ORT thread pool that spins steals the cores from the session timed next (docs/field-notes.md).
NO_SPIN = {"session.intra_op.allow_spinning": "0", "session.inter_op.allow_spinning": "0"}

PROFILE_PREFIX = "edgekit-profile-"
STALE_PROFILE_SECONDS = 3600
# Sessions still recording a profile: ended (and their traces deleted) at interpreter exit, before
# ORT would write them to the temp folder while tearing the sessions down.
# (keyed by id: a Session is a dataclass, so not hashable)
_PROFILING: "weakref.WeakValueDictionary[int, Session]" = weakref.WeakValueDictionary()


@atexit.register
def _end_all_profiles() -> None:
    for session in list(_PROFILING.values()):
        with contextlib.suppress(Exception):
            session.discard_profile()


def _profile_prefix() -> str:
    """Where ORT writes a profiled session's trace: the temp folder, named with this process's id."""
    return os.path.join(tempfile.gettempdir(), f"{PROFILE_PREFIX}{os.getpid()}")


def sweep_stale_profiles(folder: str | None = None, max_age: float = STALE_PROFILE_SECONDS) -> list[Path]:
    """Delete traces a killed edgekit left (edgekit-profile-<pid>_*.json older than `max_age`, process gone)."""
    from edgekit.core.files import sweep_leftovers

    pattern = re.compile(re.escape(PROFILE_PREFIX) + r"(?P<pid>\d+)_.*\.json$")
    return sweep_leftovers(folder or tempfile.gettempdir(), pattern, want_dir=False, max_age=max_age)


def parse_providers(spec: str | None) -> list[str]:
    """'cpu,cuda' -> ['cpu', 'cuda']; None -> cpu plus cuda when a CUDA device is usable."""
    if spec is None or not spec.strip():
        return ["cpu", "cuda"] if cuda_device_available() else ["cpu"]
    names = []
    for raw in spec.split(","):
        name = short_name(raw)
        if name not in PROVIDERS:
            raise BadInput(f"unknown execution provider {raw.strip()!r}", hint=f"use one of {', '.join(PROVIDERS)}")
        if name not in names:
            names.append(name)
    return names


@dataclass
class Session:
    """An ORT session and the truth about where it runs."""

    session: object
    requested: str  # short name: cpu | cuda | tensorrt
    providers: list[str]  # what ORT reports it runs on
    fell_back: bool
    reason: str | None = None
    profiling: bool = False  # a trace is being recorded (create_session(enable_profiling=True))
    device: str | None = None  # the emulated device that runs it (None: this machine)

    @property
    def ran_on(self) -> str:
        """Short name of the provider that really runs the graph (TensorRT may fall back to CUDA, not CPU)."""
        if not self.fell_back:
            return self.requested
        return next((short_name(p) for p in self.providers if short_name(p) in PROVIDERS), "cpu")

    def node_placement(self) -> dict[str, dict[str, int]]:
        """{provider short name: {op type: nodes}} of the nodes that ran, from ORT's profile of the
        runs so far; ends profiling and deletes the trace. Empty when the session was not profiled."""
        events = self._end_profiling(read=True)
        return placement_from_trace(events) if events else {}

    def profile_events(self) -> list[dict]:
        """The trace of the runs so far, as ORT's events; ends profiling and deletes the trace ([] when the session
        was not profiled or ORT wrote nothing)."""
        return self._end_profiling(read=True) or []

    def discard_profile(self) -> None:
        """End profiling without reading the trace (ORT would write it when the session is freed)."""
        self._end_profiling(read=False)

    def __post_init__(self):
        if self.profiling:
            _PROFILING[id(self)] = self

    def _end_profiling(self, read: bool) -> list[dict] | None:
        if not self.profiling:
            return None
        self.profiling = False
        _PROFILING.pop(id(self), None)
        trace = self.session.end_profiling()
        if not trace:
            return None
        try:
            if read:
                with open(trace) as f:
                    return json.load(f)
        except (OSError, ValueError):
            return None
        finally:
            with contextlib.suppress(OSError):
                os.remove(trace)
        return None

    def __del__(self):
        with contextlib.suppress(Exception):
            self.discard_profile()

    @property
    def input_name(self) -> str:
        return self.session.get_inputs()[0].name

    @property
    def input_shape(self) -> list:
        """The first input's dimensions as ORT reports them (an int, a name, or None per axis)."""
        return list(self.session.get_inputs()[0].shape)

    @property
    def input_type(self) -> str:
        """The first input's ORT type, e.g. 'tensor(float)'."""
        return self.session.get_inputs()[0].type

    @property
    def output_names(self) -> list[str]:
        return [o.name for o in self.session.get_outputs()]

    def timed_runner(self, x: np.ndarray):
        """A zero-argument call that runs one inference on `x`, everything else prepared once (what the timer
        times). On the CPU the feed is built once and nothing is checked per call; on CUDA the input is bound on
        the device with I/O binding, outputs stay there, and each call synchronises, so the time is the GPU's."""
        if self.ran_on == "cpu":
            feed = {self.input_name: np.ascontiguousarray(x)}
            check_inputs(self.session, feed)
            session = self.session

            def run():
                session.run(None, feed)

            return run
        import onnxruntime as ort

        sess = self.session
        binding = sess.io_binding()
        binding.bind_ortvalue_input(self.input_name, ort.OrtValue.ortvalue_from_numpy(x, "cuda", 0))
        for output in sess.get_outputs():
            binding.bind_output(output.name, "cuda", 0)

        def run():
            sess.run_with_iobinding(binding)
            binding.synchronize_outputs()

        return run

    def check(self, inputs: dict[str, np.ndarray]) -> None:
        """Names, ranks, static dimensions and dtypes of `inputs` against the session's; BadInput naming what differs."""
        check_inputs(self.session, inputs)

    def run(self, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        check_inputs(self.session, inputs)
        try:
            return self.session.run(None, inputs)
        except Exception as exc:
            # the file loaded but does not run: a failed check (exit 1), not bad input
            raise CheckFailed(f"ONNX Runtime failed to run the model on {self.ran_on}: {one_line(exc, 300)}") from exc


def placement_from_trace(events: list[dict]) -> dict[str, dict[str, int]]:
    """Count the distinct nodes of an ORT profiling trace by the provider that ran them, per op type.

    Counted after ORT's graph optimisations (fused nodes, inserted layout and Memcpy nodes), so the
    totals differ from the file's node count; what matters is which provider ran them.
    """
    seen: dict[str, tuple[str, str]] = {}
    for event in events:
        args = event.get("args") or {}
        if event.get("cat") != "Node" or "provider" not in args:
            continue
        # one node gives several events (kernel time, fences); its name before the suffix is the node
        node = re.sub(r"_(kernel_time|fence_before|fence_after)$", "", str(event.get("name", "")))
        seen[node] = (args["provider"], str(args.get("op_name", "?")))
    placement: dict[str, dict[str, int]] = {}
    for provider, op in seen.values():
        ops = placement.setdefault(short_name(provider) if short_name(provider) in PROVIDERS else provider, {})
        ops[op] = ops.get(op, 0) + 1
    return placement


def check_inputs(session, inputs: dict[str, np.ndarray]) -> None:
    """Names, ranks, static dimensions and dtypes against the session's inputs; BadInput naming what differs."""
    expected = {i.name: i for i in session.get_inputs()}
    missing = sorted(set(expected) - set(inputs))
    extra = sorted(set(inputs) - set(expected))
    if missing or extra:
        raise BadInput(
            f"model inputs are {sorted(expected)}; got {sorted(inputs)}"
            + (f" (missing {missing})" if missing else "")
            + (f" (unexpected {extra})" if extra else "")
        )
    for name, array in inputs.items():
        meta = expected[name]
        shape = meta.shape
        dims_ok = len(shape) == array.ndim and all(
            not isinstance(d, int) or d == a for d, a in zip(shape, array.shape)
        )
        if not dims_ok:
            want = "(" + ", ".join(str(d) if isinstance(d, int) else str(d or "?") for d in shape) + ")"
            raise BadInput(f"input {name!r} has shape {tuple(array.shape)}; the model expects {want}")
        want_dtype = _ORT_DTYPES.get(meta.type)
        if want_dtype is not None and array.dtype != want_dtype:
            raise BadInput(f"input {name!r} has dtype {array.dtype}; the model expects {np.dtype(want_dtype).name}")


_ORT_DTYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(uint8)": np.uint8,
    "tensor(int8)": np.int8,
}


@contextmanager
def captured_stderr():
    """Capture what ORT's C++ logger writes to fd 2 while a session is created (its reason for a fallback)."""
    captured: list[str] = []
    try:
        saved = os.dup(2)
    except OSError:
        yield captured
        return
    with tempfile.TemporaryFile(mode="w+b") as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield captured
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            captured.append(sink.read().decode(errors="replace"))


def _reason_from_log(log: str, provider: str = "") -> str | None:
    lines = [ln.strip() for ln in log.splitlines() if ln.strip()]
    errors = [ln for ln in lines if re.search(r"\bE:|\bW:|error|fail", ln, re.IGNORECASE)]
    # TensorRT's failure is followed by CUDA's (its fallback): name the provider that was asked for.
    own = [ln for ln in errors if provider and provider.lower() in ln.lower()]
    pick = (own or errors or lines or [None])[-1]
    if pick is None:
        return None
    return re.sub(r"^.*?\] ", "", pick)[:300]


def _device_session(model, provider: str, device: str, optimization: str, session_config, optimized_model_path):
    """A Session inside an emulated device, or None where the device is this machine itself."""
    from edgekit.runtimes.devices import ready_device
    from edgekit.runtimes.emulated import emulated_session

    status = ready_device(device)
    if status.mode == "native":
        return None
    if provider != "cpu":
        raise BadInput(f"--device {device} runs ONNX Runtime's CPU provider only, not {provider}",
                       hint="drop --providers, or run on the host without --device")
    if optimized_model_path is not None:
        raise BadInput(f"--device {device}: an optimized model cannot be saved from an emulated device")
    session = emulated_session(status, model, session_config, optimization)
    return Session(session, "cpu", session.get_providers(), fell_back=False, device=device)


def create_session(
    model: Path | bytes,
    provider: str = "cpu",
    *,
    allow_fallback: bool = False,
    threads: int | None = None,
    optimized_model_path: Path | None = None,
    optimization: str = "all",
    session_config: dict[str, str] | None = None,
    enable_profiling: bool = False,
    provider_options: dict[str, str] | None = None,
    device: str | None = None,
) -> Session:
    """The one way edgekit creates an ORT session; a requested provider that did not start is
    ProviderUnavailable (exit 3) unless `allow_fallback`, and then the Session says so.

    `provider_options` go to the requested provider (e.g. {"use_tf32": "0"} for CUDA);
    `enable_profiling` traces the runs into a temp file that `Session.node_placement()` reads;
    `device`: a deployment CPU of edgekit.runtimes.devices (None or "host": this machine) whose ONNX Runtime
    kernels run the session, emulated where it is not this machine (CPU provider only, never profiled)."""
    import onnxruntime as ort

    provider = parse_providers(provider)[0]
    if device not in (None, "host"):
        emulated = _device_session(model, provider, device, optimization, session_config, optimized_model_path)
        if emulated is not None:
            return emulated
    wanted = PROVIDERS[provider]
    printed = io.StringIO()
    if provider != "cpu" and hasattr(ort, "preload_dlls"):
        # onnxruntime-gpu finds the CUDA/cuDNN libraries torch's wheel brings only after this.
        # It prints its warnings with print(): keep them off edgekit's stdout.
        try:
            with contextlib.redirect_stdout(printed):
                ort.preload_dlls()
        except Exception:
            pass
    options = ort.SessionOptions()
    # warnings too for GPU providers: why a provider did not start is logged at W/E level
    options.log_severity_level = 3 if provider == "cpu" else 2
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    options.graph_optimization_level = {
        "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[optimization]
    if optimized_model_path is not None:
        options.optimized_model_filepath = str(optimized_model_path)
    for key, value in (session_config or {}).items():
        options.add_session_config_entry(key, value)
    if enable_profiling:
        options.enable_profiling = True
        # ORT writes the trace into the working directory unless told otherwise.
        options.profile_file_prefix = _profile_prefix()
        sweep_stale_profiles()
    chain = {"cpu": ["cpu"], "cuda": ["cuda", "cpu"], "tensorrt": ["tensorrt", "cuda", "cpu"]}[provider]
    providers = [
        (PROVIDERS[name], dict(provider_options or {})) if name == provider else PROVIDERS[name] for name in chain
    ]
    source = str(model) if isinstance(model, Path) else model
    log = ""
    try:
        if provider == "cpu":
            session = ort.InferenceSession(source, sess_options=options, providers=providers)
        else:
            # ORT's Python layer print()s its "EP Error ... Falling back" banner: capture it with the C++ log.
            with captured_stderr() as captured, contextlib.redirect_stdout(printed):
                session = ort.InferenceSession(source, sess_options=options, providers=providers)
            log = printed.getvalue() + "".join(captured)
    except Exception as exc:
        where = model if isinstance(model, Path) else "the model"
        text = one_line(exc, 300)
        if provider != "cpu" and re.search(r"provider|cuda|cudnn|tensorrt|\.so|dll|library", text, re.IGNORECASE):
            # the GPU provider's own libraries failed to load: the environment, not the file
            raise ProviderUnavailable(
                f"{provider.upper()} could not be loaded: {text}",
                hint="install the provider's libraries, or pass --allow-fallback to run on CPU and say so",
            ) from None
        raise BadInput(f"ONNX Runtime cannot load {where}: {text}") from None
    actual = session.get_providers()
    if wanted in actual:
        return Session(session, provider, actual, fell_back=False, profiling=enable_profiling)
    reason = _reason_from_log(log, provider) or f"{wanted} is not among the providers ORT started ({', '.join(actual)})"
    if not cuda_device_available() and provider in ("cuda", "tensorrt"):
        reason = f"no CUDA device is visible to this process; ORT said: {reason}"
    if not allow_fallback:
        Session(session, provider, actual, fell_back=True, profiling=enable_profiling).discard_profile()
        raise ProviderUnavailable(
            f"{provider.upper()} did not start: {reason}",
            hint="run where the provider works, or pass --allow-fallback to run on CPU and say so",
        )
    return Session(session, provider, actual, fell_back=True, reason=reason, profiling=enable_profiling)
