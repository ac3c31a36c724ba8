"""Number formats table: ranges from finfo/iinfo, int4 derived from its bit width."""

import math

import pytest
import torch

from qlora_lab.french import nombre
from qlora_lab.quant.formats import format_markdown, format_table, int_range, loss_scaling_demo, number_format, round_trip


@pytest.mark.parametrize("name", ["float32", "float16", "bfloat16"])
def test_float_rows_match_finfo(name):
    f, info = number_format(name), torch.finfo(getattr(torch, name))
    assert (f.bits, f.max, f.min, f.smallest_normal, f.eps) == (info.bits, info.max, info.min, info.tiny, info.eps)


@pytest.mark.parametrize("bits, lo, hi", [(8, -128, 127), (4, -8, 7), (2, -2, 1)])
def test_int_range(bits, lo, hi):
    assert int_range(bits) == (lo, hi)
    assert int_range(bits, signed=False) == (0, 2**bits - 1)


def test_int8_row_agrees_with_iinfo_and_int4_with_formula():
    assert (number_format("int8").min, number_format("int8").max) == (-128.0, 127.0)
    int4 = number_format("int4")
    assert (int4.min, int4.max, int4.n_values) == (-8.0, 7.0, 16)


def test_fp16_and_bf16_same_bits_different_range():
    fp16, bf16 = number_format("float16"), number_format("bfloat16")
    assert fp16.bits == bf16.bits == 16
    assert fp16.max == 65504.0
    assert bf16.max > 3e38 and bf16.smallest_normal == number_format("float32").smallest_normal
    assert bf16.eps > fp16.eps  # bf16 trades precision for range
    assert bf16.dynamic_range_decades > 4 * fp16.dynamic_range_decades


def test_round_trip_overflow_and_underflow():
    assert math.isinf(round_trip(70000.0, torch.float16))
    assert round_trip(70000.0, torch.bfloat16) == pytest.approx(70000.0, rel=1e-2)
    assert round_trip(1e-8, torch.float16) == 0.0


def test_loss_scaling_recovers_fp16_gradient():
    demo = loss_scaling_demo(grad=1e-8)
    assert demo["fp16"] == 0.0
    assert demo["bf16"] == pytest.approx(1e-8, rel=1e-2)
    assert demo["fp16_scaled_then_unscaled"] == pytest.approx(1e-8, rel=1e-3)
    with pytest.raises(ValueError, match="scale"):
        loss_scaling_demo(scale=0)


def test_markdown_has_one_row_per_format():
    md = format_markdown(format_table())
    assert len(md.splitlines()) == 2 + 5
    assert nombre(65504) in md and "| int4 | 4 |" in md
    assert "5,96·10⁻⁸" in md  # fp16's smallest subnormal, 2^-24


def test_smallest_subnormal_is_what_repeated_halving_reaches():
    for name in ("float32", "float16", "bfloat16"):
        dtype = getattr(torch, name)
        x = torch.tensor(1.0, dtype=dtype)
        while (x / 2).item() > 0:
            x = x / 2
        assert x.item() == number_format(name).smallest_subnormal


def test_unknown_format_raises():
    with pytest.raises(ValueError, match="unknown format"):
        number_format("float8")
    with pytest.raises(ValueError, match="bits"):
        int_range(0)
