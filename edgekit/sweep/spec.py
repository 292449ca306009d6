"""What a sweep runs: models x targets x calibration methods x sample counts, judged on one labelled set.

Given on the command line or as a sweep file (TOML or YAML, the same keys), validated here once, and written next
to the results as sweep.yaml so a sweep can be run again exactly. Every list is checked before any work starts: an
unknown model, target or method, an empty list, a sweep file that cannot be read, is one line and exit 2.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from edgekit.core import limits
from edgekit.core.errors import BadInput, one_line
from edgekit.core.files import open_regular, shown_path
from edgekit.data.images import DEFAULT_CALIBRATION_DIR

METHODS = ("minmax", "entropy", "percentile")
MAX_JOBS = 512  # models x targets x methods x samples: a sweep bigger than this is a typo, not a plan
MAX_SWEEP_FILE_BYTES = 1 << 20


class SweepSpec(BaseModel):
    """One sweep, as declared (CLI options or a sweep file)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    models: list[str] = Field(min_length=1)
    targets: list[str] = Field(default=["auto"], min_length=1)
    methods: list[str] = Field(default=["minmax"], min_length=1)
    samples: list[int] = Field(default=[128], min_length=1)
    dataset: Path
    calibration: Path = DEFAULT_CALIBRATION_DIR
    weights: dict[str, Path] = Field(default_factory=dict)
    input_size: int | None = Field(default=None, ge=32, le=limits.MAX_INPUT_SIZE)
    resize: int | None = Field(default=None, ge=1, le=limits.MAX_INPUT_SIZE)
    dataset_samples: int | None = Field(default=None, ge=1, le=limits.MAX_IMAGES_IN_FOLDER)
    max_drop: float | None = Field(default=None, ge=0, le=limits.MAX_DROP_POINTS)  # quantize's bound (core/limits.py)
    seed: int = Field(default=0, ge=0, le=2**32 - 1)
    latency: bool = True

    @field_validator("models", "targets", "methods")
    @classmethod
    def _names(cls, values: list[str]) -> list[str]:
        cleaned = [v.strip().lower() for v in values]
        if any(not v for v in cleaned):
            raise ValueError("an empty name in the list")
        if len(set(cleaned)) != len(cleaned):
            raise ValueError(f"a name given twice: {', '.join(cleaned)}")
        return cleaned

    @field_validator("samples")
    @classmethod
    def _samples(cls, values: list[int]) -> list[int]:
        for v in values:
            limits.check_count(v, "samples", limits.MAX_SAMPLES)
        if len(set(values)) != len(values):
            raise ValueError(f"a count given twice: {values}")
        return values

    def check_names(self) -> None:
        """Every model registered, every target and method known, weights only for swept models."""
        from edgekit.models.registry import get_spec
        from edgekit.judge.targets import TARGETS

        for model in self.models:
            get_spec(model)  # BadInput naming the registered models
        for target in self.targets:
            if target not in TARGETS:
                raise BadInput(f"sweep: unknown target {target!r}", hint=f"use some of {', '.join(TARGETS)}")
        for method in self.methods:
            if method not in METHODS:
                raise BadInput(f"sweep: unknown calibration method {method!r}", hint=f"use some of {', '.join(METHODS)}")
        stray = sorted(set(self.weights) - set(self.models))
        if stray:
            raise BadInput(f"sweep: --weights for {', '.join(stray)}, which is not among the models swept",
                           hint="give --weights MODEL=FILE for a model of --models")
        jobs = len(self.models) * len(self.targets) * len(self.methods) * len(self.samples)
        if jobs > MAX_JOBS:
            raise BadInput(f"sweep: {jobs} jobs, over edgekit's limit of {MAX_JOBS} for one sweep",
                           hint="split it into several sweeps")

    def for_file(self) -> dict:
        """The spec as a sweep file holds it (paths absolute, as strings: the file runs from any folder)."""
        data = self.model_dump(mode="json")
        for key in ("dataset", "calibration"):
            data[key] = str(Path(data[key]).resolve())
        data["weights"] = {m: str(Path(f).resolve()) for m, f in data["weights"].items()}
        return data


def spec_from(values: dict, where: str) -> SweepSpec:
    """Validate a sweep's settings; the first problem is one line naming the key."""
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


def split_list(text: str | None) -> list[str] | None:
    """A comma-separated CLI list; None when the option was not given."""
    return None if text is None else [part for part in (p.strip() for p in text.split(",")) if part]
