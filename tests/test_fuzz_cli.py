"""Fuzzing the real CLI: arbitrary metadata in a file, arbitrary values for the numeric options.

Whatever goes in, a command ends with exit 0, 1, 2 or 3 and at most a line or two on stderr: never a
traceback, never a hang (each test has a time limit). The files are tiny onnx.helper graphs
(tests/tiny_models.py), so an example takes well under a second unless its metadata is valid.
"""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.tiny_models import tiny_metadata, write_tiny

FUZZ = settings(
    max_examples=50, deadline=None, derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)
# Values that have broken a loader before: wrong types, out of range, huge, non-finite.
SHARP = st.sampled_from([
    None, True, 0, -1, 1, 3, 10, 31, 32, 33, 4097, 10**9, 2**64, -2**63, 1.5, float("nan"), float("inf"), "", "3",
    "32", "int8", "fp32", "random", "file", [], {}, [1, 3, 32], [1, 3, 32, 32], ["batch", 3, 32, 32],
    {"kind": "random"}, {"kind": "file", "path": "/dev/zero", "sha256": "0" * 64}, [0, 0, 0], [0.5], "\u0000", "a" * 300,
])
KEYS = sorted(tiny_metadata())
NESTED = {"weights": ["kind", "seed", "init", "path", "sha256"],
          "preprocessing": ["resize", "crop", "mean", "std", "interpolation", "channels", "input_channels"]}


# Changes the schema accepts: the commands get past loading and meet them further on.
VALID_CHANGES = st.sampled_from([
    ("model", "textbook_densenet"), ("model", "resnet18"), ("model", "no_such_model"), ("family", "x[/b]"),
    ("weights", {"kind": "random", "seed": 2**64 - 1, "init": tiny_metadata()["weights"]["init"]}),
    ("weights", {"kind": "random", "seed": 7, "init": "another init [red]"}),
    ("weights", {"kind": "file", "path": "/nonexistent/w.pt", "sha256": "0" * 64}),
    ("weights", {"kind": "file", "path": "/dev/null", "sha256": "0" * 64}),
    ("weights", {"kind": "pretrained", "name": "IMAGENET1K_V1", "path": "/nonexistent.pth", "sha256": "0" * 64}),
    ("num_classes", 1000), ("input_size", 64), ("input_shape", [2, 3, 32, 32]), ("dynamic_batch", True),
    ("precision", "fp16"), ("opset", 30), ("schema", 1), ("_future_key", {"x": [1, 2]}),
    ("preprocessing", {"resize": None, "crop": 32, "mean": [0.5, 0.5, 0.5], "std": [1e-6, 1e-6, 1e-6]}),
    ("preprocessing", {"resize": 4096, "crop": 32, "mean": [0, 0, 0], "std": [1, 1, 1], "channels": "bgr"}),
    ("preprocessing", {"resize": 36, "crop": 32, "channels": "gray", "input_channels": 3,
                       "mean": [0.5], "std": [0.25]}),
])


@st.composite
def metadata_text(draw) -> str:
    """The metadata string of a file: arbitrary JSON, broken JSON, valid metadata with a few values
    replaced by anything, or metadata the schema accepts with odd but legal values."""
    kind = draw(st.sampled_from(["any", "text", "replaced", "replaced", "valid", "valid"]))
    if kind == "any":
        return json.dumps(draw(JSON))
    if kind == "text":
        return draw(st.text(max_size=60))
    meta = copy.deepcopy(tiny_metadata())
    if kind == "valid":
        for key, value in draw(st.lists(VALID_CHANGES, min_size=1, max_size=2)):
            meta[key] = copy.deepcopy(value)
        return json.dumps(meta)
    for _ in range(draw(st.integers(1, 3))):
        value = draw(SHARP | JSON)
        parent = draw(st.sampled_from([None, "weights", "preprocessing"]))
        if parent is None:
            meta[draw(st.sampled_from(KEYS + ["parent", "calibration", "recipe", "_extra"]))] = value
        elif isinstance(meta.get(parent), dict):
            meta[parent][draw(st.sampled_from(NESTED[parent]))] = value
    if draw(st.booleans()):
        meta = {k: v for k, v in meta.items() if not draw(st.booleans()) or k not in ("model", "weights")}
    return json.dumps(meta)  # NaN/Infinity as Python writes them: the reader must cope


def _assert_clean(res, allowed=(0, 1, 2, 3), max_lines: int = 2) -> None:
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert res.exit_code in allowed, (res.exit_code, res.stdout[-2000:], res.stderr)
    assert "Traceback" not in res.stderr and "Traceback" not in res.stdout, res.stderr
    assert len(lines) <= max_lines, res.stderr


@pytest.fixture(scope="module")
def tensors(tmp_path_factory):
    """Four preprocessed (3, 32, 32) samples: verify and quantize need no photo decoding."""
    path = tmp_path_factory.mktemp("tensors") / "t.npz"
    np.savez(path, input=np.random.default_rng(0).standard_normal((4, 3, 32, 32)).astype(np.float32))
    return path


def _command(command: str, model, tensors, out) -> list:
    if command == "verify":
        return ["verify", model, "--inputs", tensors, "--random-inputs", "0", "--providers", "cpu"]
    if command == "quantize":
        return ["quantize", model, "--calibration", tensors, "--samples", "2", "-o", out / "q.onnx"]
    return ["bench", model, "--runs", "1", "--warmup", "0", "--threads", "1"]


@pytest.mark.timeout(600)
@pytest.mark.parametrize("command", ["verify", "quantize", "bench"])
def test_fuzz_metadata_through_the_cli(cli, tmp_path, tensors, command):
    counter = iter(range(10**6))

    @FUZZ
    @given(text=metadata_text())
    def run(text):
        folder = tmp_path / str(next(counter))
        model = write_tiny(folder / "m.onnx", metadata=text)
        res = cli(*_command(command, model, tensors, folder / "out"))
        _assert_clean(res)
        if res.exit_code == 2:
            assert res.stderr.startswith("error: ")

    run()


# --- numeric options ---------------------------------------------------------------------------------

# (command, option): each run names a file that does not exist, so a value the option accepts ends at
# the file (exit 2, "does not exist") and a value it refuses ends at the option (exit 2, naming it).
OPTIONS = [
    ("quantize", "--samples"), ("quantize", "--seed"), ("quantize", "--min-sqnr"), ("quantize", "--min-top1-agreement"),
    ("verify", "--samples"), ("verify", "--seed"), ("verify", "--random-inputs"), ("verify", "--min-sqnr"),
    ("verify", "--max-drop"), ("verify", "--atol"), ("verify", "--rtol"),
    ("bench", "--threads"), ("bench", "--batch"), ("bench", "--runs"), ("bench", "--seconds"), ("bench", "--warmup"),
]
NUMBERS = st.sampled_from([
    "nan", "NaN", "-nan", "inf", "-inf", "Infinity", "-1", "-0", "0", "1e308", "-1e308", "1e-320", "abc", "", " ",
    "1,5", "0x10", "1_000", "+5", " 5", "5 ", "\u0661\u0662", "9" * 400, "1e400", "-9223372036854775809", "2**64",
    "18446744073709551616", "4294967296", "3.0", "1.5", "\u0000", "--help", "-", "1\n2",
])
VALUES = NUMBERS | st.floats().map(repr) | st.integers(-2**70, 2**70).map(str) | st.text(max_size=10)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("command, option", OPTIONS, ids=[f"{c}{o}" for c, o in OPTIONS])
def test_fuzz_numeric_options(cli, tmp_path, command, option):
    missing = tmp_path / "missing.onnx"

    @settings(max_examples=50, deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(value=VALUES)
    def run(value):
        res = cli(command, missing, f"{option}={value}")
        _assert_clean(res, allowed=(2,), max_lines=1)
        line = res.stderr.strip()
        assert line.startswith("error: ")
        assert option in line or "does not exist" in line or "--dataset" in line, line
        if _clearly_invalid(value):
            assert option in line, line

    run()


def _clearly_invalid(value: str) -> bool:
    """Values no numeric option may accept: not a number, not finite, negative (every option here is >= 0)."""
    try:
        number = float(value)
    except (ValueError, OverflowError):
        return True
    return not math.isfinite(number) or number < 0 and number != 0


@pytest.mark.timeout(60)
@pytest.mark.parametrize("args, option", [
    (["bench", "{f}", "--seconds", "nan"], "--seconds"),
    (["bench", "{f}", "--seconds", "inf"], "--seconds"),
    (["bench", "{f}", "--threads", "-1"], "--threads"),
    (["quantize", "{f}", "--seed", "-1"], "--seed"),
    (["quantize", "{f}", "--min-sqnr", "-5"], "--min-sqnr"),
    (["quantize", "{f}", "--min-top1-agreement", "1.5"], "--min-top1-agreement"),
    (["verify", "{f}", "--random-inputs", "1e308"], "--random-inputs"),
    (["verify", "{f}", "--max-drop", "nan"], "--max-drop"),
])
def test_options_are_refused_before_any_work(cli, tmp_path, args, option):
    """With a real file: a bad value is exit 2 naming the option before anything runs (no calibration first)."""
    model = write_tiny(tmp_path / "m.onnx")
    res = cli(*[str(model) if a == "{f}" else a for a in args])
    _assert_clean(res, allowed=(2,), max_lines=1)
    assert option in res.stderr
