"""Tests for qlora_lab.quant.absmax: error bounds, granularity, zero-point, and PyTorch parity."""

import math

import pytest
import torch

from qlora_lab.quant import absmax
from qlora_lab.quant.absmax import (
    QuantizedTensor,
    code_range,
    dequantize,
    fake_quantize,
    quantization_error,
    quantize,
)

BITS = list(range(2, 9))
SCHEMES = ["absmax", "zeropoint"]
GRANULARITIES = ["tensor", "channel", "block"]


def _weights(seed: int, shape=(24, 100)) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=generator) * 0.05 + 0.01


def _per_element_scale(qt: QuantizedTensor) -> torch.Tensor:
    """The scale of each element's group, broadcast to the tensor's shape."""
    n = math.prod(qt.shape)
    if qt.granularity == "tensor":
        return qt.scale.expand(qt.shape)
    if qt.granularity == "channel":
        return qt.scale.view(-1, *([1] * (len(qt.shape) - 1))).expand(qt.shape)
    return qt.scale.repeat_interleave(qt.blocksize)[:n].view(qt.shape)


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("granularity", GRANULARITIES)
@pytest.mark.parametrize("seed", [0, 1])
def test_round_trip_error_is_at_most_half_a_step(bits, scheme, granularity, seed):
    x = _weights(seed, shape=(24, 100))  # 2400 elements: the last block of 64 is partial
    qt = quantize(x, bits=bits, scheme=scheme, granularity=granularity, blocksize=64)
    x_hat = dequantize(qt)
    assert x_hat.shape == x.shape and x_hat.dtype == x.dtype
    qmin, qmax = code_range(bits, scheme)
    assert int(qt.codes.min()) >= qmin and int(qt.codes.max()) <= qmax
    bound = _per_element_scale(qt) / 2
    # half a step, plus float32 rounding of (q - z) * scale
    assert torch.all((x - x_hat).abs() <= bound * (1 + 1e-5) + 1e-7)


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("scheme", SCHEMES)
def test_matches_torch_fake_quantize_per_tensor(bits, scheme):
    x = _weights(2, shape=(16, 64))
    qt = quantize(x, bits=bits, scheme=scheme, granularity="tensor")
    qmin, qmax = code_range(bits, scheme)
    expected = torch.fake_quantize_per_tensor_affine(x, qt.scale, qt.zero_point, qmin, qmax)
    assert torch.equal(dequantize(qt), expected)


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("scheme", SCHEMES)
def test_matches_torch_fake_quantize_per_channel_and_per_block(bits, scheme):
    x = _weights(3, shape=(16, 96))
    qmin, qmax = code_range(bits, scheme)
    qc = quantize(x, bits=bits, scheme=scheme, granularity="channel")
    expected = torch.fake_quantize_per_channel_affine(x, qc.scale, qc.zero_point, 0, qmin, qmax)
    assert torch.equal(dequantize(qc), expected)
    # per block = per channel on the (n_blocks, blocksize) view
    qb = quantize(x, bits=bits, scheme=scheme, granularity="block", blocksize=32)
    blocks = x.reshape(-1, 32)
    expected = torch.fake_quantize_per_channel_affine(blocks, qb.scale, qb.zero_point, 0, qmin, qmax)
    assert torch.equal(dequantize(qb), expected.view(x.shape))


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("granularity", ["channel", "block"])
def test_finer_groups_beat_per_tensor_with_an_outlier(scheme, granularity):
    x = _weights(4, shape=(32, 128))
    x[5, 7] = 8.0  # one outlier, ~160 standard deviations
    coarse = quantization_error(x, fake_quantize(x, bits=4, scheme=scheme, granularity="tensor"))
    x_fine = fake_quantize(x, bits=4, scheme=scheme, granularity=granularity, blocksize=64)
    fine = quantization_error(x, x_fine)
    assert fine["mse"] < coarse["mse"] / 10
    assert fine["sqnr_db"] > coarse["sqnr_db"] + 10


@pytest.mark.parametrize("bits", BITS)
def test_zeropoint_is_exact_on_a_constant_tensor(bits):
    for value in (3.25, -0.7):
        x = torch.full((10, 10), value)
        x_hat = fake_quantize(x, bits=bits, scheme="zeropoint")
        torch.testing.assert_close(x_hat, x, rtol=1e-6, atol=0)


@pytest.mark.parametrize("bits", BITS)
def test_zeropoint_is_exact_on_a_shifted_grid_and_keeps_zero_exact(bits):
    # A range shifted off-centre, [-z * step, (2^b - 1 - z) * step], with values on the
    # grid: the zero-point scheme reproduces every one of them (absmax could not: its
    # grid is symmetric and would waste codes on [-max, -z * step]).
    n_codes = 2**bits - 1
    z = n_codes // 4  # zero-point
    step = 0.1
    x = (torch.arange(n_codes + 1, dtype=torch.float32) - z) * step
    qt = quantize(x, bits=bits, scheme="zeropoint")
    assert int(qt.zero_point) == z
    torch.testing.assert_close(dequantize(qt), x, rtol=0, atol=1e-6)
    assert dequantize(qt)[z].item() == 0.0  # zero stays exactly zero


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_zeropoint_beats_absmax_on_a_one_sided_range(bits):
    x = torch.rand(4096, generator=torch.Generator().manual_seed(5))  # ReLU-like, [0, 1)
    err_absmax = quantization_error(x, fake_quantize(x, bits=bits, scheme="absmax"))
    err_zero = quantization_error(x, fake_quantize(x, bits=bits, scheme="zeropoint"))
    # absmax spends half its codes on negatives it never sees: ~2x the step, ~4x the MSE
    assert err_zero["mse"] < err_absmax["mse"] / 2.5


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("granularity", GRANULARITIES)
def test_all_zero_input_and_zero_blocks_dequantize_to_zero(scheme, granularity):
    x = torch.zeros(4, 64)
    x_hat = fake_quantize(x, bits=4, scheme=scheme, granularity=granularity, blocksize=64)
    assert torch.equal(x_hat, x)
    y = _weights(6, shape=(4, 64))
    y[1] = 0.0  # one zero channel, one zero block
    y_hat = fake_quantize(y, bits=4, scheme=scheme, granularity=granularity, blocksize=64)
    assert not torch.isnan(y_hat).any()
    assert torch.equal(y_hat[1], torch.zeros(64)) or granularity == "tensor"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_keeps_dtype_and_shape(dtype):
    x = _weights(7, shape=(3, 5, 7)).to(dtype)
    qt = quantize(x, bits=8, granularity="block", blocksize=16)
    assert qt.codes.shape == x.shape and qt.codes.dtype == torch.int8
    x_hat = dequantize(qt)
    assert x_hat.dtype == dtype and x_hat.shape == x.shape
    assert quantization_error(x.float(), x_hat.float())["sqnr_db"] > 35


def test_more_bits_give_about_six_db_each():
    x = torch.rand(20000, generator=torch.Generator().manual_seed(8)) * 2 - 1  # uniform
    sqnr = [quantization_error(x, fake_quantize(x, bits=b))["sqnr_db"] for b in (4, 5, 6, 7, 8)]
    gains = [b - a for a, b in zip(sqnr, sqnr[1:])]
    # 6.02 dB per bit in the limit; at low bits the symmetric grid (2^b - 1 levels,
    # not 2^b) makes each extra bit worth slightly more.
    assert all(5.8 < g < 7.0 for g in gains), gains


def test_quantization_error_metrics():
    x = torch.tensor([1.0, -2.0, 3.0, 0.0])
    x_hat = torch.tensor([1.0, -2.5, 3.0, 0.5])
    err = quantization_error(x, x_hat)
    assert err["mse"] == pytest.approx(0.125)
    assert err["mae"] == pytest.approx(0.25)
    assert err["max_abs"] == pytest.approx(0.5)
    assert err["sqnr_db"] == pytest.approx(10 * math.log10(14 / 0.5))
    assert quantization_error(x, x)["sqnr_db"] == math.inf
    with pytest.raises(ValueError, match="x_hat"):
        quantization_error(x, x_hat[:2])


@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [
        ({"bits": 1}, "bits"),
        ({"bits": 9}, "bits"),
        ({"bits": 4.0}, "bits"),
        ({"scheme": "minmax"}, "scheme"),
        ({"granularity": "row"}, "granularity"),
        ({"granularity": "block", "blocksize": 48}, "blocksize"),
        ({"granularity": "block", "blocksize": 0}, "blocksize"),
        ({"granularity": "block", "blocksize": -64}, "blocksize"),
    ],
)
def test_bad_arguments_raise_value_error_naming_them(kwargs, argument):
    with pytest.raises(ValueError, match=argument):
        quantize(torch.randn(8, 8), **kwargs)


@pytest.mark.parametrize(
    "x",
    [
        torch.arange(16),  # integers
        torch.tensor([1.0, float("nan")]),
        torch.tensor([1.0, float("inf")]),
        torch.tensor([1.0, float("-inf")]),
        torch.empty(0),
    ],
    ids=["int", "nan", "inf", "-inf", "empty"],
)
def test_bad_input_tensor_raises_value_error_naming_x(x):
    with pytest.raises(ValueError, match=r"^x "):
        quantize(x)


# --- checks that kill mutants left alive by the tests above (make mutation) -------------------

def test_fake_quantize_defaults_are_8_bit_absmax_per_tensor_like_torch():
    x = torch.randn(16, 32, generator=torch.Generator().manual_seed(11))
    scale = float(x.abs().max()) / 127
    expected = torch.fake_quantize_per_tensor_affine(x, scale, 0, -127, 127)
    torch.testing.assert_close(absmax.fake_quantize(x), expected, rtol=0, atol=1e-6)


def test_fake_quantize_uses_the_blocksize_given():
    x = torch.randn(8, 32, generator=torch.Generator().manual_seed(12))
    blocks = x.reshape(-1, 16)
    scales = blocks.abs().amax(dim=1) / 7  # 4-bit absmax, one scale per 16 values
    expected = torch.fake_quantize_per_channel_affine(blocks, scales, torch.zeros(len(scales), dtype=torch.int32),
                                                      0, -7, 7).view_as(x)
    got = absmax.fake_quantize(x, bits=4, granularity="block", blocksize=16)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


def test_zeropoint_per_channel_like_torch_including_an_all_zero_channel():
    x = torch.randn(4, 32, generator=torch.Generator().manual_seed(13)) * torch.tensor([[0.1], [1.0], [5.0], [0.0]])
    x[1] += 2.0  # a channel of positive values: its range is widened down to 0
    qt = absmax.quantize(x, bits=8, scheme="zeropoint", granularity="channel")
    assert qt.zero_point.dtype == torch.int32 and qt.scale[3] == 1.0  # all-zero channel: any scale, here 1
    lo, hi = x.amin(dim=1).clamp(max=0), x.amax(dim=1).clamp(min=0)
    scale = torch.where(hi > lo, (hi - lo) / 255, torch.ones(4))
    zero_point = (-torch.round(lo / scale)).to(torch.int32)
    expected = torch.fake_quantize_per_channel_affine(x, scale, zero_point, 0, 0, 255)
    torch.testing.assert_close(absmax.dequantize(qt), expected, rtol=0, atol=1e-6)
    assert torch.equal(absmax.dequantize(qt)[3], torch.zeros(32))


def test_one_dimensional_tensor_per_channel_has_one_value_per_channel():
    x = torch.tensor([0.5, -2.0, 3.0])
    qt = absmax.quantize(x, granularity="channel")
    torch.testing.assert_close(qt.scale, x.abs() / 127)
    torch.testing.assert_close(absmax.dequantize(qt), x)


def test_errors_name_the_argument():
    with pytest.raises(ValueError, match="x must be a torch.Tensor, got list"):
        absmax.quantize([1.0, 2.0])
    with pytest.raises(ValueError, match="unknown scheme 'affine'"):
        absmax.quantize(torch.ones(4), scheme="affine")
    with pytest.raises(ValueError, match="granularity='channel' needs a tensor with at least 1 dimension"):
        absmax.quantize(torch.tensor(1.0), granularity="channel")


def test_sqnr_of_an_all_zero_signal_is_minus_infinity():
    errors = absmax.quantization_error(torch.zeros(8), torch.ones(8))
    assert errors["sqnr_db"] == -math.inf


def test_error_messages_name_the_argument_exactly():
    # The messages, written out by hand: a mangled name ("XXschemeXX", None) must not pass.
    with pytest.raises(ValueError, match=r"^unknown scheme 'minmax': expected one of \('absmax', 'zeropoint'\)$"):
        code_range(4, "minmax")
    with pytest.raises(ValueError, match=r"^unknown granularity 'row': expected one of "):
        quantize(torch.ones(4), granularity="row")
    with pytest.raises(ValueError, match=r"^blocksize must be an int, got 64\.0$"):
        quantize(torch.ones(4), granularity="block", blocksize=64.0)
    with pytest.raises(ValueError, match=r"^blocksize must be an int, got True$"):
        absmax.check_blocksize(True)
    with pytest.raises(ValueError, match=r"^blocksize must be a positive power of two, got 48$"):
        absmax.check_blocksize(48)
    with pytest.raises(ValueError, match=r"^granularity='channel' needs a tensor with at least 1 dimension$"):
        quantize(torch.tensor(1.0), granularity="channel")


@pytest.mark.parametrize("blocksize", [1, 2, 4])
def test_smallest_powers_of_two_are_valid_blocksizes(blocksize):
    # 1 = 2^0 and 2 are powers of two; with one value per block, absmax = |x| and the round trip is exact.
    absmax.check_blocksize(blocksize)
    x = torch.tensor([0.5, -2.0, 3.0, 0.25])
    qt = quantize(x, bits=8, granularity="block", blocksize=blocksize)
    assert qt.scale.shape == (4 // blocksize,)
    if blocksize == 1:
        torch.testing.assert_close(qt.scale, x.abs() / 127)
        torch.testing.assert_close(dequantize(qt), x)


@pytest.mark.parametrize("x, bits, codes", [
    # lo = -3.5·scale: zero-point round(3.5) = 4 (half to even), and hi/scale = 11.5 rounds to 12: 12 + 4 = 16 > 15
    ([-3.5, 11.5], 4, [0, 15]),
    # found by search: lo·(1/scale) and lo/scale round apart by one ulp, so the smallest code is 0 - 1 before the clamp
    ([-2.483783006668091, 0.49675658345222473], 2, [0, 2]),
])
def test_codes_are_clamped_like_torch_fake_quantize(x, bits, codes):
    x = torch.tensor(x)
    qt = quantize(x, bits=bits, scheme="zeropoint")
    assert qt.codes.tolist() == codes
    expected = torch.fake_quantize_per_tensor_affine(x, qt.scale, qt.zero_point, 0, 2**bits - 1)
    torch.testing.assert_close(dequantize(qt), expected, rtol=0, atol=1e-6)


def test_the_record_says_how_the_codes_were_made():
    x = _weights(5, shape=(1, 64))
    per_tensor = quantize(x, bits=3, scheme="zeropoint", granularity="tensor")
    assert (per_tensor.bits, per_tensor.scheme) == (3, "zeropoint")
    qmin, qmax = code_range(per_tensor.bits, per_tensor.scheme)  # the range the record declares holds the codes
    assert (qmin, qmax) == (0, 7) and int(per_tensor.codes.max()) == qmax
    assert per_tensor.scale.shape == () and per_tensor.zero_point.shape == ()  # one scale: a 0-d tensor
    # One channel keeps a 1-D scale of length 1, as torch.fake_quantize_per_channel_affine needs.
    per_channel = quantize(x, bits=3, scheme="zeropoint", granularity="channel")
    assert per_channel.scale.shape == (1,)
    expected = torch.fake_quantize_per_channel_affine(x, per_channel.scale, per_channel.zero_point, 0, 0, 7)
    torch.testing.assert_close(dequantize(per_channel), expected, rtol=0, atol=1e-6)
