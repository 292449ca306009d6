"""`VerifyOptions`: every knob of `verify`, with its default, the help `edgekit verify` shows and its range.

`verify(path, options)` reads them; `edgekit verify` builds its options from them (cli/verify_cmd.py). Knobs
without help here take it from the option several commands share (cli/options.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from edgekit.core.knobs import knob
from edgekit.core.limits import MAX_DROP_POINTS, MAX_RANDOM_INPUTS, MAX_SAMPLES, MAX_SEED
from edgekit.verify.inputs import DEFAULT_RANDOM_INPUTS


@dataclass(frozen=True)
class VerifyOptions:
    """The knobs of `verify`.

    `target`: the CPU an int8 file is meant for (default: this one). On an x86 CPU without VNNI, a file
    meant for another target is gated on exact accumulation, and this CPU's default kernels are measured
    beside it; a file meant for this CPU is gated on what this CPU computes, saturation included.
    `runtimes`: "ort" (default) or "ort,openvino": OpenVINO runs the same file on the CPU beside ONNX
    Runtime, against the same reference and gates, and reports which precision it really executed.
    `device`: the CPU whose ONNX Runtime kernels run the CPU provider (edgekit.runtimes.devices; emulated where
    it is not this machine): its flags decide the int8 judgement, and the table names it.
    `layers`: per-layer error of an int8 file against its fp32 parent (`parent`, default the file its
    metadata names, in the same folder), on the photos, as the gated kernels compute it."""

    # The knobs `edgekit verify BUNDLE/` reads (a bundle is checked with its golden data and its manifest's gates, which
    # these tighten or loosen); any other knob given for a bundle is refused in one line (cli/verify_cmd.py), so a
    # knob added below is refused there until the bundle check reads it and it is named here.
    bundle_knobs: ClassVar[frozenset[str]] = frozenset({"providers", "atol", "rtol", "min_top1_agreement", "min_sqnr",
                                                        "device"})

    providers: str | None = knob(None)
    allow_fallback: bool = knob(
        False, "a provider that does not start runs on CPU and the report says so (else exit 3)")
    images: Path | None = knob(None)
    inputs: Path | None = knob(None, ".npz/.npy of preprocessed (N, C, H, W) tensors (instead of the default photos)")
    random_inputs: int = knob(DEFAULT_RANDOM_INPUTS, "seeded standard-normal inputs added (0: none)",
                              low=0, high=MAX_RANDOM_INPUTS)
    seed: int = knob(0, "seed of the random inputs (and of random weights with --model)", low=0, high=MAX_SEED)
    model: str | None = knob(None, "the model a file without edgekit metadata was exported from, or your own "
                             "(file.py:factory, module:factory, timm:NAME) a file was exported from")
    weights: Path | None = knob(None)
    pretrained: bool = knob(False)
    atol: float | None = knob(None, "elementwise absolute tolerance (fp32 default 1e-4)", low=0.0, high=1e6)
    rtol: float | None = knob(None, "elementwise relative tolerance (fp32 default 1e-3)", low=0.0, high=1e6)
    min_top1_agreement: float | None = knob(None)
    min_sqnr: float | None = knob(None)
    dataset: Path | None = knob(None, "labelled images, one sub-folder per class (ImageFolder), or an .npz of preprocessed "
                                 "tensors with labels (keys x/y or inputs/labels): top-1 accuracy")
    max_drop: float | None = knob(None, "fail when top-1 on --dataset drops more than this many points",
                                  low=0.0, high=MAX_DROP_POINTS)
    dataset_samples: int | None = knob(None, "at most this many --dataset images (seeded pick)", low=1, high=MAX_SAMPLES)
    target: str | None = knob(None, "int8: the CPU the file is meant for (default: this one)")
    layers: bool = knob(False, "int8: per-layer error against the fp32 parent (table, JSON, PNG plot)")
    parent: Path | None = knob(None, "the fp32 file a file without a PyTorch source is compared with (its parent, or an "
                                 "imported file's original; checked by sha256), and the fp32 file of --layers (default: "
                                 "the one the metadata names, beside the file)")
    runtimes: str | None = knob(None)
    device: str | None = knob(None)
