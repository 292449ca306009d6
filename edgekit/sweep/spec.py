"""What a sweep runs: models x every swept quantize knob x runtimes, judged on one labelled set.

The knobs are `QuantizeOptions`' own (quantize/options.py): each can be swept (a list of values: `--sweep
max_drop=0.5,1,2`, or `sweep: {max_drop: [0.5, 1, 2]}` in a sweep file) or fixed for every job (`--set
rewrites=false`, `quantize: {rewrites: false}`), and each value is converted and bounded by the knob itself
(core/knobs.py `checked_knob`): no range is written twice. `--targets`, `--methods` and `--samples` are the
sweep's long-standing names for sweeping `target`, `method` and `samples`. A point of the sweep is one int8 file
in one runtime (`--runtimes ort,openvino`).

Given on the command line or as a sweep file (TOML or YAML, the same keys), validated here once, and written next
to the results as sweep.yaml so a sweep can be run again exactly. Every list is checked before any work starts: an
unknown model, target, method, knob or runtime, an empty list, a value out of its knob's range, a sweep file that
cannot be read, is one line and exit 2 (openvino asked for where it is not installed: exit 3).
"""

from __future__ import annotations

import dataclasses
import itertools
import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from edgekit.core import limits
from edgekit.core.errors import BadInput, one_line
from edgekit.core.files import open_regular, shown_path
from edgekit.core.knobs import checked_knob, described, knob_range
from edgekit.data.images import DEFAULT_CALIBRATION_DIR
from edgekit.quantize.options import DEFAULT_SAMPLES, QuantizeOptions
from edgekit.verify.options import VerifyOptions

METHODS = described(QuantizeOptions, "method").metadata["choices"]  # the method knob's own
MAX_JOBS = 512  # models x swept values x runtimes: a sweep bigger than this is a typo, not a plan
MAX_SWEEP_FILE_BYTES = 1 << 20
KNOBS = tuple(f.name for f in dataclasses.fields(QuantizeOptions))
LISTED = {"target": "targets", "method": "methods", "samples": "samples"}  # swept knobs with a list of their own
OWNED = {  # quantize knobs the sweep sets itself, and why
    "output": "the sweep writes each int8 file under -o/files/",
    "ranges_cache": "the sweep keeps its activation ranges in -o/calibration/",
    "calibration": "one calibration set per sweep: give --calibration",
    "seed": "one seed per sweep (the exports, the labelled pick and every quantize): give --seed",
}
_SAMPLES_LOW, _SAMPLES_HIGH = knob_range(QuantizeOptions, "samples")
_SEED_LOW, _SEED_HIGH = knob_range(QuantizeOptions, "seed")
_DROP_LOW, _DROP_HIGH = knob_range(QuantizeOptions, "max_drop")
_PICK_LOW, _PICK_HIGH = knob_range(VerifyOptions, "dataset_samples")


class SweepSpec(BaseModel):
    """One sweep, as declared (CLI options or a sweep file)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    models: list[str] = Field(min_length=1)
    targets: list[str] = Field(default=["auto"], min_length=1)
    methods: list[str] = Field(default=["minmax"], min_length=1)
    samples: list[int] = Field(default=[DEFAULT_SAMPLES], min_length=1)
    quantize: dict[str, Any] = Field(default_factory=dict)  # quantize knobs fixed for every job
    sweep: dict[str, list[Any]] = Field(default_factory=dict)  # quantize knobs swept, beyond target/method/samples
    runtimes: list[str] = Field(default=["ort"], min_length=1)  # each file is judged and timed in each
    dataset: Path
    calibration: Path = DEFAULT_CALIBRATION_DIR
    weights: dict[str, Path] = Field(default_factory=dict)
    input_size: int | None = Field(default=None, ge=32, le=limits.MAX_INPUT_SIZE)
    resize: int | None = Field(default=None, ge=1, le=limits.MAX_INPUT_SIZE)
    dataset_samples: int | None = Field(default=None, ge=_PICK_LOW, le=_PICK_HIGH)  # verify's bound
    max_drop: float | None = Field(default=None, ge=_DROP_LOW, le=_DROP_HIGH)  # the best file's budget; quantize's bound
    seed: int = Field(default=0, ge=_SEED_LOW, le=_SEED_HIGH)  # quantize's seed knob's bound
    latency: bool = True

    @field_validator("models", "targets", "methods", "runtimes")
    @classmethod
    def _names(cls, values: list[str]) -> list[str]:
        cleaned = [str(v).strip().lower() for v in values]
        if any(not v for v in cleaned):
            raise ValueError("an empty name in the list")
        if len(set(cleaned)) != len(cleaned):
            raise ValueError(f"a name given twice: {', '.join(cleaned)}")
        return cleaned

    @field_validator("samples")
    @classmethod
    def _samples(cls, values: list[int]) -> list[int]:
        for v in values:
            limits.check_count(v, "samples", int(_SAMPLES_HIGH), minimum=int(_SAMPLES_LOW))
        if len(set(values)) != len(values):
            raise ValueError(f"a count given twice: {values}")
        return values

    def axes(self) -> dict[str, list]:
        """Every swept quantize knob and its values, in the order rows are listed: target, method, samples, then
        the knobs of `sweep` in the order given."""
        return {"target": self.targets, "method": self.methods, "samples": self.samples, **self.sweep}

    def points(self) -> list[dict]:
        """Each combination of the swept knobs' values (one quantize job per model each)."""
        axes = self.axes()
        return [dict(zip(axes, values)) for values in itertools.product(*axes.values())]

    def options_for(self, point: dict) -> dict:
        """The quantize knobs of one job (JSON values): the fixed ones, then the point's. A budget (`max_drop`)
        without a `dataset` of its own is measured on the sweep's labelled set (said in the results' notes)."""
        options = {**self.quantize, **point}
        if options.get("max_drop") is not None and options.get("dataset") is None:
            options["dataset"] = str(Path(self.dataset).resolve())
        return options

    def budget_note(self) -> str | None:
        budgets = self.sweep.get("max_drop") or [self.quantize.get("max_drop")]
        if any(b is not None for b in budgets) and self.quantize.get("dataset") is None:
            return ("quantize's max_drop budget is measured on --dataset, the set the rows are judged on: its fallback "
                    "is fitted to it (give --set dataset=DIR for a set of its own)")
        return None

    def check_names(self) -> None:
        """Every model registered, every target, method and runtime known, weights only for swept models."""
        from edgekit.models.registry import get_spec
        from edgekit.judge.targets import TARGETS
        from edgekit.runtimes.openvino_model import parse_runtimes

        for model in self.models:
            get_spec(model)  # BadInput naming the registered models
        for target in self.targets:
            if target not in TARGETS:
                raise BadInput(f"sweep: unknown target {target!r}", hint=f"use some of {', '.join(TARGETS)}")
        for method in self.methods:
            if method not in METHODS:
                raise BadInput(f"sweep: unknown calibration method {method!r}", hint=f"use some of {', '.join(METHODS)}")
        parse_runtimes(self.runtimes)  # unknown: exit 2; openvino not installed: exit 3, before any work
        stray = sorted(set(self.weights) - set(self.models))
        if stray:
            raise BadInput(f"sweep: --weights for {', '.join(stray)}, which is not among the models swept",
                           hint="give --weights MODEL=FILE for a model of --models")
        jobs = len(self.models) * len(self.points()) * len(self.runtimes)
        if jobs > MAX_JOBS:
            raise BadInput(f"sweep: {jobs} jobs, over edgekit's limit of {MAX_JOBS} for one sweep",
                           hint="split it into several sweeps")

    def for_file(self) -> dict:
        """The spec as a sweep file holds it (paths absolute, as strings: the file runs from any folder)."""
        data = self.model_dump(mode="json")
        for key in ("dataset", "calibration"):
            data[key] = str(Path(data[key]).resolve())
        data["weights"] = {m: str(Path(f).resolve()) for m, f in data["weights"].items()}
        if data["quantize"].get("dataset") is not None:
            data["quantize"]["dataset"] = str(Path(data["quantize"]["dataset"]).resolve())
        return data


def _json_value(value: Any) -> Any:
    """A converted knob value as JSON holds it (Paths as strings, tuples as lists)."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (tuple, list)):
        return [_json_value(v) for v in value]
    return value


def checked_knobs(values: dict, where: str) -> dict:
    """`quantize` (fixed knobs) and `sweep` (swept knobs) of a sweep's settings: every name a quantize knob the sweep
    does not set itself, every value converted and bounded by its knob; swept target/method/samples moved to their
    own lists. Returns the settings with both rewritten; the first problem is one BadInput line."""
    values = dict(values)
    fixed, swept = values.get("quantize") or {}, values.get("sweep") or {}
    for key, given in (("quantize", fixed), ("sweep", swept)):
        if not isinstance(given, dict):
            raise BadInput(f"{where}: {key} must be a mapping of quantize knobs to values")
    both = sorted(set(fixed) & set(swept))
    if both:
        raise BadInput(f"{where}: {both[0]} is both fixed and swept", hint="give it once: --set or --sweep")
    for name in (*fixed, *swept):
        if name not in KNOBS:
            raise BadInput(f"{where}: {name!r} is not a quantize knob", hint=f"knobs: {', '.join(k for k in KNOBS if k not in OWNED)}")
        if name in OWNED:
            raise BadInput(f"{where}: {name} is the sweep's own: {OWNED[name]}")
    checked_fixed = {}
    for name, value in fixed.items():
        if name in LISTED:  # --set target=x is a sweep of one value
            swept = {**swept, name: [value]}
            continue
        checked_fixed[name] = _json_value(checked_knob(QuantizeOptions, name, value, where))
    checked_swept = {}
    for name, given in swept.items():
        if not isinstance(given, list) or not given:
            raise BadInput(f"{where}: sweep {name} needs a non-empty list of values", hint=f"e.g. --sweep {name}=V1,V2")
        converted = [_json_value(checked_knob(QuantizeOptions, name, v, where)) for v in given]
        if len({repr(v) for v in converted}) != len(converted):
            raise BadInput(f"{where}: sweep {name}: a value given twice: {', '.join(map(str, given))}")
        if name in LISTED:
            if values.get(LISTED[name]) is not None:
                raise BadInput(f"{where}: {name} is swept twice (--{LISTED[name]} and --sweep {name})", hint="give it once")
            values[LISTED[name]] = converted
        else:
            checked_swept[name] = converted
    values["quantize"], values["sweep"] = checked_fixed, checked_swept
    return values


def spec_from(values: dict, where: str) -> SweepSpec:
    """Validate a sweep's settings; the first problem is one line naming the key."""
    values = checked_knobs(values, where)
    try:
        spec = SweepSpec.model_validate(values)
    except ValidationError as exc:
        error = exc.errors()[0]
        key = ".".join(str(p) for p in error["loc"]) or "sweep"
        raise BadInput(f"{where}: {key}: {one_line(error['msg'], 160)}",
                       hint="see `edgekit sweep --help` for the keys and their ranges") from None
    spec.check_names()
    return spec


def read_sweep_file(path: Path) -> dict:
    """A sweep file's settings: TOML (.toml) or YAML (.yaml, .yml), one mapping of the sweep's keys."""
    path = Path(path)
    shown = shown_path(path)
    if path.suffix.lower() not in (".toml", ".yaml", ".yml"):
        raise BadInput(f"sweep file {shown} is neither .toml nor .yaml", hint="name it sweep.toml or sweep.yaml")
    try:
        with open_regular(path) as handle:
            raw = handle.read(MAX_SWEEP_FILE_BYTES + 1)
    except (OSError, ValueError) as exc:
        raise BadInput(f"sweep file {shown} cannot be read: {one_line(exc)}",
                       hint="give the path of a readable TOML or YAML file") from None
    if len(raw) > MAX_SWEEP_FILE_BYTES:
        raise BadInput(f"sweep file {shown} is over {MAX_SWEEP_FILE_BYTES >> 10} KiB; a sweep file is a few lines")
    try:
        text = raw.decode("utf-8")
        if path.suffix.lower() == ".toml":
            import tomllib

            data = tomllib.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except ImportError:
        raise BadInput(f"sweep file {shown}: reading YAML needs PyYAML", hint="pip install 'edgekit[sweep]', or use TOML") from None
    except Exception as exc:  # TOMLDecodeError, YAMLError, UnicodeDecodeError: the file's fault
        raise BadInput(f"sweep file {shown} is not valid {path.suffix[1:].upper()}: {one_line(exc, 160)}") from None
    if not isinstance(data, dict):
        raise BadInput(f"sweep file {shown} does not hold a mapping of settings", hint="keys: models, targets, methods, ...")
    base = path.parent
    for key in ("dataset", "calibration"):  # relative paths in a sweep file are relative to the file
        if isinstance(data.get(key), str) and not os.path.isabs(data[key]):
            data[key] = str(base / data[key])
    if isinstance(data.get("weights"), dict):
        data["weights"] = {m: (f if not isinstance(f, str) or os.path.isabs(f) else str(base / f))
                           for m, f in data["weights"].items()}
    relative = (lambda f: f if not isinstance(f, str) or os.path.isabs(f) else str(base / f))
    if isinstance(data.get("quantize"), dict) and "dataset" in data["quantize"]:
        data["quantize"] = {**data["quantize"], "dataset": relative(data["quantize"]["dataset"])}
    if isinstance(data.get("sweep"), dict) and isinstance(data["sweep"].get("dataset"), list):
        data["sweep"] = {**data["sweep"], "dataset": [relative(f) for f in data["sweep"]["dataset"]]}
    return data


def parse_weights(items: list[str]) -> dict[str, str]:
    """--weights MODEL=FILE, repeatable."""
    out: dict[str, str] = {}
    for item in items:
        model, sep, file = item.partition("=")
        if not sep or not model.strip() or not file.strip():
            raise BadInput(f"--weights {item!r} is not MODEL=FILE", hint="e.g. --weights resnet18=ckpt/resnet18.safetensors")
        if model.strip().lower() in out:
            raise BadInput(f"--weights names {model.strip()} twice")
        out[model.strip().lower()] = file.strip()
    return out


def parse_assignments(items: list[str], option: str) -> dict[str, Any]:
    """--sweep KNOB=V1,V2 (a list per knob) or --set KNOB=VALUE (one value), repeatable; the values are text, converted
    by their knobs later. For --sweep, a value of a list knob (exclude) joins its names with '+'; for --set, a list
    knob takes its names comma-separated. `none` is no value (the knob's default)."""
    out: dict[str, Any] = {}
    for item in items:
        name, sep, text = item.partition("=")
        name = name.strip().replace("-", "_")
        if not sep or not name:
            raise BadInput(f"{option} {item!r} is not KNOB=VALUE", hint=f"e.g. {option} max_drop=" + (
                "0.5,1,2" if option == "--sweep" else "1"))
        if name in out:
            raise BadInput(f"{option} names {name} twice", hint="give each knob once")
        listed = name in KNOBS and "tuple" in str(dataclasses.fields(QuantizeOptions)[KNOBS.index(name)].type)
        if option == "--sweep":
            parts = [p.strip() for p in text.split(",")]
            if any(not p for p in parts):
                raise BadInput(f"--sweep {item!r}: an empty value in the list", hint=f"e.g. --sweep {name}=V1,V2")
            out[name] = [_text_value(p, listed, "+") for p in parts]
        else:
            out[name] = _text_value(text.strip(), listed, ",")
    return out


def _text_value(text: str, listed: bool, separator: str) -> Any:
    if text.lower() == "none":
        return [] if listed else None
    return [p.strip() for p in text.split(separator) if p.strip()] if listed else text


def split_list(text: str | None) -> list[str] | None:
    """A comma-separated CLI list; None when the option was not given."""
    return None if text is None else [part for part in (p.strip() for p in text.split(",")) if part]
