"""q4_0: 4.5 bits/weight, an even grid of 16 levels per block of 32, not NF4."""

import pytest
import torch

from qlora_lab.quant import gguf, nf4


def test_bits_per_weight_is_4_5():
    assert gguf.Q4_0_BITS_PER_WEIGHT == 4.5
    assert gguf.q4_0_nbytes(32 * 1000) * 8 / (32 * 1000) == 4.5


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_round_trip_error_is_at_most_one_step(seed):
    torch.manual_seed(seed)
    x = torch.randn(64, 32)
    codes, scales = gguf.quantize_q4_0(x)
    x_hat = gguf.dequantize_q4_0(codes, scales, x.shape)
    step = scales.float().abs().repeat_interleave(32).view_as(x)
    assert codes.max() <= 15
    err = (x - x_hat).abs()
    # half a step inside the grid; up to one step at +8·|d|, which code 15 (= +7·|d|) clips
    assert (err <= step + 1e-3).all()
    assert (err <= step / 2 + 1e-3).float().mean() > 0.95


def test_largest_magnitude_is_exact_up_to_fp16_scale():
    x = torch.tensor([0.1] * 31 + [-2.0])
    codes, scales = gguf.quantize_q4_0(x)
    assert codes[0, -1] == 0  # level (0 - 8) · d with d = -2 / -8
    assert gguf.dequantize_q4_0(codes, scales)[-1] == pytest.approx(-2.0, rel=1e-3)


def test_levels_are_evenly_spaced_unlike_nf4():
    codes = torch.arange(16, dtype=torch.uint8).repeat(2).view(1, 32)
    levels = gguf.dequantize_q4_0(codes, torch.tensor([1.0], dtype=torch.float16))[:16]
    assert torch.diff(levels).unique().tolist() == [1.0]
    assert torch.diff(nf4.nf4_levels()).unique().numel() > 10


def test_bad_length_is_a_clear_error():
    with pytest.raises(ValueError, match="multiple"):
        gguf.quantize_q4_0(torch.randn(33))
