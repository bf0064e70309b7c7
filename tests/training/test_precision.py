import pytest

from transferkit.errors import UserError
from transferkit.training import resolve_precision


@pytest.mark.parametrize("flags, expected", [
    ({"avx2", "fma"}, "fp32"),
    ({"avx512f", "avx512bw"}, "fp32"),  # AVX-512 without bf16: emulated, slower than fp32
    ({"avx512f", "avx512_bf16"}, "bf16"),
    ({"amx_tile", "amx_bf16"}, "bf16"),
])
def test_auto_picks_bf16_only_with_native_support(flags, expected):
    choice = resolve_precision("auto", flags)
    assert choice.name == expected
    assert choice.reason.startswith("auto:")


def test_explicit_choice_wins():
    assert resolve_precision("fp32", {"avx512_bf16"}).name == "fp32"
    slow = resolve_precision("bf16", {"avx2"})
    assert slow.name == "bf16" and "slow" in slow.reason


def test_unknown_precision():
    with pytest.raises(UserError, match="--precision"):
        resolve_precision("fp8", set())
