"""The one place that reads and writes .onnx files: validated load, atomic save, provenance metadata.

Every file edgekit writes carries a JSON object under the `edgekit` key of `metadata_props`
(design.md, "The artefact contract").
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgekit.errors import BadInput, EdgekitError, EnvironmentUnavailable, one_line

METADATA_KEY = "edgekit"
# protobuf refuses messages over 2 GiB; past this many bytes of weights, save them as external data.
EXTERNAL_DATA_THRESHOLD_ENV = "EDGEKIT_EXTERNAL_DATA_THRESHOLD"
DEFAULT_EXTERNAL_DATA_THRESHOLD = 1_800_000_000
_LFS_POINTER = b"version https://git-lfs"


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def data_file(path: Path) -> Path:
    """Where edgekit keeps a model's external data: beside it, named <file>.onnx.data."""
    return Path(path).with_name(Path(path).name + ".data")


def artifact_bytes(path: Path) -> int:
    """Bytes of an .onnx file plus its external data file, if it has one."""
    data = data_file(path)
    return Path(path).stat().st_size + (data.stat().st_size if data.exists() else 0)


def check_readable_file(path: Path, what: str) -> Path:
    """A path that exists, is a regular file, is readable and is not empty; else BadInput naming it."""
    path = Path(path)
    if not path.exists():
        raise BadInput(f"{what} {path} does not exist", hint="check the path")
    if path.is_dir():
        raise BadInput(f"{what} {path} is a directory, not a file", hint="name the file inside it")
    try:
        with open(path, "rb") as f:
            head = f.read(64)
    except OSError as exc:
        raise BadInput(f"cannot read {what} {path}: {exc.strerror}", hint="check its permissions") from None
    if not head:
        raise BadInput(f"{what} {path} is empty (0 bytes)", hint="re-create or re-download it")
    if head.startswith(_LFS_POINTER):
        raise BadInput(
            f"{what} {path} is a Git LFS pointer, not the file itself", hint="run `git lfs pull` to fetch it"
        )
    return path


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
                f"{path}: external data location {location!r} of tensor {tensor.name!r} points outside its folder",
                hint="refusing to read it; keep the data file beside the model",
            )
        if candidate.is_symlink() or root not in candidate.resolve().parents:
            raise BadInput(
                f"{path}: external data {location!r} of tensor {tensor.name!r} is a symlink or leaves the model's folder",
                hint="refusing to read it; copy the data file beside the model",
            )
        if not candidate.is_file():
            raise BadInput(
                f"{path}: external data file {location!r} (tensor {tensor.name!r}) is missing",
                hint="copy it beside the model",
            )


def _all_tensors(model):
    from onnx.external_data_helper import _get_all_tensors

    return _get_all_tensors(model)


def load_onnx(path: Path, *, check: bool = True):
    """Load and validate an ONNX file (with its external data); any problem is one BadInput line."""
    import onnx
    from google.protobuf.message import DecodeError

    path = check_readable_file(Path(path), "ONNX file")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, RuntimeError, ValueError, OSError, UnicodeDecodeError) as exc:
        raise BadInput(
            f"{path} is not a valid ONNX file (cannot parse protobuf: {_first_line(exc)})",
            hint="is it truncated or another format?",
        ) from None
    if not model.graph.node and not model.graph.output:
        # protobuf parses many byte strings as an empty message: that is not a model.
        raise BadInput(f"{path} is not a valid ONNX file (it parses to an empty graph)", hint="is it truncated?")
    _check_external_data_locations(model, path.parent, path)
    try:
        from onnx.external_data_helper import load_external_data_for_model

        load_external_data_for_model(model, str(path.parent))
    except (OSError, ValueError) as exc:
        raise BadInput(f"{path}: cannot read its external data: {_first_line(exc)}") from None
    if check:
        check_onnx(path)
    return model


def check_onnx(path: Path, full_check: bool = False) -> None:
    """onnx.checker by path (works past the 2 GB protobuf limit); a failure is BadInput."""
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=full_check)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError, UnicodeDecodeError, ValueError) as exc:
        # A damaged file can make the checker's own message undecodable (found by the fuzz test).
        raise BadInput(f"{path} fails the ONNX checker: {_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    return one_line(exc, 300)


def read_metadata(model) -> dict[str, Any] | None:
    """The `edgekit` provenance object of a ModelProto, or None for a foreign file."""
    for prop in model.metadata_props:
        if prop.key == METADATA_KEY:
            try:
                value = json.loads(prop.value)
            except json.JSONDecodeError:
                return None
            return value if isinstance(value, dict) else None
    return None


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
    output = Path(output)
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
        return EnvironmentUnavailable(f"cannot write {path}: no space left on the device", hint="free some space; nothing was written")
    return BadInput(f"cannot write {path}: {exc.strerror or exc}", hint="choose another output with -o; nothing was written")


def _fits_bytesize(model) -> bool:
    try:
        model.ByteSize()
        return True
    except Exception:  # protobuf raises past 2 GiB on some builds
        return False


def stage_output(final: Path) -> StagedOutput:
    """Create the temp folder for `final` now, so an unwritable destination fails before any work."""
    final = Path(final)
    parent = final.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        folder = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".edgekit-tmp", dir=parent))
    except OSError as exc:
        raise BadInput(
            f"cannot write to {parent}: {exc.strerror or exc}", hint="choose another output with -o"
        ) from None
    if final.is_dir():
        shutil.rmtree(folder, ignore_errors=True)
        raise BadInput(f"output {final} is a directory", hint="name a .onnx file or a folder with -o")
    return StagedOutput(final=final, folder=folder)


def write_text_atomic(path: Path, text: str) -> Path:
    """Write a text file (a report) via a temp file in the same folder and os.replace."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise BadInput(f"cannot write {path}: {exc.strerror or exc}", hint="choose another path") from None
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise write_error(path, exc) from None
        raise
    return path
