"""The command-line options that several commands share, declared once: names, help, ranges and
defaults come from the core's constants, so a command cannot drift from another or from the core.
`option` makes a command's option from its stage's options dataclass (edgekit/core/knobs.py)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from edgekit.data.images import DEFAULT_CALIBRATION_DIR
from edgekit.core.knobs import described
from edgekit.core.limits import MAX_BATCH, MAX_SEED
from edgekit.judge.targets import CALIBRATION_METHODS, RECIPES


def between(low: float, high: float):
    """Typer callback: a finite number in [low, high], the range named in the error."""

    def check(value: float | None) -> float | None:
        import math

        if value is not None and not (math.isfinite(value) and low <= value <= high):
            raise typer.BadParameter(f"{value} is not a finite number from {low:g} to {high:g}")
        return value

    return check


def option(stage_options, name: str, *flags: str, **extra):
    """The typer option for the knob NAME of the dataclass STAGE_OPTIONS: its help and range from the knob
    (an int range as min/max, a float range checked by `between`); FLAGS and EXTRA (case_sensitive, file_okay...)
    are the command line's own. The default stays the parameter's: `= Options.name`."""
    knob = described(stage_options, name)
    low, high = knob.metadata["range"]
    if low is not None or high is not None:
        if isinstance(low, float) or isinstance(high, float):
            extra.setdefault("callback", between(low, high))
        else:
            extra.update(min=low, max=high)
    if knob.metadata["help"] is not None:
        extra.setdefault("help", knob.metadata["help"])
    return typer.Option(*flags, **extra)


Target = Enum("Target", {name.replace("-", "_"): name for name in ("auto", *RECIPES)}, type=str)
Method = Enum("Method", {m: m for m in CALIBRATION_METHODS}, type=str)

Json = Annotated[bool, typer.Option("--json", help="print one JSON object on stdout (for scripts) instead of tables")]
Seed = Annotated[int, typer.Option("--seed", min=0, max=MAX_SEED, help="seed (0..2^32-1)")]
Images = Annotated[
    Path | None,
    typer.Option("--images", file_okay=False, help=f"folder of photos (default: the bundled {DEFAULT_CALIBRATION_DIR.name}/)"),
]
Weights = Annotated[
    Path | None, typer.Option("--weights", dir_okay=False, help="state_dict / checkpoint (.pt, .pth, .safetensors)")
]
Pretrained = Annotated[bool, typer.Option("--pretrained", help="torchvision weights from the local torch hub cache")]
Providers = Annotated[
    str | None, typer.Option("--providers", help="comma-separated: cpu,cuda,tensorrt (default: cpu, + cuda when usable)")
]
Output = Annotated[Path | None, typer.Option("-o", "--output", help="file or folder (default: under exports/)")]
Report = Annotated[Path | None, typer.Option("--report", dir_okay=False, help="write every number to this JSON file")]
Threads = Annotated[int | None, typer.Option("--threads", min=1, max=1024, help="intra-op threads (default: all cores)")]
Batch = Annotated[int, typer.Option("--batch", min=1, max=MAX_BATCH, help="batch size")]
MinTop1 = Annotated[
    float | None, typer.Option("--min-top1-agreement", callback=between(0.0, 1.0), help="fraction of top-1 that must match (0..1)")
]
MinSqnr = Annotated[float | None, typer.Option("--min-sqnr", callback=between(0.0, 200.0), help="minimum SQNR of the logits, dB")]
TargetOption = Annotated[Target, typer.Option("--target", case_sensitive=False, help="int8 target CPU; auto reads this CPU's flags")]
Device = Annotated[
    str | None,
    typer.Option("--device", help="judge int8 on this CPU's ONNX Runtime kernels: host, x86-avx2, arm64-a53, arm64-a76 "
                 "(emulated where it is not this machine), or your own board: ssh://user@host[:port] or a name "
                 "stored with `edgekit devices add` (`edgekit devices` says which are ready)"),
]


def _set_device_timeout(value: float | None) -> float | None:
    from edgekit.runtimes.devices import set_device_timeout

    set_device_timeout(value)  # None: the default (3 minutes), also between in-process runs
    return value


DeviceTimeout = Annotated[
    float | None,
    typer.Option("--device-timeout", min=1, max=86400, callback=_set_device_timeout, metavar="SECONDS",
                 help="with --device: seconds the device may take to answer one request (default 180; for slow boards)"),
]
Runtimes = Annotated[
    str | None,
    typer.Option("--runtimes", help="comma-separated: ort,openvino (default: ort; openvino needs pip install 'edgekit[openvino]')"),
]


# The model's preprocessing, the same options for `export` and `import` (data/preprocessing.py says what each means)
def _enum(name: str, values) -> type:
    from enum import Enum

    return Enum(name, {v: v for v in values}, type=str)


def _preprocessing_enums():
    from edgekit.data.preprocessing import CHANNELS, INTERPOLATIONS

    return _enum("Interpolation", INTERPOLATIONS), _enum("Channels", CHANNELS)


Interpolation, Channels = _preprocessing_enums()
Mean = Annotated[str | None, typer.Option("--mean", help="per-channel mean on 0..1 pixels, e.g. 0.485,0.456,0.406")]
Std = Annotated[str | None, typer.Option("--std", help="per-channel std, e.g. 0.229,0.224,0.225")]
InterpolationOption = Annotated[Interpolation | None, typer.Option("--interpolation", case_sensitive=False)]
ChannelsOption = Annotated[Channels | None, typer.Option("--channels", case_sensitive=False, help="channel order / gray")]
InputChannels = Annotated[
    int | None, typer.Option("--input-channels", min=1, max=3, help="with --channels gray: 1, or 3 (gray replicated)")
]
PreprocessingFile = Annotated[
    Path | None,
    typer.Option("--preprocessing", dir_okay=False, help="JSON file with all of the above (options given override it)"),
]
