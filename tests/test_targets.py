"""Target recipes and CPU detection."""

import pytest

from edgekit.errors import BadInput
from edgekit.targets import RECIPES, detect_target, resolve_recipe


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
