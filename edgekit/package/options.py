"""`PackageOptions`: every knob of `package`, with its default, the help `edgekit package` shows and its range.

`package(path, options)` reads them; `edgekit package` builds its options from them (cli/package_cmd.py). Knobs
without help here take it from the option several commands share (cli/options.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edgekit.core.knobs import knob
from edgekit.package.folder import OVERHEAD_BUDGET
from edgekit.package.golden import DEFAULT_GOLDEN, MAX_GOLDEN


@dataclass(frozen=True)
class PackageOptions:
    """The knobs of `package`. `golden`: photos in the golden data (default DEFAULT_GOLDEN, fewer when they
    would add more than OVERHEAD_BUDGET to the model files; an explicit count is kept and the overhead said)."""

    output: Path | None = knob(None, "bundle folder (default: exports/<name>.bundle/)")
    labels: Path | None = knob(None, "class names, one per line (as many as the model's classes)")
    images: Path | None = knob(None)
    golden: int | None = knob(
        None, f"photos in the golden data (default {DEFAULT_GOLDEN}, fewer if they would add > {OVERHEAD_BUDGET * 100:.0f} % "
        "to the model files)", low=1, high=MAX_GOLDEN)
    model: str | None = knob(None, "the PyTorch model a file without edgekit provenance was exported from (its golden "
                                   "outputs' reference)")
    weights: Path | None = knob(None)
    runtimes: str | None = knob(None, "runtimes the bundle's check.py runs the file in: ort (default) or ort,openvino "
                                      "(OpenVINO where it is installed on the device; checked here before anything is "
                                      "written)")
    parent: Path | None = knob(None, "the fp32 file (parent, or an imported file's original) the golden outputs of a file "
                                     "without a PyTorch source come from (default: found beside it by its sha256)")
