"""q4_0: 4.5 bits/weight, an even grid of 16 levels per block of 32, not NF4."""

import numpy as np
import pytest
import torch

from qlora_lab.quant import gguf, nf4


def ggml_q4_0_bytes(codes: torch.Tensor, scales: torch.Tensor) -> np.ndarray:
    """Our (codes, scales) laid out as ggml's block_q4_0: fp16 d, then 16 bytes, low nibbles
    holding weights 0..15 and high nibbles weights 16..31 of the block."""
    qs = codes[:, :16] | (codes[:, 16:] << 4)  # (n_blocks, 16)
    d = scales.numpy().view(np.uint8).reshape(-1, 2)  # (n_blocks, 2), little-endian fp16
    return np.concatenate([d, qs.numpy()], axis=1).reshape(-1)


def test_storage_per_weight_equals_llama_cpp_block_size():
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType.Q4_0]  # (32, 18): llama.cpp's own table
    assert (gguf.Q4_0_BLOCK, gguf.q4_0_nbytes(block)) == (block, type_size)
    assert gguf.Q4_0_BITS_PER_WEIGHT == type_size * 8 / block
    assert gguf.q4_0_nbytes(32 * 1000) == 1000 * type_size


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_q4_0_bytes_equal_llama_cpp_python_quantizer(seed):
    """Byte for byte with `gguf.quants.quantize(..., Q4_0)` (llama.cpp's gguf-py reference)."""
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize, quantize

    g = torch.Generator().manual_seed(seed)
    x = torch.randn(16, 256, generator=g) * torch.logspace(-3, 1, 16)[:, None]  # many magnitudes
    x[0, :32] = 0.0  # an all-zero block: d = 0
    x[1, :32] = torch.tensor([1.0, -1.0] * 16)  # a tie in |x|: the first one sets the sign of d
    x[2, 40] = -x[2, 32:64].abs().max() * 3  # a negative extreme
    theirs = quantize(x.numpy(), GGMLQuantizationType.Q4_0)  # (16, 8 blocks * 18 bytes)
    codes, scales = gguf.quantize_q4_0(x)
    assert theirs.nbytes == gguf.q4_0_nbytes(x.numel())
    np.testing.assert_array_equal(ggml_q4_0_bytes(codes, scales), theirs.reshape(-1))
    ours = gguf.dequantize_q4_0(codes, scales, x.shape)
    np.testing.assert_array_equal(ours.numpy(), dequantize(theirs, GGMLQuantizationType.Q4_0))


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
