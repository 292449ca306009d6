"""`open_reference`: the one object verify and package compare a file with, whatever it is.

Three kinds, chosen from the file's metadata:
- "pytorch": the PyTorch fp32 model the file was exported from (models/reference.py: rebuilt from the metadata,
  or from --model/--weights for a file without PyTorch provenance).
- "parent": an int8/fp16 file descended from a foreign or imported fp32 file has no PyTorch source; its fp32 parent,
  found by the sha256 its metadata records (beside the file, or --parent), runs in ONNX Runtime on the CPU.
- "original": an imported fp32 file is compared with the foreign file it was normalised from (metadata `imported`),
  found the same way.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgekit.core.errors import BadInput, CheckFailed, EnvironmentUnavailable, one_line
from edgekit.core.files import check_readable_file, shown_path, sha256_file
from edgekit.data.preprocessing import Preprocessing

# The .onnx files beside a derived file that are hashed to find its parent by sha256: bounded, so a folder of
# many large files is not read end to end (a parent elsewhere is given with --parent).
MAX_SIBLINGS = 32
MAX_SIBLING_BYTES = 4 * 1024**3  # each
MAX_HASHED_BYTES = 8 * 1024**3  # all of them together


@dataclass
class Reference:
    """What a file is compared with: `run(tensors)` gives its first output (float32)."""

    kind: str  # pytorch | parent | original
    preprocessing: Preprocessing
    num_classes: int | None
    input_size: int | None
    weights: dict | None  # the PyTorch weights source (WeightsSource.to_dict()); None: unknown (an ONNX reference)
    trained: bool  # trained weights, or unknown but not seeded-random: the stricter gates
    task: str  # classify | dense
    why_gates: str  # why these weights count as trained or not, for the summary
    model_name: str | None = None
    family: str | None = None
    from_metadata: bool = True
    file: Path | None = None  # the ONNX reference file (parent, original)
    sha256: str | None = None
    plan: object | None = None  # models.reference.ReferencePlan (pytorch)
    _torch: object | None = field(default=None, repr=False)
    _session: object | None = field(default=None, repr=False)
    _double: object | None = field(default=None, repr=False)

    # --- running ---------------------------------------------------------------------------

    @property
    def torch_model(self):
        """The PyTorch model (built on first use), or None for an ONNX reference."""
        if self.kind != "pytorch":
            return None
        if self._torch is None:
            from edgekit.models.reference import build_reference

            try:
                self._torch = build_reference(self.plan)
            except ImportError as exc:
                raise EnvironmentUnavailable(f"the PyTorch reference needs torch: {one_line(exc)}") from None
            self.weights = self.plan.weights  # build_reference fills in a --weights/--pretrained source
        return self._torch

    def load(self) -> "Reference":
        """Build the model or start the session now (so a slow or failing step happens at a known stage)."""
        if self.kind == "pytorch":
            self.torch_model  # noqa: B018 (builds it)
        else:
            self._onnx_session()
        return self

    def _onnx_session(self):
        if self._session is None:
            from edgekit.runtimes.ort import create_session

            # the same CPU session verify gives an fp32 file: default graph optimisations, no session options
            self._session = create_session(self.file, "cpu")
        return self._session

    def run(self, tensors: np.ndarray) -> np.ndarray:
        """The first output on `tensors` (N, C, H, W), as float32."""
        if self.kind == "pytorch":
            from edgekit.runtimes.runners import run_torch

            return run_torch(self.torch_model, tensors).astype(np.float32, copy=False)
        from edgekit.runtimes.runners import batch_sizes, run_session

        session = self._onnx_session()
        return run_session(session, tensors, batch_sizes(session)[-1])[0].astype(np.float32, copy=False)

    @property
    def has_exact(self) -> bool:
        """A float64 run exists (PyTorch only): the fp32 noise-floor check uses it."""
        return self.kind == "pytorch"

    def run_exact(self, tensors: np.ndarray) -> np.ndarray:
        """Float64 PyTorch outputs (only when has_exact)."""
        import torch

        from edgekit.runtimes.runners import run_torch

        if self._double is None:
            self._double = copy.deepcopy(self.torch_model).double()
        return run_torch(self._double, tensors, dtype=torch.float64)

    def close(self) -> None:
        self._session = None
        self._torch = None
        self._double = None

    # --- saying what it is -----------------------------------------------------------------

    def describe(self) -> str:
        if self.kind == "pytorch":
            from edgekit.models.weights import WeightsSource

            where = "rebuilt from the file's metadata" if self.from_metadata else "from --model/--weights"
            weights = WeightsSource.from_dict(self.weights).describe() if self.weights else "unknown"
            return f"PyTorch {self.model_name} fp32, weights {weights} ({where})"
        what = "the fp32 parent" if self.kind == "parent" else "the original file"
        return f"ONNX Runtime on {what} {shown_path(self.file)} (sha256 {self.sha256[:16]}...)"

    @property
    def short(self) -> str:
        """A word for table titles and the PASS line: PyTorch, or the fp32 parent / the original."""
        return {"pytorch": "PyTorch", "parent": "its fp32 parent", "original": "the original file"}[self.kind]


def open_reference(path: Path, model_proto, meta: dict | None, *, model: str | None = None,
                   weights: Path | None = None, pretrained: bool = False, seed: int = 0,
                   parent: Path | None = None) -> Reference:
    """The reference of the ONNX file at `path` (its loaded `model_proto` and raw edgekit `meta`). Cheap: the PyTorch
    model is built, or the ONNX session started, on first use. A missing or mismatched parent/original is BadInput."""
    from edgekit.onnxfile.metadata import validate_metadata

    path = Path(path)
    where = Path(shown_path(path))
    parsed = validate_metadata(meta, where) if meta is not None else None
    if parsed is not None:
        from edgekit.onnxfile.graph import graph_dims, graph_inputs
        from edgekit.onnxfile.metadata import check_against_graph

        check_against_graph(parsed, graph_dims(graph_inputs(model_proto)[0]), graph_dims(model_proto.graph.output[0]),
                            where)
    task = dense_task(model_proto, parsed)
    onnx_kind = None
    if model is None and parsed is not None and not parsed.has_provenance:
        foreign_parent = parsed.parent is not None and (not parsed.parent.metadata or parsed.is_imported)
        if foreign_parent:
            onnx_kind = "parent"
        elif parsed.is_imported:
            onnx_kind = "original"
    if onnx_kind is None:
        return _pytorch(path, model_proto, meta, model, weights, pretrained, seed, task)
    if weights is not None or pretrained:
        raise BadInput(f"{where} has no PyTorch source; its reference is an ONNX file, so --weights/--pretrained "
                       "do not apply", hint="drop them, or pass --model NAME too to compare with a PyTorch model")
    if onnx_kind == "parent":
        recorded, sha = parsed.parent.file, parsed.parent.sha256
        found = find_by_sha256(path, recorded, sha, parent, "fp32 parent", "quantized/converted from",
                               recorded_path=parsed.parent.path)
    else:
        recorded, sha = parsed.imported.file, parsed.imported.sha256
        found = find_by_sha256(path, recorded, sha, parent, "original file", "imported from",
                               recorded_path=parsed.imported.path)
    pre = parsed.preprocessing_spec()
    from edgekit.judge.compare import weights_of_file

    trained, why = weights_of_file(meta)
    return Reference(
        kind=onnx_kind, preprocessing=pre, num_classes=parsed.num_classes, input_size=parsed.input_size,
        weights=None, trained=trained, task=task, file=found, sha256=sha, why_gates=why,
        model_name=parsed.model, family=parsed.family, from_metadata=True,
    )


def _pytorch(path, model_proto, meta, model, weights, pretrained, seed, task) -> Reference:
    from edgekit.judge.compare import weights_are_trained
    from edgekit.models.reference import plan_reference

    plan = plan_reference(path, model_proto, meta, model, weights, pretrained, seed)
    trained = weights_are_trained(plan.weights)
    kind = plan.weights.get("kind")
    why = (f"the weights are {'pretrained' if kind == 'pretrained' else 'a weights file'}" if trained
           else f"the weights are seeded-random (seed {plan.weights.get('seed', seed)})")
    spec = plan.spec
    return Reference(
        kind="pytorch", preprocessing=plan.preprocessing, num_classes=plan.num_classes, input_size=plan.input_size,
        weights=plan.weights, trained=trained, task=task, why_gates=why, model_name=getattr(spec, "name", None),
        family=getattr(spec, "family", None), from_metadata=plan.from_metadata, plan=plan,
    )


def dense_task(model_proto, parsed) -> str:
    """"dense" when the metadata says so or the first output is a spatial map (N, C, H, W with H*W > 1)."""
    from edgekit.onnxfile.graph import graph_dims

    if parsed is not None and parsed.task is not None:
        return parsed.task
    dims = graph_dims(model_proto.graph.output[0])
    if len(dims) == 4 and isinstance(dims[2], int) and isinstance(dims[3], int) and dims[2] * dims[3] > 1:
        return "dense"
    if len(dims) == 4 and (not isinstance(dims[2], int) or not isinstance(dims[3], int)):
        return "dense"  # a map whose size follows the input
    return "classify"


def find_by_sha256(path: Path, recorded: str, sha: str, given: Path | None, what: str, verb: str,
                   recorded_path: str | None = None) -> Path:
    """The file with sha256 `sha`: `given` (checked), else the recorded name beside `path`, else one of the .onnx
    files beside it (at most MAX_SIBLINGS, each under MAX_SIBLING_BYTES, MAX_HASHED_BYTES in all), else the path it
    was recorded at (`recorded_path`: an absolute path, read only because its sha256 must match). BadInput naming
    --parent otherwise."""
    where = shown_path(path)
    if given is not None:
        given = check_readable_file(Path(given), f"--parent ({what})")
        actual = sha256_file(given)
        if actual != sha:
            raise BadInput(
                f"--parent {shown_path(given)} has sha256 {actual[:16]}..., but {where} was {verb} a file with sha256 "
                f"{sha[:16]}...", hint=f"pass the {what} it was made from ({Path(recorded).name})")
        return given
    folder = path.parent
    named = folder / Path(recorded).name
    if named.is_file() and named.resolve() != path.resolve() and sha256_file(named) == sha:
        return named
    hashed = 0
    for candidate in _siblings(folder, path, named):
        hashed += candidate.stat().st_size
        if hashed > MAX_HASHED_BYTES:
            break
        if sha256_file(candidate) == sha:
            return candidate
    if recorded_path:  # where the file was when this one was made: only ever read, and only if its sha256 matches
        at = Path(recorded_path)
        if at.is_absolute() and at.is_file() and at.resolve() != path.resolve() and sha256_file(at) == sha:
            return at
    raise BadInput(
        f"{where} was {verb} {Path(recorded).name} (sha256 {sha[:16]}...), its reference, and no file with that "
        f"sha256 is beside it" + (f" or at {recorded_path}" if recorded_path else ""),
        hint=f"pass the {what} with --parent FILE")


def _siblings(folder: Path, path: Path, named: Path) -> list[Path]:
    try:
        with os.scandir(folder) as listing:
            entries = [e for e in listing if e.name.lower().endswith(".onnx")]
    except OSError:
        return []
    out = []
    skip = {path.resolve(), named.resolve()}
    for entry in sorted(entries, key=lambda e: e.name):
        if len(out) >= MAX_SIBLINGS:
            break
        try:
            if not entry.is_file() or entry.stat().st_size > MAX_SIBLING_BYTES:
                continue
        except OSError:
            continue
        p = Path(entry.path)
        if p.resolve() not in skip:
            out.append(p)
    return out


def check_finite(outputs: np.ndarray, name: str, reference: Reference) -> None:
    if not np.isfinite(outputs).all():
        raise CheckFailed(f"the reference ({reference.short}) itself produced NaN/Inf on the {name} inputs; "
                          "nothing to compare against")
