"""The one place that reads and writes .onnx files: validated load, atomic save, provenance metadata.

How every output is kept off the command's inputs, and side files and bundle folders written atomically,
is outputs.py's; its names are re-exported here, where callers have long imported them.

Every file edgekit writes carries a JSON object under the `edgekit` key of `metadata_props`
(docs/design.md, "The artefact contract").
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgekit.core.errors import BadInput, one_line
from edgekit.core.files import NAME_MAX, check_name_lengths, check_readable_file, file_kind, open_regular, sha256_file, shown_path  # noqa: F401
from edgekit.core.files import sweep_leftovers
from edgekit.onnxfile.graph import graph_dims, graph_inputs, input_spec
from edgekit.onnxfile.metadata import METADATA_KEY, check_against_graph, metadata_of
from edgekit.onnxfile.outputs import (  # noqa: F401  (the writers below use some; all are importable from here)
    command_inputs,
    commit_folder,
    refuse_folder_holding_inputs,
    refuse_if_input,
    register_input,
    short_name,
    stage_folder,
    write_atomic,
    write_error,
    write_text_atomic,
)

# protobuf refuses messages over 2 GiB; past this many bytes of weights, save them as external data.
EXTERNAL_DATA_THRESHOLD_ENV = "EDGEKIT_EXTERNAL_DATA_THRESHOLD"
DEFAULT_EXTERNAL_DATA_THRESHOLD = 1_800_000_000
# Staging folders: ".<final name>.<pid>-<random>.edgekit-tmp" beside the destination. One left by a
# process that was killed (SIGKILL, power loss) is swept by the next write into that folder once it
# is this old and its process is gone.
STAGING_SUFFIX = ".edgekit-tmp"
STALE_STAGING_SECONDS = 3600
_STAGING_NAME = re.compile(r"^\..+\.(?:(?P<pid>\d+)-)?[^.]*" + re.escape(STAGING_SUFFIX) + "$")


def data_file(path: Path) -> Path:
    """Where edgekit keeps a model's external data: beside it, named <file>.onnx.data (for a name so long that
    this would pass the file system's limit: the name cut, with a hash of the whole name)."""
    import hashlib

    name = Path(path).name + ".data"
    if len(os.fsencode(name)) > NAME_MAX:
        digest = hashlib.sha256(os.fsencode(Path(path).name)).hexdigest()[:12]
        name = os.fsdecode(os.fsencode(Path(path).name)[: NAME_MAX - 18]) + f"-{digest}.data"
    return Path(path).with_name(name)


def artifact_bytes(path: Path) -> int:
    """Bytes of an .onnx file plus its external data file, if it has one."""
    data = data_file(path)
    return Path(path).stat().st_size + (data.stat().st_size if data.exists() else 0)


def _check_external_data_locations(model, folder: Path, path: Path) -> None:
    """Refuse external data that is missing or lies outside the model's folder (../, absolute, symlink)."""
    from onnx.external_data_helper import ExternalDataInfo, uses_external_data

    root = folder.resolve()
    for tensor in _all_tensors(model):
        if not uses_external_data(tensor):
            continue
        location = ExternalDataInfo(tensor).location
        candidate = folder / location
        if os.path.isabs(location) or ".." in Path(location).parts:
            raise BadInput(
                f"{shown_path(path)}: external data location {location!r} of tensor {tensor.name!r} points outside its folder",
                hint="refusing to read it; keep the data file beside the model",
            )
        if candidate.is_symlink() or root not in candidate.resolve().parents:
            raise BadInput(
                f"{shown_path(path)}: external data {location!r} of tensor {tensor.name!r} is a symlink or leaves the model's folder",
                hint="refusing to read it; copy the data file beside the model",
            )
        if not candidate.is_file():
            raise BadInput(
                f"{shown_path(path)}: external data file {location!r} (tensor {tensor.name!r}) is missing",
                hint="copy it beside the model",
            )
        register_input(candidate, "input model's external data")


def _all_tensors(model):
    from onnx.external_data_helper import _get_all_tensors

    return _get_all_tensors(model)


def load_onnx(path: Path, *, check: bool = True):
    """Load and validate an ONNX file (with its external data); any problem is one BadInput line.

    Validated before anything else reads the model: the graph's signature (one float image input
    of rank 4, at least one output: graph.input_spec) and its edgekit metadata (the schema, and
    its agreement with the graph: metadata.metadata_of, check_against_graph). Every command loads
    through here, so the same bad file is the same message and exit code (2) in each.
    """
    import onnx
    from google.protobuf.message import DecodeError

    path = check_readable_file(Path(path), "ONNX file")
    register_input(path, "input model")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, RuntimeError, ValueError, OSError, UnicodeDecodeError) as exc:
        raise BadInput(
            f"{shown_path(path)} is not a valid ONNX file (cannot parse protobuf: {one_line(exc, 300)})",
            hint="is it truncated or another format?",
        ) from None
    if not model.graph.node and not model.graph.output:
        # protobuf parses many byte strings as an empty message: that is not a model.
        raise BadInput(f"{shown_path(path)} is not a valid ONNX file (it parses to an empty graph)", hint="is it truncated?")
    check_signature(model, path)
    _check_external_data_locations(model, path.parent, path)
    try:
        from onnx.external_data_helper import load_external_data_for_model

        load_external_data_for_model(model, str(path.parent))
    except (OSError, ValueError) as exc:
        raise BadInput(f"{shown_path(path)}: cannot read its external data: {one_line(exc, 300)}") from None
    if check:
        check_onnx(path)
    return model


def load_work_file(path: Path, *, external_data: bool = True):
    """An ONNX file edgekit itself just wrote into its work folder (pre-processed, quantized, ORT-optimised):
    parsed without the user-input validation of load_onnx, which already ran on the file it came from."""
    import onnx

    return onnx.load(str(path), load_external_data=external_data)


def model_files(path: Path) -> list[Path]:
    """An .onnx file and every external data file it names (validated by load_onnx before this is asked)."""
    from onnx.external_data_helper import ExternalDataInfo, _get_all_tensors, uses_external_data

    proto = load_work_file(path, external_data=False)
    locations = sorted({ExternalDataInfo(t).location for t in _get_all_tensors(proto) if uses_external_data(t)})
    return [Path(path), *(Path(path).parent / loc for loc in locations)]


def check_signature(model, where: Path | str) -> None:
    """The graph is one edgekit handles, and its edgekit metadata (if any) is valid and describes it.

    BadInput (exit 2) naming the file: two inputs, an int64 input, no output (graph.input_spec);
    malformed metadata JSON, a field of the wrong type or out of range, or metadata that disagrees
    with the graph's input or output (metadata.check_against_graph).
    """
    from edgekit.core import limits

    where = Path(shown_path(where))
    spec = input_spec(model, where)
    # A crafted file of 1 kB can declare a (1, 3, 100000, 100000) input; commands make tensors of the
    # input's shape, so its static dims are bounded here, before any command allocates from them.
    declared = [d if isinstance(d, int) and d > 0 else 1 for d in graph_dims(graph_inputs(model)[0])]
    limits.check_dims(declared, f"{where}: input {spec.name!r} has shape", bound=limits.MAX_INPUT_SIZE)
    limits.check_tensor_budget(declared, 4, f"{where}: input {spec.name!r} of shape", hint="is the file damaged?")
    meta = metadata_of(model, where)
    if meta is not None:
        check_against_graph(meta, graph_dims(graph_inputs(model)[0]), graph_dims(model.graph.output[0]), where)


def check_onnx(path: Path, full_check: bool = False) -> None:
    """onnx.checker by path (works past the 2 GB protobuf limit); a failure is BadInput."""
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=full_check)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError, UnicodeDecodeError, ValueError) as exc:
        # A damaged file can make the checker's own message undecodable (found by the fuzz test).
        raise BadInput(f"{shown_path(path)} fails the ONNX checker: {one_line(exc, 300)}") from None


def read_metadata(model, where: Path | str | None = None) -> dict[str, Any] | None:
    """The validated `edgekit` provenance object of a ModelProto, or None when it has none (a foreign file).

    Never a silent None for damaged metadata: malformed JSON, a wrong type, a missing field or an
    out-of-range value is BadInput (exit 2) naming `where` (the file), the field and the value.
    The dict is the object as written (metadata.EdgekitMetadata.to_dict()).
    """
    meta = metadata_of(model, Path(shown_path(where)) if where is not None else Path("the model"))
    return None if meta is None else meta.to_dict()


def write_metadata(model, metadata: dict[str, Any]) -> None:
    """Set (replace) the `edgekit` provenance object on a ModelProto."""
    for i, prop in enumerate(model.metadata_props):
        if prop.key == METADATA_KEY:
            del model.metadata_props[i]
            break
    entry = model.metadata_props.add()
    entry.key = METADATA_KEY
    entry.value = json.dumps(metadata, sort_keys=True)


def opset_of(model) -> int:
    """The default-domain opset the file declares."""
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return int(entry.version)
    raise BadInput("the model declares no default-domain (ai.onnx) opset")


def external_data_threshold() -> int:
    raw = os.environ.get(EXTERNAL_DATA_THRESHOLD_ENV)
    if raw is None:
        return DEFAULT_EXTERNAL_DATA_THRESHOLD
    try:
        return int(raw)
    except ValueError:
        raise BadInput(f"{EXTERNAL_DATA_THRESHOLD_ENV}={raw!r} is not a number of bytes") from None


EXPORTS_DIR = Path("exports")


def default_output(stem: str, tag: str | None = None) -> Path:
    """exports/<stem>.onnx, or exports/<stem>.<tag>.onnx for a derived file (tag int8, fp16)."""
    return EXPORTS_DIR / (f"{stem}.{tag}.onnx" if tag else f"{stem}.onnx")


def derived_output(parent: Path, tag: str) -> Path:
    """exports/<name>.<tag>.onnx for exports/<name>.onnx."""
    name = parent.name[: -len(".onnx")] if parent.name.endswith(".onnx") else parent.stem
    return default_output(name, tag)




def resolve_output(output: Path | None, default: Path) -> Path:
    """-o may be a .onnx file or a folder (the default file name inside it); None means `default`."""
    if output is None:
        return default
    output = check_name_lengths(Path(output), "output")
    if output.is_dir() or output.suffix == "":
        return output / default.name
    if output.suffix != ".onnx":
        raise BadInput(f"output {output} does not end in .onnx", hint="name a .onnx file or a folder with -o")
    return output


@dataclass
class StagedOutput:
    """An output written into a hidden temp folder beside its final place, moved there only on commit.

    Checks run on the staged file, i.e. on exactly the bytes that will ship; a failure or an
    interrupt discards the folder and leaves any previous file at the final path untouched.
    """

    final: Path
    folder: Path

    @property
    def path(self) -> Path:
        return self.folder / self.final.name

    def save(self, model) -> Path:
        """Serialise a ModelProto to the staged path; weights go to external data past the threshold."""
        import onnx

        large = model.ByteSize() > external_data_threshold() if _fits_bytesize(model) else True
        try:
            if large:
                onnx.save_model(
                    model,
                    str(self.path),
                    save_as_external_data=True,
                    all_tensors_to_one_file=True,
                    location=data_file(self.final).name,
                    size_threshold=1024,
                )
            else:
                onnx.save_model(model, str(self.path))
        except OSError as exc:
            raise write_error(self.final, exc) from None
        return self.path

    def commit(self) -> Path:
        """Move the staged files into place: data files first, the .onnx last (each os.replace is atomic)."""
        staged = sorted(self.folder.iterdir(), key=lambda p: p.name == self.final.name)
        for item in staged:
            refuse_if_input(self.final.parent / item.name)
        stale_data = data_file(self.final)
        if stale_data.exists() and not (self.folder / stale_data.name).exists():
            stale_data.unlink()  # the new file keeps its weights inline; an old data file would mislead
        try:
            for item in staged:
                os.replace(item, self.final.parent / item.name)
        except OSError as exc:
            self.discard()
            raise write_error(self.final, exc) from None
        self.discard()
        return self.final

    def discard(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)




def _fits_bytesize(model) -> bool:
    try:
        model.ByteSize()
        return True
    except Exception:  # protobuf raises past 2 GiB on some builds
        return False


def stage_output(final: Path) -> StagedOutput:
    """Create the temp folder for `final` now, so an unwritable destination fails before any work.

    Staging folders that a killed edgekit left in that folder (older than STALE_STAGING_SECONDS,
    their process gone) are swept first.
    """
    final = Path(final)
    parent = final.parent
    refuse_if_input(final)
    refuse_if_input(data_file(final), "output's external data")
    try:
        parent.mkdir(parents=True, exist_ok=True)
        sweep_stale_staging(parent)
        folder = Path(tempfile.mkdtemp(prefix=f".{short_name(final)}.{os.getpid()}-", suffix=STAGING_SUFFIX, dir=parent))
    except OSError as exc:
        raise BadInput(
            f"cannot write to {shown_path(parent)}: {exc.strerror or exc}", hint="choose another output with -o"
        ) from None
    if final.is_dir():
        shutil.rmtree(folder, ignore_errors=True)
        raise BadInput(f"output {shown_path(final)} is a directory", hint="name a .onnx file or a folder with -o")
    return StagedOutput(final=final, folder=folder)


def sweep_stale_staging(folder: Path, max_age: float = STALE_STAGING_SECONDS) -> list[Path]:
    """Remove the staging folders (".NAME.<pid>-*.edgekit-tmp") in `folder` that a killed process left behind."""
    return sweep_leftovers(folder, _STAGING_NAME, want_dir=True, max_age=max_age)
