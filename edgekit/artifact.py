"""The one place that reads and writes .onnx files: validated load, atomic save, provenance metadata.

Every file edgekit writes carries a JSON object under the `edgekit` key of `metadata_props`
(design.md, "The artefact contract").
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Callable

from edgekit.errors import BadInput, EdgekitError, EnvironmentUnavailable, one_line
from edgekit.files import NAME_MAX, check_name_lengths, check_readable_file, file_kind, open_regular, sha256_file, shown_path  # noqa: F401
from edgekit.files import sweep_leftovers
from edgekit.graph import graph_dims, graph_inputs, input_spec
from edgekit.metadata import METADATA_KEY, check_against_graph, metadata_of

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
    from edgekit import limits

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


def short_name(path: Path) -> str:
    """A file name cut for a hidden temp name beside it: any output name the file system takes stays writable."""
    return Path(path).name[:64]


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


def write_error(path: Path, exc: OSError) -> EdgekitError:
    """A failed write as one line: a full disk is the environment (exit 3), anything else bad output (exit 2)."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return EnvironmentUnavailable(f"cannot write {shown_path(path)}: no space left on the device", hint="free some space; nothing was written")
    return BadInput(f"cannot write {shown_path(path)}: {exc.strerror or exc}", hint="choose another output with -o; nothing was written")


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


def stage_folder(final: Path) -> Path:
    """A hidden temp folder beside `final` (a bundle folder), with the permissions a normal folder gets."""
    check_name_lengths(Path(final), "output folder")
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        folder = Path(tempfile.mkdtemp(prefix=f".{short_name(final)}.", suffix=".edgekit-tmp", dir=final.parent))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(folder, 0o777 & ~umask)  # mkdtemp's 0700 would follow the bundle to the device
        return folder
    except OSError as exc:
        raise BadInput(f"cannot write to {final.parent}: {exc.strerror or exc}", hint="choose another -o") from None


def commit_folder(staged: Path, final: Path) -> None:
    """Rename the staged folder into place; an old bundle there is moved aside first and removed after."""
    old = None
    refuse_folder_holding_inputs(final)
    # Ctrl-C or SIGTERM between the two renames would leave no bundle at all: both wait until the swap is done
    # (or undone), then act as usual.
    with _signals_held():
        try:
            if final.exists():
                old = Path(tempfile.mkdtemp(prefix=f".{short_name(final)}.", suffix=".edgekit-old", dir=final.parent))
                os.replace(final, old / "bundle")
            os.replace(staged, final)
        except BaseException as exc:
            if old is not None and (old / "bundle").exists() and not final.exists():
                os.replace(old / "bundle", final)
            if isinstance(exc, OSError):
                raise write_error(final, exc) from None
            raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def _signals_held():
    """SIGINT and SIGTERM recorded, not acted on, while the block runs; raised again right after it, to the
    handlers the command had (Python runs signal handlers in the main thread only, so that is where this holds)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []
    previous = {}
    try:
        for signum in (signal.SIGINT, signal.SIGTERM):
            previous[signum] = signal.signal(signum, lambda number, _frame: pending.append(number))
    except (ValueError, OSError):
        pass
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        for signum in pending:
            signal.raise_signal(signum)


# --- outputs never land on inputs ----------------------------------------------------------------
# The inputs of the running command (by resolved path and by (device, inode)): registered as they are read
# (load_onnx, the bundle check), consulted by every writer below. None outside a command (library use).
_INPUTS: dict | None = None


@contextlib.contextmanager
def command_inputs():
    """A command's scope: inputs registered inside it are protected from its outputs, and forgotten after."""
    global _INPUTS
    saved, _INPUTS = _INPUTS, {}
    try:
        yield
    finally:
        _INPUTS = saved


def register_input(path: Path, what: str = "input") -> None:
    """Protect `path` from this command's outputs."""
    if _INPUTS is None:
        return
    path = Path(path)
    _INPUTS[os.path.realpath(path)] = (what, path)
    with contextlib.suppress(OSError):
        info = os.stat(path)
        _INPUTS[(info.st_dev, info.st_ino)] = (what, path)


def refuse_if_input(path: Path, what: str = "output") -> None:
    """BadInput (exit 2, nothing touched) when writing `path` would overwrite one of this command's inputs,
    by resolved path or by inode (a hard link)."""
    if not _INPUTS:
        return
    hit = _INPUTS.get(os.path.realpath(path))
    if hit is None:
        with contextlib.suppress(OSError):
            info = os.stat(path)
            hit = _INPUTS.get((info.st_dev, info.st_ino))
    if hit is not None:
        raise BadInput(f"{what} {shown_path(path)} is the {hit[0]} {shown_path(hit[1])}: writing it would destroy an "
                       "input; nothing was written", hint="choose another output path")


def refuse_folder_holding_inputs(folder: Path, what: str = "output folder") -> None:
    """A folder about to be replaced whole must hold none of this command's inputs."""
    if not _INPUTS or not Path(folder).is_dir():
        return
    for item in Path(folder).iterdir():
        refuse_if_input(item, f"{what} {shown_path(folder)} holds")


def write_atomic(path: Path, write: Callable[[BinaryIO], None]) -> Path:
    """The one writer of edgekit's side files (reports, plots, sidecars): `write(f)` into a temp file in the
    same folder, then os.replace; never onto one of the command's inputs; nothing half-written on failure."""
    path = check_name_lengths(Path(path), "output")
    refuse_if_input(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{short_name(path)}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise BadInput(f"cannot write {shown_path(path)}: {exc.strerror or exc}", hint="choose another path") from None
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise write_error(path, exc) from None
        raise
    return path


def write_text_atomic(path: Path, text: str) -> Path:
    """A text file (a report) through write_atomic; a file name that is not UTF-8 is written as \\xNN, not a crash."""
    return write_atomic(path, lambda f: f.write(shown_path(text).encode("utf-8")))
