"""`QuantizeOptions`: every knob of `quantize`, with its default, the help `edgekit quantize` shows and its range.

`quantize(path, options)` reads them; `edgekit quantize` builds its options from them (cli/quantize_cmd.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edgekit.judge.compare import DEFAULT_TOLERANCES, trained_defaults
from edgekit.judge.targets import CALIBRATION_METHODS
from edgekit.core.knobs import knob
from edgekit.core.limits import MAX_DROP_POINTS, MAX_SAMPLES, MAX_SEED

DEFAULT_SAMPLES = 128
_RANDOM, _TRAINED = DEFAULT_TOLERANCES["int8"], trained_defaults()["int8"]  # the gates' defaults, said in the help


@dataclass(frozen=True)
class QuantizeOptions:
    """The knobs of `quantize`. The accuracy budget: the held-out gates (`min_top1_agreement`, `min_sqnr`;
    stricter defaults for trained weights than for random ones) and, with `dataset`, a top-1 drop of at most
    `max_drop` points; with `fallback`, a file that misses it gets its most sensitive nodes kept in fp32.
    `device`: the deployment CPU whose ONNX Runtime kernels gate the file (edgekit.runtimes.devices; emulated
    where it is not this machine); the per-layer ranking of the fallback still runs on this machine.
    `ranges_cache`: a folder of activation ranges kept by content (quantize.ranges), read before calibrating."""

    calibration: Path | None = knob(None, "image folder or .npz/.npy of preprocessed tensors (default: calibration/)")
    samples: int = knob(DEFAULT_SAMPLES, "calibration samples, picked deterministically", low=1, high=MAX_SAMPLES)
    method: str | None = knob(None, "default: the target's", choices=CALIBRATION_METHODS)
    target: str = knob("auto")  # (help: cli/options.py's TargetOption)
    per_channel: bool | None = knob(None, "weight scales (default: the target's)")
    exclude: tuple[str, ...] | list[str] = knob((), "node name or op type to keep in float (repeatable)")
    augment: bool = knob(False, "fill up to --samples with seeded crops and flips")
    seed: int = knob(0, "seed of the calibration pick", low=0, high=MAX_SEED)
    output: Path | None = knob(None)  # (help: cli/options.py's Output)
    min_top1_agreement: float | None = knob(
        None, "budget: held-out top-1 agreement with fp32, 0..1 (default "
        f"{_RANDOM.min_top1_agreement:g}; {_TRAINED.min_top1_agreement:g} for trained weights)", low=0.0, high=1.0)
    min_sqnr: float | None = knob(
        None, "budget: held-out SQNR of the logits, dB (default "
        f"{_RANDOM.min_sqnr_db:g}; {_TRAINED.min_sqnr_db:g} for trained weights)", low=0.0, high=200.0)
    dataset: Path | None = knob(None, "labelled images (one sub-folder per class) for --max-drop")
    max_drop: float | None = knob(None, "budget: top-1 drop on --dataset, points", low=0.0, high=MAX_DROP_POINTS)
    fallback: bool = knob(True, "keep the most sensitive layers in fp32 when the budget is missed")
    rewrites: bool = knob(True, "the recipe's graph rewrites for speed (default on; see README)")
    device: str | None = knob(None)  # (help: cli/options.py's Device)
    ranges_cache: Path | None = knob(
        None, "folder of activation ranges kept by content: calibrate once, reuse on every later run")
