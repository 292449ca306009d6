"""The `edgekit` metadata object of an .onnx file, read as untrusted input.

A file's metadata decides which PyTorch model verify rebuilds, which seed it uses, how images are
preprocessed and how large the tensors are, so anything may be in it: a hand-edited value, a
truncated string, a file from a newer edgekit. `parse_metadata` turns the raw JSON string into an
`EdgekitMetadata` or one BadInput line (exit 2) naming the file, the field, the value and what to
do; it never falls back to a default. `check_against_graph` then checks the metadata against the
graph it describes.

Forward compatibility: keys this edgekit does not know are kept (so a file round-trips) but no
code reads them; a newer *schema* version is refused, since it may mean the known keys changed.

This module reads, checks against the graph and words the errors; the fields and their rules are
metadata_schema.py's (its public names are importable from here too).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from edgekit.core.errors import BadInput
from edgekit.core.limits import MAX_METADATA_CHARS
from edgekit.onnxfile.metadata_schema import (  # noqa: F401  (the schema's public names, importable from here too)
    FROM_REASON,
    MISSING,
    PRECISIONS,
    PROVENANCE_KEYS,
    SCHEMA_VERSION,
    WEIGHT_KINDS,
    EdgekitMetadata,
    MetadataProblem,
    channel_text,
    collapse_whitespace,
    preprocessing_channels,
)

METADATA_KEY = "edgekit"  # the metadata_props key of the provenance object

METADATA_HINT = "re-export the file, or strip its edgekit metadata and pass --model/--weights"
VALUE_CHARS = 60  # an offending value is shown up to this many characters


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
        raise _bad(where, f"its edgekit metadata is not valid JSON ({_truncate(collapse_whitespace(str(exc)), 120)})") from None
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
        if dim is not None and dim != pre.crop_hw[i - 2]:
            raise disagree("preprocessing.crop", pre.crop, f"input {shown_in} has {name} {dim}")
    if channels is not None and channels != want_channels:
        raise disagree(
            "preprocessing", channel_text(pre), f"input {shown_in} has {channels} channel(s), not {want_channels}"
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


# --- error messages --------------------------------------------------------------------------


def _bad(where: Path, text: str) -> BadInput:
    return BadInput(f"{where}: {collapse_whitespace(text)}", hint=METADATA_HINT)


def _truncate(text: str, limit: int = VALUE_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _show(value: Any) -> str:
    """A value as JSON (so a string shows its quotes: "3" is not 3), one line, at most VALUE_CHARS."""
    try:
        text = json.dumps(value, ensure_ascii=True, allow_nan=True, default=repr)
    except (ValueError, TypeError, RecursionError):
        text = f"<{type(value).__name__}>"
    return _truncate(collapse_whitespace(text))


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
    if isinstance(problem, MetadataProblem):
        prefix = _field_path(error["loc"])
        path = problem.path if prefix in ("(the object)", problem.path) else f"{prefix}.{problem.path}"
        if problem.value is FROM_REASON:
            # Preprocessing names its own field and value: "...field 'std' is (0.0, 0.0, 0.0): fix".
            match = _PREPROCESSING_FIELD.match(collapse_whitespace(problem.reason))
            return (f"{path}.{match[1]}", f"is {match[2]}") if match else (path, f": {problem.reason}")
        return path, f"{_is(problem.value)}: {problem.reason}"
    path = _field_path(error["loc"])
    kind = error.get("type")
    value = error.get("input")
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        if not isinstance(value, dict):
            return path, f"is {_show(value)}: must be an object with a kind ({', '.join(WEIGHT_KINDS)})"
        return f"{path}.kind", f"{_is(value.get('kind', MISSING))}: edgekit knows weights of kind {', '.join(WEIGHT_KINDS)}"
    if kind == "missing":
        return path, "is missing: edgekit writes it into every file it makes"
    return path, f"is {_show(value)}: {error.get('msg', 'invalid')}"


def _is(value: Any) -> str:
    return "is missing" if value is MISSING else f"is {_show(value)}"


def _from_validation_error(exc: ValidationError, where: Path) -> BadInput:
    errors = exc.errors(include_url=False)
    path, rest = _describe(errors[0])
    more = f"; {len(errors) - 1} more problem(s)" if len(errors) > 1 else ""
    return _bad(where, f"edgekit metadata field {path} {_truncate(collapse_whitespace(rest), 300)}{more}")
