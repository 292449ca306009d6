"""The model's preprocessing contract: how an image becomes the tensor the model takes.

Stored in every file's metadata and read back by every command that feeds images (export's
check, calibration, verify, bench, the device bundle). The steps follow torchvision's
ImageClassification preset exactly on PIL images, so a model trained with torchvision's
transforms sees the same numbers here.
"""

from __future__ import annotations

import json
import math
import numbers
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgekit.ondevice.preprocess import crop_uint8, normalize, to_rgb  # noqa: F401  (one implementation, shared with the device check)
from edgekit.core.errors import BadInput

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MAX_IMAGE_SIDE = 4096  # ceiling for resize and crop: a typo (22400) would otherwise allocate gigabytes per image
INTERPOLATIONS = ("bilinear", "bicubic", "nearest")
CHANNELS = ("rgb", "bgr", "gray")
FORMAT_VERSION = 2
_KEYS = ("resize", "crop", "mean", "std", "interpolation", "channels", "input_channels", "pad_value")
LETTERBOX = "letterbox"  # resize keeping the aspect so the image fits the crop (H x W), pad right/bottom
# what from_dict and a --preprocessing-file accept: today's keys plus the first form's channel_order
_ACCEPTED = frozenset(_KEYS) | {"version", "layout", "channel_order"}


class _FieldError(BadInput):
    """One field is wrong; callers re-raise it naming where the value came from (option, file, metadata)."""

    def __init__(self, field: str, value, fix: str):
        self.field, self.shown, self.fix = field, _show(value), fix
        super().__init__(f"the preprocessing field '{field}' is {self.shown}: {fix}")

    def named(self, label: str) -> BadInput:
        return BadInput(f"{label} is {self.shown}: {self.fix}")


@dataclass(frozen=True)
class Preprocessing:
    """What a model expects, applied in this order to a PIL image (any mode):

    1. `channels`: "rgb", "bgr" (RGB with the channel axis reversed at the end) or "gray"
       (PIL's convert("L"), ITU-R 601 luma); the model takes `input_channels` (1, or 3 for gray
       replicated into 3 channels, as torchvision's Grayscale(num_output_channels=3) does).
    2. resize with `interpolation`: `resize=N` scales the shorter side to N (longer side
       truncated, torchvision's `Resize(N)`) then centre-crops `crop` x `crop`;
       `resize=None` resizes the whole image straight to `crop` x `crop`, aspect not kept,
       no crop (torchvision's `Resize((crop, crop))`: how small-image models such as 8x8
       digits upscaled to 32x32 are trained).
       `resize="letterbox"` (OCR/detection style): scale the image so it fits inside H x W keeping its aspect
       (scale = min(W/w, H/h), sides rounded, at least 1 px), place it top-left and fill the right/bottom
       with the pixel value `pad_value` (0..255, the same in every channel, before normalisation).
       `crop` is the model's input: N (square) or (H, W); a square (N, N) is stored as N.
    3. x / 255, then (x - mean) / std per channel, mean and std in the model's channel order
       (one value for a gray model broadcasts); layout NCHW.
    """

    resize: int | str | None
    crop: int | tuple[int, int]
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    interpolation: str = "bilinear"
    channels: str = "rgb"
    input_channels: int = 3
    layout: str = "NCHW"
    pad_value: int | None = None  # letterbox only: the fill, a pixel value 0..255 before normalisation

    def __post_init__(self):
        # every path (CLI options, metadata, JSON file, direct construction) is checked here
        resize, crop = self.resize, self.crop
        if isinstance(crop, (tuple, list)) and len(crop) == 2:
            for side in crop:
                _check_side("crop", side, "the model's input size in pixels: N, or HxW")
            crop = int(crop[0]) if crop[0] == crop[1] else (int(crop[0]), int(crop[1]))
            object.__setattr__(self, "crop", crop)  # frozen: a square (N, N) is N, so old readers see an int
        else:
            _check_side("crop", crop, "the model's input size in pixels: N, or HxW")
        if resize == LETTERBOX:
            pad = 0 if self.pad_value is None else self.pad_value
            if not _is_int(pad) or not 0 <= pad <= 255:
                raise _FieldError("pad_value", pad, "give the fill of the padding as a pixel value, 0 to 255")
            object.__setattr__(self, "pad_value", int(pad))
        else:
            if self.pad_value is not None:
                raise _FieldError("pad_value", self.pad_value, "only a letterbox resize pads; drop it or use "
                                                               "resize letterbox")
            if resize is not None:
                _check_side("resize", resize, "the shorter side in pixels, none to resize straight to the crop, "
                                              "or letterbox")
            if resize is not None and max(self.crop_hw) > resize:
                raise _FieldError("crop", crop, f"larger than resize {resize}; the crop is cut from the resized "
                                                "image, so give resize >= crop (or resize none)")
        if self.interpolation not in INTERPOLATIONS:
            raise _FieldError("interpolation", self.interpolation, f"use one of {', '.join(INTERPOLATIONS)}")
        if self.channels not in CHANNELS:
            raise _FieldError("channels", self.channels, f"use one of {', '.join(CHANNELS)}")
        if self.input_channels not in (1, 3) or isinstance(self.input_channels, bool):
            raise _FieldError("input_channels", self.input_channels, "the model's first convolution takes 1 or 3")
        if self.channels != "gray" and self.input_channels != 3:
            raise _FieldError("input_channels", self.input_channels, f"a {self.channels} model takes 3 channels; "
                                                                      "use channels gray for a 1-channel model")
        if self.layout != "NCHW":
            raise _FieldError("layout", self.layout, "edgekit feeds NCHW tensors only")
        counts = (3,) if self.channels != "gray" else (1,) if self.input_channels == 1 else (1, 3)
        for name in ("mean", "std"):
            values = _check_values(name, getattr(self, name), counts, self.channels, self.input_channels)
            object.__setattr__(self, name, values)  # frozen: normalise lists and numpy scalars to a float tuple

    @classmethod
    def for_input_size(cls, size) -> "Preprocessing":
        """torchvision's ImageNet evaluation recipe scaled to `size` (resize 256 -> crop 224); for a non-square
        (H, W) input, its mean and std with a straight resize to H x W (no crop)."""
        if isinstance(size, tuple) and size[0] != size[1]:
            return cls(resize=None, crop=size)
        size = size[0] if isinstance(size, tuple) else size
        return cls(resize=int(round(size * 256 / 224)), crop=size)

    @classmethod
    def from_dict(cls, data) -> "Preprocessing":
        """From a file's metadata: today's form (to_dict) or the first one (channel_order "RGB"/"BGR", no version)."""
        label = "the model's preprocessing metadata"
        values = _read_mapping(data, label)
        missing = [key for key in ("resize", "crop", "mean", "std") if key not in values]
        if missing:
            raise BadInput(f"{label} has no {', '.join(missing)}; re-export the model or pass its preprocessing")
        try:
            return cls(**values)
        except _FieldError as exc:
            raise exc.named(f"{label} field '{exc.field}'") from None

    def to_dict(self) -> dict:
        """JSON-ready, with a version so that readers can tell it from the first form."""
        crop = self.crop if isinstance(self.crop, int) else list(self.crop)
        out = {"version": FORMAT_VERSION, "resize": self.resize, "crop": crop, "mean": list(self.mean),
               "std": list(self.std), "interpolation": self.interpolation, "channels": self.channels,
               "input_channels": self.input_channels, "layout": self.layout}
        if self.pad_value is not None:  # letterbox only, so every other file's dict is as before
            out["pad_value"] = self.pad_value
        return out

    @classmethod
    def from_options(cls, input_size, *, resize=None, crop=None, mean=None, std=None, interpolation=None,
                     channels=None, input_channels=None, pad_value=None, file: str | Path | None = None,
                     size_option: str = "--input-size", size_fix: str | None = None) -> "Preprocessing":
        """From CLI options (None = not given; strings such as "none" or "0.5,0.5,0.5" are parsed) over a JSON
        `file` of the same keys over for_input_size(input_size)'s values. The crop is the model's input size
        (N, or a (H, W) tuple for a non-square input)."""
        if isinstance(input_size, tuple):
            size = (int(input_size[0]), int(input_size[1]))
            size = size[0] if size[0] == size[1] else size
        else:
            size = _parse("input_size", input_size, label="--input-size")
        if not all(1 <= s <= MAX_IMAGE_SIDE for s in ((size,) if isinstance(size, int) else size)):
            raise BadInput(f"--input-size {input_size!r}: give the model's input size, 1..{MAX_IMAGE_SIDE} pixels")
        values, labels = {}, {}
        if file is not None:
            values.update(_read_mapping(_load_json(Path(file)), f"preprocessing file {file}"))
            labels.update({key: f"preprocessing file {file} field '{key}'" for key in values})
        given = {"resize": resize, "crop": crop, "mean": mean, "std": std, "interpolation": interpolation,
                 "channels": channels, "input_channels": input_channels, "pad_value": pad_value}
        for key, raw in given.items():
            if raw is not None:
                option = "--" + key.replace("_", "-")
                values[key] = _parse(key, raw, label=option)
                labels[key] = option
        values.setdefault("crop", size)
        if _square(values["crop"]) != size:
            fix = size_fix or f"pass {size_option} {_side_text(values['crop'])} or drop the crop"
            raise BadInput(f"{labels['crop']} is {_side_text(values['crop'])} but {size_option} is {_side_text(size)}: "
                           f"the crop is the model's input size; {fix}")
        default = cls.for_input_size(size)
        values.setdefault("resize", default.resize)
        try:
            return cls(**values)
        except _FieldError as exc:
            raise exc.named(labels.get(exc.field, f"the default {exc.field}")) from None

    @property
    def chw(self) -> tuple[int, int, int]:
        """The shape apply() returns: (input_channels, H, W)."""
        return (self.input_channels, *self.crop_hw)

    @property
    def crop_hw(self) -> tuple[int, int]:
        """The model's input (H, W): (crop, crop) for a square one."""
        return (self.crop, self.crop) if isinstance(self.crop, int) else tuple(self.crop)

    @property
    def draft_size(self) -> tuple[int, int]:
        """(width, height) a decoder may reduce a JPEG to (PIL's draft) without changing what apply() makes."""
        h, w = self.crop_hw
        side = self.resize if isinstance(self.resize, int) else 0
        return (max(w, side), max(h, side))

    def describe(self) -> str:
        """One line for summaries."""
        h, w = self.crop_hw
        if self.resize is None:
            geometry = f"resize to {h}x{w} ({self.interpolation}, aspect not kept)"
        elif self.resize == LETTERBOX:
            geometry = (f"letterbox into {h}x{w} ({self.interpolation}, aspect kept, padded right/bottom with "
                        f"pixel value {self.pad_value})")
        else:
            geometry = f"resize {self.resize} (shorter side, {self.interpolation}), centre crop {_side_text(self.crop)}"
        colour = self.channels.upper() if self.channels != "gray" else f"gray x{self.input_channels}"
        return f"{geometry}, {colour}, mean {_floats_text(self.mean)}, std {_floats_text(self.std)}"

    def apply(self, image) -> np.ndarray:
        """A PIL image (any mode) -> float32 (C, H, W) array, C = input_channels: the device's own steps
        (edgekit.ondevice.preprocess: the bundle's check.py runs the same code), torchvision's Resize(int) and centre
        crop (the longer side truncated, the crop offsets rounded)."""
        return normalize(crop_uint8(image, self.to_dict()), self.mean, self.std)


def preprocessing_for_torchvision_weights(weights_enum_name: str) -> Preprocessing | None:
    """torchvision's own eval transforms for "ResNet50_Weights.IMAGENET1K_V2" (or .DEFAULT); None when
    they are not an ImageClassification preset edgekit can express. Reads the enum only: no download."""
    from torchvision.models import get_weight
    from torchvision.transforms._presets import ImageClassification

    try:
        weights = get_weight(str(weights_enum_name))
    except (ValueError, KeyError):
        raise BadInput(f"torchvision weights {weights_enum_name!r} are unknown: give an enum entry such as "
                       "ResNet50_Weights.IMAGENET1K_V2") from None
    # building the preset (a functools.partial of ImageClassification) also fills the defaults its keywords omit
    preset = weights.transforms()
    if not isinstance(preset, ImageClassification):
        return None
    interpolation = getattr(preset.interpolation, "value", str(preset.interpolation))
    if interpolation not in INTERPOLATIONS:
        return None
    return Preprocessing(resize=int(preset.resize_size[0]), crop=int(preset.crop_size[0]), mean=tuple(preset.mean),
                         std=tuple(preset.std), interpolation=interpolation)


def _check_side(name: str, value, what: str) -> None:
    if not _is_int(value) or not 1 <= value <= MAX_IMAGE_SIDE:
        raise _FieldError(name, value, f"give {what}, a whole number from 1 to {MAX_IMAGE_SIDE}")


def _check_values(name: str, values, counts: tuple[int, ...], channels: str, input_channels: int) -> tuple:
    example = "0.229,0.224,0.225" if name == "std" else "0.485,0.456,0.406"
    if not isinstance(values, (tuple, list)) or not all(
        isinstance(v, numbers.Real) and not isinstance(v, bool) for v in values
    ):
        raise _FieldError(name, values, f"give numbers, one per channel, e.g. {example}")
    if len(values) not in counts:
        wanted = " or ".join(str(c) for c in counts)
        raise _FieldError(name, tuple(values), f"a {channels} model with {input_channels} input channel(s) takes "
                                               f"{wanted} value(s); give the {name} the model was trained with")
    values = tuple(float(v) for v in values)
    if not all(math.isfinite(v) for v in values) or (name == "std" and min(values) <= 0):
        need = "finite and > 0" if name == "std" else "finite"
        raise _FieldError(name, values, f"every value must be {need}; give the {name} the model was trained with")
    return values


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _parse(key: str, value, label: str | None = None):
    """One option or JSON value -> the field's type; strings are parsed. Type errors name `label`."""
    label = label or f"the preprocessing field '{key}'"
    text = value.strip() if isinstance(value, str) else None
    if key == "resize" and (value is None or (text or "").lower() == "none"):
        return None
    if key == "resize" and (text or "").lower() == LETTERBOX:
        return LETTERBOX
    if key == "crop" and (isinstance(value, (list, tuple)) or (text is not None and "x" in text.lower())):
        parts = text.lower().split("x") if text is not None else list(value)
        try:
            if len(parts) != 2 or any(isinstance(v, (bool, float)) and not float(v).is_integer() for v in parts):
                raise ValueError
            return tuple(int(str(v).strip()) if isinstance(v, str) else int(v) for v in parts)
        except (TypeError, ValueError):
            raise BadInput(f"{label} is {_show(value)}: expected N or HxW in pixels, e.g. 224 or 48x192") from None
    if key in ("resize", "crop", "input_channels", "input_size", "pad_value"):
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if text is not None and text.lstrip("+-").isdigit():
            return int(text)
        if not _is_int(value):
            extra = " or none, or letterbox" if key == "resize" else ""
            raise BadInput(f"{label} is {_show(value)}: expected a whole number{extra}")
        return int(value)
    if key in ("mean", "std"):
        parts = text.split(",") if text is not None else [value] if isinstance(value, numbers.Real) else value
        try:
            if isinstance(parts, (str, bytes, dict)) or any(isinstance(v, bool) for v in parts):
                raise TypeError
            return tuple(float(v) for v in parts)
        except (TypeError, ValueError):
            raise BadInput(f"{label} is {_show(value)}: expected numbers, one per channel, e.g. 0.5,0.5,0.5") from None
    if text is None:
        raise BadInput(f"{label} is {_show(value)}: expected a name")
    return text.upper() if key == "layout" else text.lower()


def _read_mapping(data, label: str) -> dict:
    """A metadata dict or JSON file's object -> constructor keywords (both forms), type errors naming `label`."""
    if not isinstance(data, dict):
        raise BadInput(f"{label} is {_show(data)}: expected an object with resize, crop, mean, std")
    unknown = sorted(set(data) - _ACCEPTED)
    if unknown:
        raise BadInput(f"{label} has unknown field(s) {', '.join(map(repr, unknown))}: "
                       f"known ones are {', '.join(_KEYS)}")
    version = data.get("version", 1)
    if not _is_int(version) or not 1 <= version <= FORMAT_VERSION:
        raise BadInput(f"{label} field 'version' is {_show(version)}: this edgekit reads versions 1 to "
                       f"{FORMAT_VERSION}; upgrade edgekit")
    values = {}
    for key in (*_KEYS, "layout", "channel_order"):
        if key in data:
            values[key] = _parse(key, data[key], label=f"{label} field '{key}'")
    order = values.pop("channel_order", None)  # the first form: "RGB" / "BGR"
    if order is not None and "channels" not in values:
        if order not in ("rgb", "bgr"):
            raise BadInput(f"{label} field 'channel_order' is {_show(data['channel_order'])}: expected RGB or BGR")
        values["channels"] = order
    return values


MAX_PREPROCESSING_FILE = 64 * 1024  # a preprocessing JSON is a few hundred bytes


def _load_json(path: Path):
    from edgekit.core.files import check_readable_file

    if not Path(path).exists():
        raise BadInput(f"preprocessing file {path} does not exist: give a JSON file of resize, crop, mean, std")
    check_readable_file(Path(path), "preprocessing file")  # a regular, readable, non-empty file (never a FIFO)
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_PREPROCESSING_FILE + 1)
        if len(raw) > MAX_PREPROCESSING_FILE:
            raise BadInput(f"preprocessing file {path} is over {MAX_PREPROCESSING_FILE} bytes: not a preprocessing JSON")
        return json.loads(raw.decode())
    except (OSError, UnicodeDecodeError) as exc:
        raise BadInput(f"preprocessing file {path} cannot be read: {exc}") from None
    except json.JSONDecodeError as exc:
        raise BadInput(f"preprocessing file {path} is not valid JSON (line {exc.lineno}: {exc.msg})") from None


def _square(crop):
    """(N, N) as N, so a crop compares with an input size either way."""
    return crop[0] if isinstance(crop, tuple) and crop[0] == crop[1] else crop


def _side_text(size) -> str:
    return f"{size[0]}x{size[1]}" if isinstance(size, tuple) else str(size)


def _show(value) -> str:
    return repr(tuple(value)) if isinstance(value, list) else repr(value)


def _floats_text(values) -> str:
    return "(" + ", ".join(f"{v:g}" for v in values) + ")"
