"""Files that run on the device, not in edgekit: check.py and the device-side modules it imports (DEVICE_MODULES:
metrics, cpu, sessions, bundle_files, preprocess, report, openvino_run) are copied into every bundle, and edgekit
imports the same modules for its own side of the same checks; ort_worker.py runs inside an emulated device or a
board. They import numpy, onnxruntime, PIL and (optionally) openvino only, never edgekit (tests/test_layout.py)."""

from pathlib import Path

from .check import DEVICE_MODULES

BUNDLE_SCRIPTS = ("check.py", *(f"{name}.py" for name in DEVICE_MODULES))  # copied verbatim into every bundle


def script_path(name: str) -> Path:
    """The source of a device-side file."""
    return Path(__file__).resolve().parent / name
