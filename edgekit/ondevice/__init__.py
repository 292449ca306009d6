"""Files that run on the device, not in edgekit: check.py and metrics.py are copied into every bundle; ort_worker.py
runs inside an emulated device. They import numpy and onnxruntime only, never edgekit (tests/test_layout.py)."""

from pathlib import Path

BUNDLE_SCRIPTS = ("check.py", "metrics.py")  # copied verbatim into every bundle


def script_path(name: str) -> Path:
    """The source of a device-side file."""
    return Path(__file__).resolve().parent / name
