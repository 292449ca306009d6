"""What a deployable bundle carries besides the model, and the check of a bundle from edgekit.

`check.py` (the standalone device check: numpy and onnxruntime only) and the device-side modules it imports
(edgekit.ondevice: metrics, cpu, sessions, bundle_files, preprocess, report, openvino_run) are copied into every
bundle verbatim, for the user on the board; edgekit imports the same modules, so both sides check alike. `check_bundle`
runs check.py's own checks from edgekit (edgekit's metric core, edgekit's sessions): what `edgekit package` runs
before it commits a bundle, and what `edgekit verify DIR` is to call (it lives here, below the stages, so that
verify need not import the package stage). `check_bundle_on_device` runs the same checks with the models on an
(emulated) device, never the bundle's own code (bundle/on_device.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgekit.core.errors import BadInput, ProviderUnavailable, one_line

# the device side imports numpy only at the top; provenance and runtime are imported where used, so that
# edgekit.judge.compare (which imports edgekit.ondevice.metrics) stays light.
MAX_LABELS_BYTES = 16 << 20


@dataclass
class BundleCheck:
    """check.py's checks of a bundle, run by edgekit (the same code, edgekit's sessions)."""

    folder: Path
    model: str | None
    precision: str | None
    passed: bool
    exit_code: int
    checksums: list[dict]
    rows: list[dict]
    gates: dict
    cpu: dict
    session_options: dict
    notes: list[str]
    reasons: list[str]
    golden_samples: int
    manifest_sha256: str | None = None

    @classmethod
    def from_result(cls, result: dict) -> "BundleCheck":
        return cls(
            folder=Path(result["bundle"]), model=result["model"], precision=result["precision"],
            passed=result["passed"], exit_code=result["exit_code"], checksums=result["checksums"], rows=result["rows"],
            gates=result["gates"], cpu=result["cpu"], session_options=result["session_options"],
            notes=result["notes"], reasons=result["reasons"], golden_samples=result["golden_samples"],
            manifest_sha256=result.get("manifest_sha256"),
        )

    def as_check_result(self) -> dict:
        """The dict check.py's format_report prints."""
        data = self.to_dict()
        data["bundle"] = str(self.folder)
        return data

    def describe(self) -> str:
        """check.py's own table."""
        from edgekit.ondevice.report import format_report

        return format_report(self.as_check_result())

    def to_dict(self) -> dict:
        return {
            "folder": str(self.folder), "model": self.model, "precision": self.precision, "passed": self.passed,
            "exit_code": self.exit_code, "checksums": self.checksums, "rows": self.rows, "gates": self.gates,
            "cpu": self.cpu, "session_options": self.session_options, "notes": self.notes, "reasons": self.reasons,
            "golden_samples": self.golden_samples, "manifest_sha256": self.manifest_sha256,
        }


def this_cpu_for_check() -> dict:
    """This CPU as check.py describes one (edgekit's reading, so EDGEKIT_FAKE_CPU_FLAGS applies)."""
    from edgekit.core.provenance import this_cpu

    cpu = this_cpu()
    return {"machine": cpu.machine, "model": cpu.model, "flags": sorted(cpu.flags),
            "flags_known": bool(cpu.flags) or cpu.faked, "faked": cpu.faked}


def _edgekit_session(path: Path, provider: str, config: dict):
    """check.py's session factory, made with edgekit's create_session (no silent provider fallback)."""
    from edgekit.ondevice.sessions import ProviderNotStarted, short_name
    from edgekit.runtimes.ort import PROVIDERS, create_session

    short = short_name(provider)
    if short not in PROVIDERS:
        raise ProviderNotStarted(f"{provider} is not a provider edgekit runs ({', '.join(PROVIDERS)})")
    try:
        return create_session(Path(path), short, session_config=config or None).session
    except ProviderUnavailable as exc:
        raise ProviderNotStarted(one_line(exc)) from None


class _OpenVinoAsSession:
    """edgekit's OpenVINO runner (runtimes/openvino_model.py) shaped as check.py runs a model: get_inputs() and
    run(None, feed), a dynamic batch axis left dynamic."""

    def __init__(self, path: Path):
        from types import SimpleNamespace

        from edgekit.runtimes.openvino_model import OpenVinoModel

        self.model = OpenVinoModel.load(Path(path), batch=None)
        ort_type = "tensor(float16)" if self.model.input_dtype == np.float16 else "tensor(float)"
        self._input = SimpleNamespace(name=self.model.input_name, shape=list(self.model.input_shape), type=ort_type)

    def get_inputs(self) -> list:
        return [self._input]

    def run(self, _names, feed: dict) -> list:
        (x,) = feed.values()
        return self.model.run(x)


def _edgekit_openvino(path: Path, _provider: str, _config: dict):
    """check.py's OpenVINO factory, made with edgekit's OpenVINO runtime (exit 3 where it is not installed)."""
    from edgekit.core.errors import EnvironmentUnavailable
    from edgekit.ondevice.sessions import ProviderNotStarted

    try:
        return _OpenVinoAsSession(path)
    except EnvironmentUnavailable as exc:
        raise ProviderNotStarted(f"openvino not installed here: {one_line(exc)}") from None


def check_bundle(folder: Path, providers: list[str] | None = None, apply_session_options: bool = True,
                 expect_manifest: str | None = None, gates: dict | None = None,
                 runtimes: list[str] | None = None) -> BundleCheck:
    """Run a bundle's check.py checks from edgekit: checksums, both model formats on the golden inputs on each
    provider (short names: cpu, cuda, tensorrt; default cpu), the manifest's gates, with edgekit's metric core;
    and the .onnx in OpenVINO where the bundle was packaged for it (`runtimes`: ort, openvino; default the
    manifest's, OpenVINO skipped with a note where it is not installed here, required where it is named).

    A broken bundle (no manifest, a listed file missing, unreadable golden data) is BadInput (exit 2); a failed
    check is returned (passed False, exit_code 1), not raised: the caller decides."""
    from edgekit.ondevice import check as bundle_check
    from edgekit.runtimes.openvino_model import openvino_available
    from edgekit.runtimes.ort import PROVIDERS

    folder = Path(folder)
    if not folder.is_dir():
        raise BadInput(f"bundle {folder} is not a folder", hint="give the folder `edgekit package` wrote")
    wanted = []
    for name in providers or ["cpu"]:
        key = name.strip().lower()
        if key not in PROVIDERS:
            raise BadInput(f"unknown execution provider {name!r}", hint=f"use one of {', '.join(PROVIDERS)}")
        wanted.append(PROVIDERS[key])
    try:
        result = bundle_check.run_checks(
            folder, wanted, this_cpu_for_check(), make_session=_edgekit_session,
            make_openvino=_edgekit_openvino if openvino_available() else None,
            apply_session_options=apply_session_options, expect_manifest=expect_manifest, gates=gates,
            runtimes=runtimes,
        )
    except bundle_check.BrokenBundle as exc:
        raise BadInput(f"broken bundle: {exc}") from None
    except bundle_check.Tampered as exc:
        from edgekit.core.errors import BundleTampered

        raise BundleTampered(f"bundle {folder}: {exc}") from None
    result["notes"] += scripts_notes(result["checksums"])
    return BundleCheck.from_result(result)


def scripts_notes(checksums: list[dict]) -> list[str]:
    """A note when the bundle's check.py and device-side modules (their sha256 as checked against the manifest)
    are not this edgekit's own (edgekit/ondevice/): a bundle packaged by another edgekit version. edgekit's checks
    ran with its own code either way; the note says which code the board will run."""
    from edgekit.ondevice import BUNDLE_SCRIPTS, script_path
    from edgekit.ondevice.metrics import sha256_file

    held = {c["file"]: c["actual"] for c in checksums}
    differ = [name for name in BUNDLE_SCRIPTS if name in held and held[name] != sha256_file(script_path(name))]
    absent = [name for name in BUNDLE_SCRIPTS if name not in held]
    if not differ and not absent:
        return []
    return ["the bundle's device check is not this edgekit's (packaged by another version?): "
            + "; ".join(part for part in (f"{', '.join(differ)} differ" if differ else "",
                                           f"{', '.join(absent)} not in the bundle" if absent else "") if part)
            + "; edgekit checked it with its own code, the board runs the bundle's"]


def check_bundle_on_device(folder: Path, device: str, apply_session_options: bool = True,
                           expect_manifest: str | None = None) -> BundleCheck:
    """The bundle's checks with its models run as `device` runs them (runtimes.devices: natively, or inside QEMU
    with the device's Python, numpy and onnxruntime), as a BundleCheck. Nothing from the bundle runs: every file
    is checked on this machine first and copied privately; edgekit's own code runs the checks (bundle.on_device)."""
    from edgekit.bundle.on_device import check_on_device
    from edgekit.core.errors import BundleTampered
    from edgekit.ondevice import check as bundle_check

    try:
        result = check_on_device(Path(folder), device, apply_session_options, expect_manifest)
    except bundle_check.BrokenBundle as exc:
        raise BadInput(f"broken bundle: {exc}") from None
    except bundle_check.Tampered as exc:
        raise BundleTampered(f"bundle {folder}: {exc}") from None
    return BundleCheck.from_result(result)


def read_labels(path: Path, classes: int | None) -> list[str]:
    """One label per line (a trailing newline is fine); their count must be the model's class count."""
    from edgekit.core.files import open_regular

    path = Path(path)
    try:
        with open_regular(path, "labels file") as f:  # a FIFO or device is refused, never waited on
            raw = f.read(MAX_LABELS_BYTES + 1)
        if len(raw) > MAX_LABELS_BYTES:
            raise BadInput(f"labels file {path} is over {MAX_LABELS_BYTES >> 20} MiB", hint="one class name per line")
        text = raw.decode("utf-8")
    except FileNotFoundError:
        raise BadInput(f"labels file {path} does not exist", hint="one class name per line") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise BadInput(f"labels file {path} cannot be read: {exc}") from None
    labels = [line.strip() for line in text.splitlines()]
    while labels and not labels[-1]:
        labels.pop()
    empty = [i + 1 for i, label in enumerate(labels) if not label]
    if empty:
        raise BadInput(f"labels file {path}: line {empty[0]} is empty", hint="one class name per line, none empty")
    if classes is not None and len(labels) != classes:
        raise BadInput(
            f"labels file {path} has {len(labels)} labels but the model has {classes} classes",
            hint="one class name per line, in class-index order",
        )
    return labels
