"""Target recipes and CPU detection."""

import pytest

from edgekit.core.errors import BadInput
from edgekit.judge.targets import (
    AS_WRITTEN_S8_SESSION,
    KEEP_FLOAT_SESSION,
    RECIPES,
    auto_target,
    detect_target,
    judge_int8,
    merge_session_configs,
    resolve_recipe,
)


@pytest.mark.parametrize(
    "machine,flags,expected",
    [
        ("x86_64", {"avx2", "fma", "avx512_vnni"}, "x86-vnni"),
        ("x86_64", {"avx2", "avx_vnni"}, "x86-vnni"),
        ("x86_64", {"avx2", "fma"}, "x86-avx2"),  # Zen 3: AVX2, no VNNI
        ("x86_64", {"sse4_2"}, "generic"),
        ("aarch64", {"asimd", "asimddp"}, "arm64"),
        ("riscv64", set(), "generic"),
    ],
)
def test_detect_target(machine, flags, expected):
    assert detect_target(machine, flags) == expected


def test_recipes_encode_the_field_notes():
    assert RECIPES["x86-avx2"].activation_type == "uint8" and RECIPES["x86-avx2"].reduce_range
    assert RECIPES["x86-vnni"].activation_type == "uint8" and not RECIPES["x86-vnni"].reduce_range
    assert RECIPES["arm64"].activation_symmetric and RECIPES["arm64"].activation_type == "int8"
    assert all(r.weight_type == "int8" and r.reason for r in RECIPES.values())


def test_overrides_and_bad_names():
    r = resolve_recipe("x86-avx2", method="entropy", per_channel=False)
    assert (r.method, r.per_channel, r.reduce_range) == ("entropy", False, True)
    with pytest.raises(BadInput, match="unknown target 'x86'"):
        resolve_recipe("x86")
    with pytest.raises(BadInput, match="unknown calibration method"):
        resolve_recipe("generic", method="kl")


def _cpu(flags: str, machine: str = "x86_64"):
    from edgekit.core.provenance import CpuInfo

    return CpuInfo(machine, "fake", frozenset(flags.split()))


@pytest.mark.parametrize(
    "flags, machine, expected",
    [("avx2 fma avx512_vnni", "x86_64", "x86-avx2"), ("avx2 fma", "x86_64", "x86-avx2"), ("asimd", "aarch64", "arm64")],
)
def test_auto_gives_a_file_that_is_safe_on_every_cpu_of_the_architecture(flags, machine, expected):
    assert auto_target(_cpu(flags, machine)) == expected


def test_auto_reads_faked_flags(monkeypatch):
    monkeypatch.setenv("EDGEKIT_FAKE_CPU_FLAGS", "avx2 fma")
    assert resolve_recipe("auto").target == "x86-avx2"
    monkeypatch.setenv("EDGEKIT_FAKE_CPU_MACHINE", "aarch64")
    assert resolve_recipe("auto").target == "arm64"


@pytest.mark.parametrize(
    "recipe, flags, meant_for, gate, both",
    [
        ("x86-avx2", "avx2 fma", None, None, False),  # 7-bit: nothing saturates anywhere
        ("x86-vnni", "avx2 fma", None, None, True),  # meant for this AVX2 CPU: gated as computed, exact beside
        ("x86-vnni", "avx2 fma", "x86-vnni", {"session.x64quantprecision": "1"}, True),  # for VNNI CPUs
        # for an NPU: its s8s8 as written (x64quantprecision=1 cannot even start DenseNet's generic file)
        ("generic", "avx2 fma", "generic", AS_WRITTEN_S8_SESSION, True),
        ("arm64", "avx2 fma", "arm64", AS_WRITTEN_S8_SESSION, True),
        ("generic", "avx2 fma avx512_vnni", "generic", None, False),
        ("x86-vnni", "avx2 fma avx512_vnni", None, None, False),  # VNNI: exact by default
    ],
)
def test_judge_int8_with_faked_cpus(recipe, flags, meant_for, gate, both):
    j = judge_int8(RECIPES[recipe].to_dict(), _cpu(flags), meant_for)
    assert j.gate_session == gate and j.also_default is both


def test_session_options_recorded_per_cpu():
    assert RECIPES["x86-avx2"].session_options() == {}
    assert RECIPES["x86-vnni"].session_options() == {"x86 without VNNI": {"session.x64quantprecision": "1"}}
    assert "any CPU" in RECIPES["x86-avx2"].session_options(float_nodes=True)
    assert RECIPES["generic"].session_options() == {"x86 without VNNI": AS_WRITTEN_S8_SESSION}


def test_list_valued_session_options_merge_instead_of_overwriting():
    # a generic file with nodes kept in float needs both optimizer lists on an AVX2 CPU: one overwriting the
    # other would re-quantize the float nodes, or bring back the saturating S8->U8 rewrite
    merged = merge_session_configs(KEEP_FLOAT_SESSION, AS_WRITTEN_S8_SESSION, {"session.x64quantprecision": "1"})
    assert merged["optimization.disable_specified_optimizers"].split(";") == [
        "WeightBiasQuantization", "QDQS8ToU8Transformer", "Avx2WeightS8ToU8Transformer"]
    assert merged["session.x64quantprecision"] == "1"
    assert merge_session_configs(None, {}) == {}


def test_check_py_applies_every_rule_of_the_cpu_merged():
    from edgekit.ondevice.cpu import session_options_for

    manifest = {"session_options": RECIPES["generic"].session_options(float_nodes=True)}
    avx2 = {"machine": "x86_64", "flags": ["avx2", "fma"], "flags_known": True}
    config, notes = session_options_for(manifest, avx2)
    key = "optimization.disable_specified_optimizers"
    assert set(config) == {key} and len(notes) == 2
    assert set(config[key].split(";")) == {"WeightBiasQuantization", "QDQS8ToU8Transformer", "Avx2WeightS8ToU8Transformer"}
    vnni = {"machine": "x86_64", "flags": ["avx2", "avx512_vnni"], "flags_known": True}
    assert session_options_for(manifest, vnni)[0] == KEEP_FLOAT_SESSION
