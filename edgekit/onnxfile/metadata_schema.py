"""The fields of the `edgekit` metadata object and the rules each obeys (pydantic models), with the
cross-field checks that join them. A rule that fails raises a MetadataProblem naming its field and
value; metadata.py reads the raw string into these models and words every failure as one BadInput line.
"""

from __future__ import annotations

from datetime import datetime
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
    field_validator,
    model_validator,
)

from edgekit.core.errors import BadInput
from edgekit.core.limits import MAX_BATCH, MAX_CLASSES, MAX_INPUT_SIZE, MAX_OPSET, MAX_SAMPLES, MIN_OPSET
from edgekit.data.preprocessing import Preprocessing

SCHEMA_VERSION = 1  # bumped only when a key changes meaning; new keys alone do not bump it
PRECISIONS = ("fp32", "fp16", "int8")
TASKS = ("classify", "dense")  # dense: detection/segmentation maps, judged by SQNR/cosine/max abs, never by top-1
WEIGHT_KINDS = ("random", "file", "pretrained")
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


class MetadataProblem(ValueError):
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
                    raise MetadataProblem(key, None, "null is not allowed here; leave the key out or give a value")
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


class EntryPoint(_Part):
    """A user's own PyTorch model the file was exported from (`export file.py:factory`, `pkg.module:factory`,
    `timm:name`). verify never imports it by itself: the user names it again and its sha256 is checked."""

    kind: Literal["file", "module", "timm"]
    spec: Name  # as the user gave it: "mynet.py:build", "mypkg.nets:build", "timm:resnet50d"
    factory: Name  # the callable's name (timm: the model name)
    path: Name | None = None  # the source file that was imported (file and module kinds)
    sha256: Sha256 | None = None  # of that source file


class Imported(_Part):
    """The foreign ONNX file an imported file was normalised from (`edgekit import`), and what was changed."""

    file: Name
    path: Name | None = None  # where the original was when it was imported (verify looks there too, sha256-checked)
    sha256: Sha256
    opset: StrictInt = Field(ge=1, le=MAX_OPSET)  # the original's default-domain opset
    producer: StrictStr | None = None  # producer_name and version, as the original says
    changes: list[StrictStr]
    check: dict[str, Any] | None = None  # the normalised file against the original in ONNX Runtime
    weights: Literal["untrained"] | None = None  # declared by the user (import --untrained): the loose gates apply


class Parent(_Part):
    """The file a derived (int8, fp16) file was made from."""

    file: Name
    path: Name | None = None  # where the parent was when this file was made (looked at too, sha256-checked)
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
    task: Literal["classify", "dense"] | None = None  # absent: classify (every file before imports)
    entry: EntryPoint | None = None  # a user's own module (source "user" or "timm")
    imported: Imported | None = None  # an imported foreign file: no PyTorch provenance, its reference is ONNX
    # derived files
    parent: Parent | None = None
    calibration: Calibration | None = None
    recipe: QuantRecipe | None = None
    quantization_report: QuantizationReport | None = None

    @field_validator("schema_version")
    @classmethod
    def _known_schema(cls, v: int) -> int:
        if v < 1:
            raise MetadataProblem("schema", v, "schema versions start at 1")
        if v > SCHEMA_VERSION:
            raise MetadataProblem(
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
            raise MetadataProblem("preprocessing", FROM_REASON, exc.message) from None
        except Exception as exc:  # e.g. OverflowError from int(Infinity): still the file's fault
            raise MetadataProblem("preprocessing", v, f"{type(exc).__name__}: {collapse_whitespace(str(exc))[:200]}") from None
        return v

    @field_validator("created")
    @classmethod
    def _iso_time(cls, v: str) -> str:
        try:
            datetime.fromisoformat(v)
        except ValueError:
            raise MetadataProblem("created", v, "not an ISO 8601 date and time") from None
        return v

    @model_validator(mode="after")
    def _consistent(self) -> "EdgekitMetadata":
        foreign_parent = self.parent is not None and not self.parent.metadata
        if self.imported is not None:
            for key in ("input_shape", "input_name", "output_name", "opset"):
                if getattr(self, key) is None:
                    raise MetadataProblem(key, MISSING, "edgekit import writes it into every file it imports")
        elif not foreign_parent:
            present = _keys_set(self)
            missing = [k for k in PROVENANCE_KEYS if k not in present]
            if missing:
                raise MetadataProblem(missing[0], MISSING, "edgekit writes it into every file it exports"
                               + (f" (also missing: {', '.join(missing[1:4])})" if len(missing) > 1 else ""))
        if self.precision == "int8":
            for key in ("parent", "calibration", "recipe"):
                if getattr(self, key) is None:
                    raise MetadataProblem(key, MISSING, "an int8 file records its parent file, calibration set and recipe")
        shape, size = self.input_shape, self.input_size
        pre = self.preprocessing_spec()
        if size is not None and pre.crop != size:
            raise MetadataProblem("preprocessing.crop", pre.crop, f"input_size is {size}; the crop is the model's input")
        if shape is not None:
            batch, channels, height, width = shape
            if isinstance(batch, int) and not 1 <= batch <= MAX_BATCH:
                raise MetadataProblem("input_shape[0]", batch, f"a batch must be 1 to {MAX_BATCH}")
            if self.dynamic_batch is not None and isinstance(batch, str) != self.dynamic_batch:
                raise MetadataProblem(
                    "input_shape[0]", batch,
                    f"dynamic_batch is {str(self.dynamic_batch).lower()}, so the batch must be "
                    + ("a name like \"batch\"" if self.dynamic_batch else "a number"),
                )
            if channels != preprocessing_channels(pre):
                raise MetadataProblem(
                    "input_shape[1]", channels, f"the preprocessing ({channel_text(pre)}) makes {preprocessing_channels(pre)}"
                )
            for i, dim in ((2, height), (3, width)):
                if size is not None and dim != size:
                    raise MetadataProblem(f"input_shape[{i}]", dim, f"input_size is {size}")
        return self

    # --- what callers read ---------------------------------------------------------------

    @property
    def has_provenance(self) -> bool:
        """False for a file derived from a foreign parent and for an imported file: no PyTorch model is recorded."""
        return self.model is not None and self.imported is None

    @property
    def is_imported(self) -> bool:
        """An imported foreign file or one derived from it: its reference is ONNX (the original, or the fp32 parent)."""
        return self.imported is not None

    @property
    def task_kind(self) -> str:
        return self.task or "classify"

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


MISSING = _MissingType()
FROM_REASON = object()  # a MetadataProblem whose reason already shows the value


def _keys_set(meta: BaseModel) -> set[str]:
    """The JSON keys given (model_fields_set holds field names: schema_version for the key 'schema')."""
    fields = type(meta).model_fields
    return {(fields[n].alias or n) if n in fields else n for n in meta.model_fields_set}


def preprocessing_channels(pre: Preprocessing) -> int:
    """Channels of the tensor the preprocessing makes (1, or 3: RGB, BGR or gray replicated)."""
    return int(getattr(pre, "input_channels", 3))


def channel_text(pre: Preprocessing) -> str:
    return f"channels {getattr(pre, 'channels', 'rgb')}, input_channels {preprocessing_channels(pre)}"


def collapse_whitespace(text: str) -> str:
    """Every run of whitespace (newlines, tabs) as one space, so a message stays on one line; all of the text is
    kept (errors.one_line, by contrast, keeps only an exception's first line)."""
    return " ".join(str(text).split())
