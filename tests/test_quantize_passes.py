"""quantize as named passes (edgekit/quantize/passes.py): the eight in order, each reading only what is given or an
earlier pass set, the driver refusing a pass whose input is missing or that leaves an output unset; and the int8
metadata built through its schema, a broken part refused as edgekit's own bug (exit 1), not written."""

from __future__ import annotations

import ast
import dataclasses
import inspect
from pathlib import Path

import pytest

from edgekit.core.errors import InvariantBroken
from edgekit.quantize import passes
from edgekit.quantize.passes import PASSES, UNSET, Pass, Run, run_passes


def _given() -> set[str]:
    return {f.name for f in dataclasses.fields(Run) if f.default is not UNSET}


def test_the_eight_passes_in_order_each_reading_what_is_there():
    assert [p.name for p in PASSES] == ["prepare", "rewrite", "calibrate", "quantize", "check", "judge", "budget", "write"]
    there = _given()
    for p in PASSES:
        assert set(p.reads) <= there, (p.name, set(p.reads) - there)
        there |= set(p.writes)
    fields = {f.name for f in dataclasses.fields(Run)}
    assert all(set(p.writes) <= fields for p in PASSES)


def test_each_pass_reads_and_sets_only_fields_it_declares():
    # the `run.X` a pass's function reads or assigns, from its source: every assignment is declared, and every read of
    # a field set by a pass is declared (or set by the pass itself)
    set_by_passes = {w for p in PASSES for w in p.writes}
    for p in PASSES:
        tree = ast.parse(_dedented(p.run))
        stores, loads = set(), set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "run":
                (stores if isinstance(node.ctx, ast.Store) else loads).add(node.attr)
        assert stores - {"say"} <= set(p.writes) | {"notes", "excluded"}, (p.name, stores - set(p.writes))
        undeclared = (loads & set_by_passes) - set(p.reads) - set(p.writes)
        assert not undeclared, (p.name, undeclared)


def _dedented(fn) -> str:
    import textwrap

    return textwrap.dedent(inspect.getsource(fn))


def _run(**fields) -> Run:
    given = {f.name: None for f in dataclasses.fields(Run) if f.default is dataclasses.MISSING}
    return Run(**{**given, **fields})


def test_the_driver_refuses_a_pass_run_before_its_input_and_one_that_sets_nothing():
    said: list[str] = []
    first = Pass("one", lambda run: setattr(run, "calib", "c"), ("model",), ("calib",))
    needs = Pass("two", lambda run: None, ("full",), ())
    with pytest.raises(InvariantBroken, match="two pass runs before full is set"):
        run_passes(_run(), said.append, (first, needs))
    assert said == ["[1/2] one"]
    lazy = Pass("lazy", lambda run: None, (), ("ranges",))
    with pytest.raises(InvariantBroken, match="lazy pass did not set ranges"):
        run_passes(_run(), said.append, (lazy,))


def test_each_pass_says_its_place_on_the_stage_line():
    said: list[str] = []
    talk = Pass("talk", lambda run: run.say("detail"), (), ())
    run_passes(_run(), said.append, (talk, talk))
    assert said == ["[1/2] talk", "[1/2] talk: detail", "[2/2] talk", "[2/2] talk: detail"]


def test_int8_metadata_through_the_schema_refuses_a_broken_part(tmp_path):
    from edgekit.data.preprocessing import Preprocessing
    from edgekit.quantize.int8_metadata import int8_metadata

    parent = tmp_path / "m.onnx"
    parent.write_bytes(b"fp32")
    calibration = {"source": "c", "kind": "images", "samples": 4, "sha256": "0" * 64, "holdout_samples": 2}
    recipe = {"target": "x86-vnni", "activation_type": "uint8", "weight_type": "int8", "per_channel": True,
              "reduce_range": False, "activation_symmetric": False, "method": "minmax", "reason": "r", "format": "QDQ",
              "excluded_nodes": []}
    report = {"holdout_top1_agreement": 1.0, "holdout_sqnr_db": 30.5, "coverage_int8": 3, "coverage_total": 3}
    meta = int8_metadata(None, parent, preprocessing=Preprocessing(resize=32, crop=32), calibration=calibration,
                         recipe=recipe, report=report, task="classify", opset=17)
    assert meta["precision"] == "int8" and meta["parent"]["metadata"] is False and meta["recipe"] == recipe
    assert meta["quantization_report"] == report and "preprocessing" in meta and "opset" not in meta
    with pytest.raises(InvariantBroken, match="breaks its schema"):
        int8_metadata(None, parent, preprocessing=Preprocessing(resize=32, crop=32), calibration=calibration,
                      recipe={**recipe, "per_channel": "yes"}, report=report, task="classify", opset=17)


def test_no_function_in_quantize_is_over_60_lines():
    long = []
    for path in Path(passes.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 66:
                long.append(f"{path.name}:{node.name} ({node.end_lineno - node.lineno + 1} lines)")
    assert not long, long
