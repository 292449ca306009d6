"""The sweep's spec built from QuantizeOptions' knobs, without Ray: which points a sweep runs, the quantize options
each job gets, the rows (file, runtime) and their names, a sweep file's `sweep:`/`quantize:` mappings, and the
cache schema of the new columns."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from types import SimpleNamespace

import pytest

from edgekit.core.errors import BadInput
from edgekit.quantize.options import QuantizeOptions
from edgekit.sweep.plan import plan_rows, reference
from edgekit.sweep.results import Row, _row_problem
from edgekit.sweep.spec import KNOBS, OWNED, parse_assignments, read_sweep_file, spec_from


def _spec(tmp_path, **values):
    (tmp_path / "set" / "a").mkdir(parents=True, exist_ok=True)
    return spec_from({"models": ["textbook_densenet"], "dataset": str(tmp_path / "set"), **values}, "sweep")


def test_every_quantize_knob_the_sweep_does_not_set_itself_can_be_swept_or_fixed(tmp_path):
    assert set(KNOBS) == {f.name for f in dataclasses.fields(QuantizeOptions)}
    assert set(OWNED) == {"output", "ranges_cache", "calibration", "seed"}
    spec = _spec(tmp_path, quantize={"rewrites": "false", "exclude": ["Conv_0"]},
                 sweep={"max_drop": ["0.5", 2], "per_channel": [True, "false"], "samples": [8, 16]})
    assert spec.quantize == {"rewrites": False, "exclude": ["Conv_0"]}  # converted by the knob's own type
    assert spec.sweep == {"max_drop": [0.5, 2.0], "per_channel": [True, False]} and spec.samples == [8, 16]
    points = spec.points()
    assert len(points) == 1 * 1 * 2 * 2 * 2 and points[0] == {"target": "auto", "method": "minmax", "samples": 8,
                                                                "max_drop": 0.5, "per_channel": True}
    options = spec.options_for(points[0])
    assert options["rewrites"] is False and options["max_drop"] == 0.5
    assert options["dataset"] == str((tmp_path / "set").resolve())  # a budget without a set of its own
    assert spec.budget_note() and "--set dataset" in spec.budget_note()
    QuantizeOptions(**{k: v for k, v in options.items() if k != "dataset"})  # every key is a knob


def test_rows_are_files_times_runtimes_with_their_knobs_in_the_name(tmp_path, monkeypatch):
    monkeypatch.setattr("edgekit.sweep.plan.versions", lambda: {"onnxruntime": "x"})
    spec = _spec(tmp_path, targets=["x86-vnni"], sweep={"max_drop": [1, 2]}, runtimes=["ort", "openvino"],
                 quantize={"dataset": str(tmp_path / "set")})
    plans = [SimpleNamespace(name="textbook_densenet", sha256="s")]
    rows = plan_rows(spec, plans, SimpleNamespace(calibration_sha="c", dataset_sha="d"), "vnni")
    assert [r.name for r in rows] == ["textbook_densenet/x86-vnni/minmax/128/max_drop=1",
                                      "textbook_densenet/x86-vnni/minmax/128/max_drop=1@openvino",
                                      "textbook_densenet/x86-vnni/minmax/128/max_drop=2",
                                      "textbook_densenet/x86-vnni/minmax/128/max_drop=2@openvino"]
    assert len({r.key for r in rows}) == 4 and rows[0].file_name == rows[1].file_name
    assert rows[0].options == {"dataset": str(tmp_path / "set"), "max_drop": 1.0} and rows[0].knobs == {"max_drop": 1.0}
    assert reference("m") == "m" and reference("m", "openvino") == "m@openvino"
    spec.check_names()
    assert not spec.budget_note()  # the budget has its own set
    # a row cached by an edgekit whose quantizer or recipes differ (the same version string) is not reused
    monkeypatch.setattr("edgekit.sweep.plan.quantize_code_sha", lambda: "another quantizer")
    again = plan_rows(spec, plans, SimpleNamespace(calibration_sha="c", dataset_sha="d"), "vnni")
    assert not {r.key for r in again} & {r.key for r in rows}


def test_the_sweep_keys_its_rows_by_the_versions_every_file_records_and_openvinos(tmp_path, monkeypatch):
    from importlib.metadata import version

    from edgekit.core.provenance import library_versions
    from edgekit.sweep.plan import versions

    found = versions()
    assert {k: found[k] for k in library_versions()} == library_versions()  # one reader: "2.14.1+cu130", as recorded
    assert found["openvino"] == version("openvino") and found["numpy"] == version("numpy")
    spec = _spec(tmp_path, targets=["x86-vnni"], runtimes=["ort", "openvino"])
    plans = [SimpleNamespace(name="textbook_densenet", sha256="s")]
    inputs = SimpleNamespace(calibration_sha="c", dataset_sha="d")
    rows = plan_rows(spec, plans, inputs, "vnni")
    monkeypatch.setattr("edgekit.sweep.plan.versions", lambda: {**found, "openvino": "another"})
    assert not {r.key for r in plan_rows(spec, plans, inputs, "vnni")} & {r.key for r in rows}


def test_a_sweep_file_takes_sweep_and_quantize_mappings_relative_to_itself(tmp_path):
    folder = tmp_path / "plans"
    (folder / "budget" / "a").mkdir(parents=True)
    (folder / "set" / "a").mkdir(parents=True)
    file = folder / "sweep.yaml"
    file.write_text("models: [textbook_densenet]\ndataset: set\nruntimes: [ort]\n"
                    "sweep: {max_drop: [0.5, 1]}\nquantize: {dataset: budget, fallback: true}\n")
    spec = spec_from(read_sweep_file(file), "sweep file")
    assert spec.quantize == {"dataset": str(folder / "budget"), "fallback": True}
    assert spec.for_file()["sweep"] == {"max_drop": [0.5, 1.0]}


@pytest.mark.parametrize("values, words", [
    ({"sweep": {"max_drop": []}}, "needs a non-empty list"),
    ({"sweep": {"max_drop": 1}}, "needs a non-empty list"),
    ({"quantize": {"max_drop": -1}}, "max_drop must be 0 to 100"),
    ({"quantize": {"ranges_cache": "x"}}, "ranges_cache is the sweep's own"),
    ({"sweep": {"exclude": [["a"], ["a"]]}}, "a value given twice"),
    ({"quantize": ["max_drop"]}, "quantize must be a mapping"),
    ({"sweep": {"method": ["minmax", "kl"]}}, "unknown method 'kl'"),  # the method knob's choices
])
def test_bad_knobs_in_a_sweep_file_are_one_line(tmp_path, values, words):
    with pytest.raises(BadInput, match=words):
        _spec(tmp_path, **values)


def test_cli_assignments_split_lists_and_list_knobs():
    assert parse_assignments(["max-drop=0.5,1", "exclude=none,Conv_0+Conv_3"], "--sweep") == {
        "max_drop": ["0.5", "1"], "exclude": [[], ["Conv_0", "Conv_3"]]}
    assert parse_assignments(["exclude=Conv_0,Conv_3", "method=none"], "--set") == {
        "exclude": ["Conv_0", "Conv_3"], "method": None}
    with pytest.raises(BadInput, match="names max_drop twice"):
        parse_assignments(["max_drop=1", "max_drop=2"], "--sweep")


def test_a_cached_row_keeps_its_knobs_runtime_and_fallback_columns(tmp_path):
    file = tmp_path / "f.int8.onnx"
    file.write_bytes(b"x")
    row = Row("m", "x86-vnni", "minmax", 8, "k", status="ok", int8_top1=90.0, file=str(file), knobs={"max_drop": 1.0},
              runtime="openvino", options={"max_drop": 1.0}, fp32_groups=2, groups=9, quantize_drop=0.5)
    data = row.to_dict()
    assert _row_problem(data, "k") is None and Row.from_dict(data) == row
    assert _row_problem({**data, "fp32_groups": -1}, "k") == "its fp32_groups is not a count"
    assert _row_problem({**data, "runtime": 3}, "k") == "its runtime is int, not str"
