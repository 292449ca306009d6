"""Options objects (edgekit/core/knobs.py): each stage's knobs declared once, and its CLI command built from them."""

from __future__ import annotations

import dataclasses
import enum
from pathlib import Path

import pytest
import typer

from edgekit.bench.options import BenchOptions
from edgekit.convert import ConvertOptions
from edgekit.core.knobs import with_knobs
from edgekit.export import ExportOptions
from edgekit.package.options import PackageOptions
from edgekit.quantize.options import QuantizeOptions
from edgekit.verify.options import VerifyOptions

# command-line names that differ from the knob's
RENAMED = {"verify": {"samples": "dataset_samples"}, "convert": {"fp16": "precision"},
           # --preprocessing FILE (with --resize, --crop, --mean...) is how the command line gives the knob
           "export": {"no_simplify": "simplify_graph", "preprocessing_file": "preprocessing"},
           "bench": {"torch": "with_torch", "interval": "interval_ms"}}
EMPTY_LIST = {("quantize", "exclude")}  # typer's repeatable option is None when absent; the knob's default is ()
# a flag that asks for the knob's one value: off by default on the command line, which then refuses to run
FLAG_FOR = {("convert", "precision"): "fp16"}
INVERTED = {("export", "simplify_graph")}  # --no-simplify turns the knob off
STAGES = [("quantize", QuantizeOptions), ("verify", VerifyOptions), ("convert", ConvertOptions),
          ("package", PackageOptions), ("export", ExportOptions), ("bench", BenchOptions)]


def _command(name: str):
    from edgekit.cli import app

    return typer.main.get_command(app).commands[name]


@pytest.mark.parametrize("name, stage_options", STAGES)
def test_every_knob_is_an_option_of_its_command_with_the_knobs_default_help_and_range(name, stage_options):
    params = {RENAMED.get(name, {}).get(p.name, p.name): p for p in _command(name).params}
    for knob in dataclasses.fields(stage_options):
        param = params[knob.name]  # every knob reaches the command line
        default = param.default.value if isinstance(param.default, enum.Enum) else param.default
        if (name, knob.name) in EMPTY_LIST:
            assert default is None and knob.default == ()
        elif (name, knob.name) in INVERTED:
            assert default is (not knob.default), knob.name
        elif (name, knob.name) in FLAG_FOR:
            assert default is False and knob.default == FLAG_FOR[name, knob.name]
        elif knob.name == "target" and name == "verify":
            assert default is None and knob.default is None
        else:
            assert default == knob.default, knob.name
        if knob.metadata["help"] is not None:
            assert param.help == knob.metadata["help"], knob.name
        low, high = knob.metadata["range"]
        if isinstance(low, int) and not isinstance(low, bool):
            assert (param.min, param.max) == (low, high), knob.name
        elif isinstance(low, float):  # between(low, high): the ends in, past them out
            assert param.callback(None, param, low) == low and param.callback(None, param, high) == high, knob.name
            for outside in (low - 1, high * 2 + 1):
                with pytest.raises(typer.BadParameter):
                    param.callback(None, param, outside)


def test_keywords_and_an_options_object_are_the_same_call():
    base = QuantizeOptions(samples=64, target="arm64")
    assert with_knobs(QuantizeOptions, None, {"samples": 64, "target": "arm64"}) == base
    assert with_knobs(QuantizeOptions, base, {"seed": 3}) == dataclasses.replace(base, seed=3)
    assert with_knobs(VerifyOptions, None, {}) == VerifyOptions()
    assert with_knobs(ConvertOptions, None, {"keep_io_types": False}) == ConvertOptions(keep_io_types=False)
    assert with_knobs(PackageOptions, PackageOptions(golden=4), {}) == PackageOptions(golden=4)
    assert with_knobs(ExportOptions, None, {"simplify_graph": False}).simplify_graph is False
    assert with_knobs(BenchOptions, BenchOptions(runs=3), {"warmup": 0}) == BenchOptions(runs=3, warmup=0)
    with pytest.raises(TypeError, match="'sample'"):
        with_knobs(QuantizeOptions, None, {"sample": 64})


def test_a_stage_refuses_an_unknown_knob_before_any_work(tmp_path):
    from edgekit.quantize import quantize
    from edgekit.bench import bench
    from edgekit.convert import convert
    from edgekit.export import export
    from edgekit.package import package
    from edgekit.verify import verify

    missing = tmp_path / "none.onnx"
    with pytest.raises(TypeError, match="calibraton"):
        quantize(missing, calibraton=Path("x"))
    with pytest.raises(TypeError, match="provider"):
        verify(missing, provider="cpu")
    with pytest.raises(TypeError, match="keep_io_type"):
        convert(missing, keep_io_type=False)
    with pytest.raises(TypeError, match="label"):
        package(missing, label=Path("x"))
    with pytest.raises(TypeError, match="simplify"):
        export("textbook_resnet18", simplify=False)
    with pytest.raises(TypeError, match="interval"):
        bench([missing], interval=5.0)


def test_options_are_values():
    options = QuantizeOptions()
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.samples = 3  # type: ignore[misc]
    assert QuantizeOptions.samples == options.samples == 128  # the class attribute is the default the CLI takes
