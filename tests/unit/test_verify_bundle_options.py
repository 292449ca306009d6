"""Which VerifyOptions a bundle check refuses comes from VerifyOptions itself (its `bundle_knobs`): every other knob,
including one added tomorrow, is refused for a bundle in one line rather than silently dropped."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from edgekit.core.knobs import knob
from edgekit.verify.options import VerifyOptions


def _other_value(f: dataclasses.Field):
    """A value of the knob's type that is not its default."""
    if isinstance(f.default, bool) or "bool" in str(f.type):
        return not f.default
    if isinstance(f.default, int):
        return f.default + 1
    kind = str(f.type)
    return 3 if kind.startswith("int") else 0.5 if kind.startswith("float") else Path("x") if "Path" in kind else "x"


def _verify_flags() -> set[str]:
    import typer

    from edgekit.cli import app

    command = typer.main.get_command(app).commands["verify"]
    return {opt for p in command.params for opt in p.opts}


def test_the_bundle_knobs_are_knobs():
    names = {f.name for f in dataclasses.fields(VerifyOptions)}
    assert VerifyOptions.bundle_knobs <= names
    assert "bundle_knobs" not in names  # declared beside the knobs, not one of them


def test_every_knob_has_its_flag_on_edgekit_verify():
    from edgekit.cli.verify_cmd import knob_flag

    flags = _verify_flags()
    missing = [f.name for f in dataclasses.fields(VerifyOptions) if knob_flag(f.name) not in flags]
    assert not missing, f"no `edgekit verify` flag for {missing}: add it to verify_cmd.FLAGS"


@pytest.mark.parametrize("name", [f.name for f in dataclasses.fields(VerifyOptions)])
def test_each_knob_is_read_by_the_bundle_check_or_refused_for_it(name):
    from edgekit.cli.verify_cmd import bundle_refused_options, knob_flag

    f = next(f for f in dataclasses.fields(VerifyOptions) if f.name == name)
    refused = bundle_refused_options(VerifyOptions(**{name: _other_value(f)}))
    assert refused == ([] if name in VerifyOptions.bundle_knobs else [knob_flag(name)])


def test_defaults_refuse_nothing():
    from edgekit.cli.verify_cmd import bundle_refused_options

    assert bundle_refused_options(VerifyOptions()) == []


def test_a_knob_added_to_verify_options_is_refused_for_a_bundle_until_the_bundle_reads_it():
    from edgekit.cli.verify_cmd import bundle_refused_options

    @dataclasses.dataclass(frozen=True)
    class Tomorrow(VerifyOptions):
        sharpness: float = knob(1.0, "a knob nobody has taught the bundle check")
        tags: list = dataclasses.field(default_factory=list)

    assert bundle_refused_options(Tomorrow()) == []
    assert bundle_refused_options(Tomorrow(sharpness=2.0, tags=["a"])) == ["--sharpness", "--tags"]

    @dataclasses.dataclass(frozen=True)
    class Learned(Tomorrow):
        bundle_knobs = VerifyOptions.bundle_knobs | {"sharpness"}

    assert bundle_refused_options(Learned(sharpness=2.0)) == []


def test_refused_knobs_for_a_bundle_are_one_line_exit_2_through_the_cli(tmp_path):
    from typer.testing import CliRunner

    from edgekit.cli import app

    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "manifest.json").write_text(json.dumps({}))
    before = sorted(p.name for p in tmp_path.rglob("*"))
    result = CliRunner().invoke(app, ["verify", str(bundle), "--seed", "4", "--layers", "--samples", "9"])
    assert result.exit_code == 2, result.output
    line = result.stderr.strip()
    assert "\n" not in line and "Traceback" not in result.output
    assert "--seed, --samples, --layers do not apply to a bundle" in line
    assert sorted(p.name for p in tmp_path.rglob("*")) == before
