"""The `edgekit` metadata object of an .onnx file, read as untrusted input.

A file's metadata decides which PyTorch model verify rebuilds, which seed it uses, how images are
preprocessed and how large the tensors are, so anything may be in it: a hand-edited value, a
truncated string, a file from a newer edgekit. `parse_metadata` turns the raw JSON string into an
`EdgekitMetadata` or one BadInput line (exit 2) naming the file, the field, the value and what to
do; it never falls back to a default. `check_against_graph` then checks the metadata against the
graph it describes.

Forward compatibility: keys this edgekit does not know are kept (so a file round-trips) but no
code reads them; a newer *schema* version is refused, since it may mean the known keys changed.
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

from edgekit.errors import BadInput
from edgekit.limits import MAX_BATCH, MAX_CLASSES, MAX_INPUT_SIZE, MAX_METADATA_CHARS, MAX_OPSET, MAX_SAMPLES, MIN_OPSET
from edgekit.preprocessing import Preprocessing

METADATA_KEY = "edgekit"  # the metadata_props key of the provenance object

SCHEMA_VERSION = 1  # bumped only when a key changes meaning; new keys alone do not bump it
PRECISIONS = ("fp32", "fp16", "int8")
WEIGHT_KINDS = ("random", "file", "pretrained")
METADATA_HINT = "re-export the file, or strip its edgekit metadata and pass --model/--weights"
VALUE_CHARS = 60  # an offending value is shown up to this many characters
# Keys an fp32 export always writes; a file derived from a foreign parent (quantized from an .onnx
# without edgekit metadata) has none of them.
PROVENANCE_KEYS = (
    "schema", "model", "family", "source", "num_classes", "input_size", "input_shape", "dynamic_batch",
    "input_name", "output_name", "weights", "opset", "exporter", "simplified", "created",
)

Name = Annotated[StrictStr, StringConstraints(min_length=1, max_length=500)]
Sha256 = Annotated[StrictStr, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
Count = Annotated[StrictInt, Field(ge=0)]
Number = Union[StrictInt, StrictFloat]  # ints stay ints, so a file round-trips byte for byte


class _Problem(ValueError):
    """A failed cross-field check: which field, its value, what is wrong (pydantic keeps it in ctx)."""

    def __init__(self, path: str, value: Any, reason: str):
        super().__init__(reason)
        self.path, self.value, self.reason = path, value, reason


class _Part(BaseModel):
    """A metadata object: unknown keys are kept for the round trip and never read."""

    model_config = ConfigDict(extra="allow", frozen=True, populate_by_name=True)

    @model_validator(mode="before")
    @classmethod
    def _no_explicit_null(cls, data: Any) -> Any:
        # Absent optional keys are None; a key written as null is a damaged file, not "absent".
        if isinstance(data, dict):
            for name, field in cls.model_fields.items():  # (on the class: pydantic deprecates instance access)
                key = field.alias or name
                if key in data and data[key] is None:
                    raise _Problem(key, None, "null is not allowed here; leave the key out or give a value")
        return data

    def to_dict(self) -> dict[str, Any]:
        """The JSON object as written: keys that were absent stay absent, unknown keys are kept."""
        return self.model_dump(mode="python", by_alias=True, exclude_unset=True)


class RandomWeights(_Part):
    kind: Literal["random"]
    seed: StrictInt = Field(ge=0, le=2**64 - 1)  # torch.manual_seed's range
    # Absent in files from before the BatchNorm settling: they parse, and verify says why their
    # reference cannot be rebuilt (models/reference.py) rather than "weights.init is missing".
    init: StrictStr | None = None


class FileWeights(_Part):
    kind: Literal["file"]
    path: Name
    sha256: Sha256


class PretrainedWeights(_Part):
    kind: Literal["pretrained"]
    name: Name
    path: Name
    sha256: Sha256


Weights = Annotated[Union[RandomWeights, FileWeights, PretrainedWeights], Field(discriminator="kind")]


class Parent(_Part):
    """The file a derived (int8, fp16) file was made from."""

    file: Name
    sha256: Sha256
    metadata: StrictBool  # False: the parent was a foreign file, so this file has no model provenance


class Calibration(_Part):
    source: Name
    kind: Name  # images | tensors
    samples: StrictInt = Field(ge=1, le=MAX_SAMPLES)
    sha256: Sha256
    holdout_samples: StrictInt = Field(ge=0, le=MAX_SAMPLES)


class QuantRecipe(_Part):
    target: Name
    activation_type: Literal["uint8", "int8"]
    weight_type: Literal["uint8", "int8"]
    per_channel: StrictBool
    reduce_range: StrictBool
    activation_symmetric: StrictBool
    method: Name
    reason: StrictStr
    format: Name
    excluded_nodes: list[StrictStr]
    batchnorm_as_depthwise: StrictBool | None = None  # written since the BatchNorm rewrite; older int8 files lack it
    batchnorm_rewritten: Count | None = None


class QuantizationReport(_Part):
    holdout_top1_agreement: Number = Field(ge=0, le=1)
    holdout_sqnr_db: Number  # +inf when int8 reproduces fp32 exactly
    coverage_int8: Count | dict[StrictStr, Count]  # per op type (Conv, Gemm, Concat), as quantize writes it
    coverage_total: Count | dict[StrictStr, Count]


class EdgekitMetadata(_Part):
    """The provenance object under metadata_props["edgekit"] (README, "The artefact contract")."""

    schema_version: StrictInt | None = Field(default=None, alias="schema")
    model: Name | None = None
    family: Name | None = None
    source: Name | None = None
    num_classes: StrictInt | None = Field(default=None, ge=1, le=MAX_CLASSES)
    input_size: StrictInt | None = Field(default=None, ge=1, le=MAX_INPUT_SIZE)
    input_shape: list[Union[StrictInt, Name]] | None = Field(default=None, min_length=4, max_length=4)
    dynamic_batch: StrictBool | None = None
    input_name: Name | None = None
    output_name: Name | None = None
    weights: Weights | None = None
    preprocessing: dict[str, Any]
    opset: StrictInt | None = Field(default=None, ge=MIN_OPSET, le=MAX_OPSET)
    exporter: Name | None = None
    simplified: StrictBool | None = None
    precision: Literal["fp32", "fp16", "int8"]
    versions: dict[StrictStr, StrictStr]
    created: StrictStr | None = None
    # derived files
    parent: Parent | None = None
    calibration: Calibration | None = None
    recipe: QuantRecipe | None = None
    quantization_report: QuantizationReport | None = None

    @field_validator("schema_version")
    @classmethod
    def _known_schema(cls, v: int) -> int:
        if v < 1:
            raise _Problem("schema", v, "schema versions start at 1")
        if v > SCHEMA_VERSION:
            raise _Problem(
                "schema", v, f"written by a newer edgekit (this one reads schema {SCHEMA_VERSION}); upgrade edgekit"
            )
        return v

    @field_validator("preprocessing")
    @classmethod
    def _valid_preprocessing(cls, v: dict) -> dict:
        # Preprocessing owns its own rules; the raw dict is kept so the file round-trips.
        try:
            Preprocessing.from_dict(v)
        except BadInput as exc:
            raise _Problem("preprocessing", _FROM_REASON, exc.message) from None
        except Exception as exc:  # e.g. OverflowError from int(Infinity): still the file's fault
            raise _Problem("preprocessing", v, f"{type(exc).__name__}: {_one_line(str(exc))[:200]}") from None
        return v

    @field_validator("created")
    @classmethod
    def _iso_time(cls, v: str) -> str:
        try:
            datetime.fromisoformat(v)
        except ValueError:
            raise _Problem("created", v, "not an ISO 8601 date and time") from None
        return v

    @model_validator(mode="after")
    def _consistent(self) -> "EdgekitMetadata":
        foreign_parent = self.parent is not None and not self.parent.metadata
        if not foreign_parent:
            present = _keys_set(self)
            missing = [k for k in PROVENANCE_KEYS if k not in present]
            if missing:
                raise _Problem(missing[0], _MISSING, "edgekit writes it into every file it exports"
                               + (f" (also missing: {', '.join(missing[1:4])})" if len(missing) > 1 else ""))
        if self.precision == "int8":
            for key in ("parent", "calibration", "recipe"):
                if getattr(self, key) is None:
                    raise _Problem(key, _MISSING, "an int8 file records its parent file, calibration set and recipe")
        shape, size = self.input_shape, self.input_size
        pre = self.preprocessing_spec()
        if size is not None and pre.crop != size:
            raise _Problem("preprocessing.crop", pre.crop, f"input_size is {size}; the crop is the model's input")
        if shape is not None:
            batch, channels, height, width = shape
            if isinstance(batch, int) and not 1 <= batch <= MAX_BATCH:
                raise _Problem("input_shape[0]", batch, f"a batch must be 1 to {MAX_BATCH}")
            if self.dynamic_batch is not None and isinstance(batch, str) != self.dynamic_batch:
                raise _Problem(
                    "input_shape[0]", batch,
                    f"dynamic_batch is {str(self.dynamic_batch).lower()}, so the batch must be "
                    + ("a name like \"batch\"" if self.dynamic_batch else "a number"),
                )
            if channels != preprocessing_channels(pre):
                raise _Problem(
                    "input_shape[1]", channels, f"the preprocessing ({_channel_text(pre)}) makes {preprocessing_channels(pre)}"
                )
            for i, dim in ((2, height), (3, width)):
                if size is not None and dim != size:
                    raise _Problem(f"input_shape[{i}]", dim, f"input_size is {size}")
        return self

    # --- what callers read ---------------------------------------------------------------

    @property
    def has_provenance(self) -> bool:
        """False for a file derived from a foreign parent: no model, weights or input size is recorded."""
        return self.model is not None

    def preprocessing_spec(self) -> Preprocessing:
        """The validated preprocessing as the object every image loader takes."""
        return Preprocessing.from_dict(self.preprocessing)

    @property
    def input_channels(self) -> int:
        """Channels of the model's input, as the preprocessing makes them (1, or 3)."""
        return preprocessing_channels(self.preprocessing_spec())


class _MissingType:
    def __repr__(self) -> str:
        return "<missing>"


_MISSING = _MissingType()
_FROM_REASON = object()  # a _Problem whose reason already shows the value


def _keys_set(meta: BaseModel) -> set[str]:
    """The JSON keys given (model_fields_set holds field names: schema_version for the key 'schema')."""
    fields = type(meta).model_fields
    return {(fields[n].alias or n) if n in fields else n for n in meta.model_fields_set}


def preprocessing_channels(pre: Preprocessing) -> int:
    """Channels of the tensor the preprocessing makes (1, or 3: RGB, BGR or gray replicated)."""
    return int(getattr(pre, "input_channels", 3))


# --- reading --------------------------------------------------------------------------------


def parse_metadata(raw: str | None, where: Path) -> EdgekitMetadata | None:
    """The metadata string of `where` as an EdgekitMetadata; None when there is none (a foreign file).

    Malformed JSON, a non-object, a wrong type, a missing key or an out-of-range value is one
    BadInput line naming the file, the field and the value.
    """
    if raw is None:
        return None
    if not isinstance(raw, str):
        raise _bad(where, f"its edgekit metadata is a {type(raw).__name__}, not a JSON string")
    if len(raw) > MAX_METADATA_CHARS:
        raise _bad(where, f"its edgekit metadata is {len(raw):,} characters, over edgekit's limit of {MAX_METADATA_CHARS:,}")
    try:
        data = json.loads(raw, object_pairs_hook=_no_duplicate_keys)
    except json.JSONDecodeError as exc:
        raise _bad(where, f"its edgekit metadata is not valid JSON ({exc.msg} at character {exc.pos})") from None
    except _DuplicateKey as exc:
        raise _bad(where, f"its edgekit metadata has the key {_show(exc.key)} twice") from None
    except RecursionError:
        raise _bad(where, "its edgekit metadata is nested too deeply to read") from None
    except ValueError as exc:  # e.g. a number past Python's 4300-digit limit
        raise _bad(where, f"its edgekit metadata is not valid JSON ({_truncate(_one_line(str(exc)), 120)})") from None
    return validate_metadata(data, where)


def validate_metadata(data: Any, where: Path) -> EdgekitMetadata:
    """An already-decoded metadata value (e.g. the dict a stage is about to write) as EdgekitMetadata, or BadInput."""
    if not isinstance(data, dict):
        kind = {list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(type(data), "a number")
        raise _bad(where, f"its edgekit metadata is {kind}, not a JSON object")
    try:
        return EdgekitMetadata.model_validate(data)
    except ValidationError as exc:
        raise _from_validation_error(exc, where) from None
    except RecursionError:
        raise _bad(where, "its edgekit metadata is nested too deeply to read") from None


def metadata_of(model_proto, where: Path) -> EdgekitMetadata | None:
    """The parsed metadata of a loaded ModelProto; None for a foreign file; two `edgekit` entries is BadInput."""
    values = [p.value for p in model_proto.metadata_props if p.key == METADATA_KEY]
    if len(values) > 1:
        raise _bad(where, f"it carries {len(values)} edgekit metadata entries; a file edgekit wrote has one")
    return parse_metadata(values[0] if values else None, where)


class _DuplicateKey(Exception):
    def __init__(self, key: str):
        self.key = key


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict:
    out: dict = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


# --- checking against the graph ----------------------------------------------------------------


def check_against_graph(
    meta: EdgekitMetadata,
    graph_input_shape: list[int | str | None],
    graph_output_shape: list[int | str | None],
    where: Path,
) -> None:
    """The metadata describes this graph: input size, channels, batch, classes and crop agree where static.

    Dims are the graph's (an int when fixed; a name, None or 0 when dynamic). Disagreement is one
    BadInput line naming both values.
    """
    graph_in = [_static(d) for d in graph_input_shape]
    graph_out = [_static(d) for d in graph_output_shape]
    shown_in = _shape_text(graph_input_shape)
    if len(graph_in) != 4:
        raise _bad(where, f"its graph input has shape {shown_in}; edgekit metadata describes an (N, C, H, W) image input")
    batch, channels, height, width = graph_in
    pre = meta.preprocessing_spec()
    want_channels = preprocessing_channels(pre)

    def disagree(field: str, value: Any, graph_what: str) -> BadInput:
        return _bad(where, f"edgekit metadata field {field} is {_show(value)}, but the graph's {graph_what}")

    for i, (name, dim) in enumerate((("height", height), ("width", width)), start=2):
        if dim is not None and meta.input_size is not None and dim != meta.input_size:
            raise disagree("input_size", meta.input_size, f"input {shown_in} has {name} {dim}")
        if dim is not None and dim != pre.crop:
            raise disagree("preprocessing.crop", pre.crop, f"input {shown_in} has {name} {dim}")
    if channels is not None and channels != want_channels:
        raise disagree(
            "preprocessing", _channel_text(pre), f"input {shown_in} has {channels} channel(s), not {want_channels}"
        )
    if meta.input_shape is not None:
        recorded = meta.input_shape
        if channels is not None and recorded[1] != channels:
            raise disagree("input_shape[1]", recorded[1], f"input {shown_in} has {channels} channel(s)")
        if isinstance(recorded[0], int) and batch is not None and recorded[0] != batch:
            raise disagree("input_shape[0]", recorded[0], f"input {shown_in} has batch {batch}")
        if isinstance(recorded[0], int) and batch is None:
            raise disagree("input_shape[0]", recorded[0], f"input {shown_in} has a dynamic batch")
    if meta.dynamic_batch and batch is not None:
        raise disagree("dynamic_batch", True, f"input {shown_in} has a fixed batch of {batch}")
    if meta.num_classes is not None and graph_out:
        classes = graph_out[-1]
        if classes is not None and classes != meta.num_classes:
            raise disagree("num_classes", meta.num_classes, f"output {_shape_text(graph_output_shape)} has {classes} classes")


def _static(dim) -> int | None:
    return dim if isinstance(dim, int) and not isinstance(dim, bool) and dim > 0 else None


def _shape_text(dims) -> str:
    parts = [str(d) if _static(d) is not None else (d if isinstance(d, str) and d else "?") for d in dims]
    return _truncate("(" + ", ".join(parts) + ")")


def _channel_text(pre: Preprocessing) -> str:
    return f"channels {getattr(pre, 'channels', 'rgb')}, input_channels {preprocessing_channels(pre)}"


# --- error messages --------------------------------------------------------------------------


def _bad(where: Path, text: str) -> BadInput:
    return BadInput(f"{where}: {_one_line(text)}", hint=METADATA_HINT)


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _truncate(text: str, limit: int = VALUE_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _show(value: Any) -> str:
    """A value as JSON (so a string shows its quotes: "3" is not 3), one line, at most VALUE_CHARS."""
    try:
        text = json.dumps(value, ensure_ascii=True, allow_nan=True, default=repr)
    except (ValueError, TypeError, RecursionError):
        text = f"<{type(value).__name__}>"
    return _truncate(_one_line(text))


def _field_path(loc: tuple) -> str:
    parts = list(loc)
    if len(parts) > 1 and parts[0] == "weights" and parts[1] in WEIGHT_KINDS:
        del parts[1]  # pydantic adds the union tag to the location: weights.random.seed -> weights.seed
    text = ""
    for part in parts:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += ("." if text else "") + ("schema" if part == "schema_version" else str(part))
    return text or "(the object)"


_PREPROCESSING_FIELD = re.compile(r"^the model's preprocessing metadata field '(\w+)' is (.*)$")


def _describe(error: dict) -> tuple[str, str]:
    """(field path, the rest of the sentence: "is VALUE: why" or ": why") of one pydantic error."""
    problem = (error.get("ctx") or {}).get("error")
    if isinstance(problem, _Problem):
        prefix = _field_path(error["loc"])
        path = problem.path if prefix in ("(the object)", problem.path) else f"{prefix}.{problem.path}"
        if problem.value is _FROM_REASON:
            # Preprocessing names its own field and value: "...field 'std' is (0.0, 0.0, 0.0): fix".
            match = _PREPROCESSING_FIELD.match(_one_line(problem.reason))
            return (f"{path}.{match[1]}", f"is {match[2]}") if match else (path, f": {problem.reason}")
        return path, f"{_is(problem.value)}: {problem.reason}"
    path = _field_path(error["loc"])
    kind = error.get("type")
    value = error.get("input")
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        if not isinstance(value, dict):
            return path, f"is {_show(value)}: must be an object with a kind ({', '.join(WEIGHT_KINDS)})"
        return f"{path}.kind", f"{_is(value.get('kind', _MISSING))}: edgekit knows weights of kind {', '.join(WEIGHT_KINDS)}"
    if kind == "missing":
        return path, "is missing: edgekit writes it into every file it makes"
    return path, f"is {_show(value)}: {error.get('msg', 'invalid')}"


def _is(value: Any) -> str:
    return "is missing" if value is _MISSING else f"is {_show(value)}"


def _from_validation_error(exc: ValidationError, where: Path) -> BadInput:
    errors = exc.errors(include_url=False)
    path, rest = _describe(errors[0])
    more = f"; {len(errors) - 1} more problem(s)" if len(errors) > 1 else ""
    return _bad(where, f"edgekit metadata field {path} {_truncate(_one_line(rest), 300)}{more}")
