"""Shared fixtures: the real CLI app, small exported models, an isolated cache."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

ROOT = Path(__file__).resolve().parent.parent
CALIBRATION = ROOT / "calibration"
SMALL = 64  # input size for fast exports of the full-size architectures


def pytest_configure(config):
    if os.environ.get("PYTEST_XDIST_WORKER"):
        _one_thread_per_worker()


def _one_thread_per_worker():
    """Under pytest-xdist (`make test`: one worker per core), each worker's ONNX Runtime sessions, torch and OpenMP
    run on one thread unless a test asks for more. Two workers whose ORT pools each spin on both cores doubled the
    suite's CPU time and gained nothing over a serial run (docs/layout.md). A session given a thread count keeps it."""
    os.environ["OMP_NUM_THREADS"] = "1"  # read by torch's and OpenMP's pools when they start
    import onnxruntime as ort

    base = ort.InferenceSession

    class OneThreadSession(base):
        def __init__(self, path_or_bytes, sess_options=None, *args, **kwargs):
            sess_options = sess_options if sess_options is not None else ort.SessionOptions()
            if sess_options.intra_op_num_threads == 0:
                sess_options.intra_op_num_threads = 1
            super().__init__(path_or_bytes, sess_options, *args, **kwargs)

    ort.InferenceSession = OneThreadSession


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    os.environ["EDGEKIT_CACHE_DIR"] = str(tmp_path_factory.mktemp("edgekit-cache"))
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    yield


@pytest.fixture
def cli():
    """Run `edgekit ARGS...` in-process; returns click's Result (exit_code, stdout, stderr)."""
    from edgekit.cli import app

    runner = CliRunner()

    def invoke(*args: str):
        return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)

    return invoke


@pytest.fixture(scope="session")
def exported(tmp_path_factory):
    """Export each requested (model, size) once per session; returns the ExportResult."""
    from edgekit.export import export

    folder = tmp_path_factory.mktemp("exports")
    cache = {}

    def get(name: str, size: int = SMALL, **kwargs):
        key = (name, size, tuple(sorted(kwargs.items())))
        if key not in cache:
            out = folder / f"{name}-{size}-{len(cache)}.onnx"
            cache[key] = export(name, input_size=size, output=out, **kwargs)
        return cache[key]

    return get


def files_in(folder: Path) -> list[str]:
    """Everything in a folder, hidden temp folders included (to prove nothing half-written is left)."""
    return sorted(p.name for p in Path(folder).iterdir()) if Path(folder).exists() else []


@pytest.fixture(scope="session")
def avx2():
    """The emulated AVX2 lane: an x86 CPU with AVX2 and without VNNI, whose ONNX Runtime int8 kernels can
    saturate. Natively on such a host; under `qemu-x86_64 -cpu Haswell-noTSX` on any other x86 host (a VNNI
    CPU cannot otherwise show these numbers: faked flags change edgekit's decisions, never the arithmetic);
    skipped with the reason only where neither runs. Returns the device's runtimes.devices.DeviceStatus."""
    from edgekit.runtimes.devices import device_status

    status = device_status("x86-avx2")
    if not status.ready:
        pytest.skip("the AVX2 lane needs an AVX2 CPU without VNNI or QEMU's user-mode emulator: " + "; ".join(status.missing))
    return status


# `make test-fast` runs `pytest -m "unit or smoke"`: the unit tier (every test under tests/unit/, marked `unit` here by
# its folder: fakes instead of torch and ORT sessions, seconds in all) and these end-to-end paths, marked `smoke`:
# at least one per command, through the real CLI. tests/unit/test_tiers.py checks that each still exists and that
# together they name every command. `make test` runs everything.
SMOKE = {
    "tests/test_cli_json.py::test_export_quantize_verify_bench_package_convert": ("export", "quantize", "verify", "bench"),
    "tests/test_convert.py::test_convert_takes_imported_files_and_users_own_modules": ("import", "convert", "export"),
    "tests/test_debug.py::test_debug_names_the_planted_layer_and_its_exclude_list_works": ("debug", "quantize"),
    "tests/test_package.py::test_fp32_bundle_passes_on_a_device_without_torch_or_edgekit": ("package",),
    "tests/test_devices.py::test_devices_command_lists_each_device_with_what_it_needs": ("devices",),
    "tests/test_sweep.py::test_sweep_on_local_ray_rows_failures_retries_and_resume": ("sweep",),
}
UNIT_DIR = Path(__file__).resolve().parent / "unit"


def pytest_collection_modifyitems(items):
    for item in items:
        # every test that takes an emulated lane is marked, so `pytest -m avx2` (or arm64) runs that lane alone
        for lane in ("avx2", "arm64"):
            if lane in getattr(item, "fixturenames", ()):
                item.add_marker(getattr(pytest.mark, lane))
        if UNIT_DIR in Path(str(item.path)).parents:
            item.add_marker(pytest.mark.unit)
        if item.nodeid.split("[")[0] in SMOKE:
            item.add_marker(pytest.mark.smoke)


@pytest.fixture(scope="session")
def arm64():
    """An emulated ARM64 board (Cortex-A76: sdot) with its own Python, numpy and onnxruntime: skipped with the
    reason where `edgekit devices setup arm64` has not been run or QEMU cannot run it."""
    from edgekit.runtimes.devices import device_status

    status = device_status("arm64-a76")
    if not status.ready:
        pytest.skip("the ARM64 lane needs: " + "; ".join(status.missing))
    return status


@pytest.fixture(scope="session")
def calibration_npz(tmp_path_factory):
    """The calibration photos at SIZE px as a .npz (`calibration_npz(32)`), written once per session. A tensor file
    holds out its last quarter with no top-up (quantize/calibration.py): 3 held-out samples where an image folder
    is topped up to MIN_HOLDOUT_SAMPLES (32), so emulated-device tests run an eighth of the inferences."""
    import numpy as np

    from edgekit.data.images import load_image_folder
    from edgekit.data.preprocessing import Preprocessing

    folder = tmp_path_factory.mktemp("calibration-npz")
    made: dict[tuple, Path] = {}

    def get(size: int = SMALL, count: int | None = None) -> Path:
        """COUNT: only the first COUNT photos (verify's --inputs: fewer emulated runs)."""
        if (size, count) not in made:
            made[size, count] = folder / f"calib-{size}-{count}.npz"
            tensors = load_image_folder(CALIBRATION, Preprocessing.for_input_size(size)).tensors
            np.savez(made[size, count], input=tensors[:count])
        return made[size, count]

    return get
