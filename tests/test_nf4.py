"""Tests for qlora_lab.quant.nf4: codebooks and blockwise 4-bit quantization equal to bitsandbytes."""

import inspect
import math
import warnings

import pytest
import torch

from qlora_lab.backends import import_bnb
from qlora_lab.quant.absmax import fake_quantize
from qlora_lab.quant.nf4 import (
    BNB_NF4_OFFSET,
    NF4_OFFSET,
    QuantState,
    codebook,
    dequantize_4bit,
    e2m1_levels,
    fp4_levels,
    int4_levels,
    nf4_levels,
    normal_map,
    quantize_4bit,
    to_bnb_quant_state,
)
from qlora_lab.quant.codes import nearest_code, nearest_code_bucketize, pack_4bit, unpack_4bit

F = import_bnb().functional


pytestmark = pytest.mark.usefixtures("eager_single_thread")


def _bnb_reference_dequantize(packed: torch.Tensor, state) -> torch.Tensor:
    """bitsandbytes' own PyTorch dequantization (backends/default/ops.py), any shape.

    bitsandbytes 0.50.2's C++ CPU kernel (used for an even last dimension) returns wrong
    values for a multi-row tensor whose last dimension is not a multiple of the blocksize
    (e.g. shape (8, 48) with blocksize 64: it restarts blocks at each row). Its PyTorch
    path, which it uses for odd last dimensions, indexes blocks over the flattened tensor
    like the quantizer and is the reference we compare with for such shapes.
    """
    from bitsandbytes.backends.default.ops import _dequantize_4bit_compute

    absmax = state.absmax
    if state.nested:
        absmax = F.dequantize_blockwise(state.absmax, state.state2) + state.offset
    code = F.get_4bit_type(state.quant_type, device="cpu")
    flat = packed.reshape(-1)
    return _dequantize_4bit_compute(flat, absmax, code, state.blocksize, state.shape, state.dtype)


# ----------------------------------------------------------------------------- codebooks


def test_nf4_levels_equal_bitsandbytes_table():
    levels = nf4_levels()
    reference = F.get_4bit_type("nf4", device="cpu")
    assert levels.dtype == torch.float32 and levels.shape == (16,)
    torch.testing.assert_close(levels, reference, rtol=0, atol=1e-7)
    assert torch.all(levels[1:] > levels[:-1])  # ascending
    assert (levels < 0).sum() == 7 and (levels == 0).sum() == 1 and (levels > 0).sum() == 8


def test_nf4_derivation_from_quantiles_equals_create_normal_map():
    derived = normal_map(BNB_NF4_OFFSET)  # our derivation: norm.ppf on float32 linspace
    bnb_map = F.create_normal_map(offset=BNB_NF4_OFFSET, use_extra_value=True)  # 256 entries
    assert torch.equal(derived, torch.unique(bnb_map))  # its 16 distinct values, sorted
    torch.testing.assert_close(derived, F.get_4bit_type("nf4", device="cpu"), rtol=0, atol=1e-7)


def test_nf4_offset_is_the_mean_of_the_two_last_bin_centres():
    assert NF4_OFFSET == pytest.approx((1 - 1 / 30 + 1 - 1 / 32) / 2)
    bnb_default = inspect.signature(import_bnb().functional.create_normal_map).parameters["offset"].default
    assert round(NF4_OFFSET, 7) == BNB_NF4_OFFSET == bnb_default  # the literal is bitsandbytes' own default
    # the 7-decimal literal changes the table by a few float32 ulps only
    torch.testing.assert_close(normal_map(NF4_OFFSET), nf4_levels(), rtol=0, atol=5e-7)


def test_nf4_levels_split_the_normal_distribution_into_nearly_equal_bins():
    from scipy.stats import norm

    levels = nf4_levels().double()
    scale = norm.ppf(BNB_NF4_OFFSET)
    midpoints = ((levels[1:] + levels[:-1]) / 2 * scale).numpy()
    mass = torch.tensor(norm.cdf(midpoints[1:]) - norm.cdf(midpoints[:-1]))  # 14 inner bins
    assert mass.max() / mass.min() < 1.6  # a uniform INT4 grid would give ~6


def test_fp4_levels_equal_bitsandbytes_table():
    assert torch.equal(fp4_levels(), F.get_4bit_type("fp4", device="cpu"))
    raw = fp4_levels() * 12  # undo the normalisation
    assert raw[:8].tolist() == [0, 0.0625, 8, 12, 4, 6, 2, 3]
    assert torch.equal(raw[8:], -raw[:8])


def test_standard_e2m1_levels_follow_the_ocp_table_and_differ_from_bitsandbytes_only_below_one_sixth():
    raw = (e2m1_levels() * 6).tolist()  # OCP MX spec v1.0, table of FP4 E2M1 values
    assert sorted(set(abs(v) for v in raw)) == [0, 0.5, 1, 1.5, 2, 3, 4, 6]
    assert raw[8:] == [-v for v in raw[:8]]
    ours, bnb_fp4 = e2m1_levels(), F.get_4bit_type("fp4", device="cpu")
    positive = lambda t: t[t > 0].sort().values  # noqa: E731
    # the five largest levels agree (2/12 ... 12/12 = 1/6 ... 1); the small ones do not
    torch.testing.assert_close(positive(ours)[-5:], positive(bnb_fp4)[-5:])
    assert positive(bnb_fp4)[1] / positive(bnb_fp4)[0] == pytest.approx(32)
    assert positive(ours)[1] / positive(ours)[0] == pytest.approx(2)


def test_int4_levels_are_uniform_and_symmetric():
    levels = int4_levels()
    assert levels.shape == (16,) and torch.all(levels[1:] >= levels[:-1])
    torch.testing.assert_close(torch.unique(levels), torch.arange(-7, 8) / 7)
    assert torch.equal(levels, -levels.flip(0))  # symmetric: the 16th code is a second 0


def test_codebook_dispatch_and_unknown_type():
    assert torch.equal(codebook("nf4"), nf4_levels())
    assert torch.equal(codebook("fp4"), fp4_levels())
    with pytest.raises(ValueError, match="quant_type"):
        codebook("nf5")


# ----------------------------------------------------------------------------- packing


def test_pack_puts_the_first_code_in_the_high_nibble():
    codes = torch.tensor([1, 2, 15, 0, 7], dtype=torch.uint8)
    packed = pack_4bit(codes)
    assert packed.shape == (3, 1) and packed.dtype == torch.uint8
    assert packed.view(-1).tolist() == [0x12, 0xF0, 0x70]
    assert torch.equal(unpack_4bit(packed)[:5], codes)


# ----------------------------------------------------------------------------- equality with bnb

SHAPES = [
    (64, 192),  # divisible by every blocksize tested
    (1000,),  # 1-D, not divisible
    (33, 70),  # 2310 elements, not divisible
    (7, 129),  # odd count (an odd last dimension: bnb's PyTorch path)
    (8, 48),  # last dimension below the blocksize (see _bnb_reference_dequantize)
]


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("blocksize", [64, 128, 256])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("double_quant", [False, True], ids=["plain", "dq"])
@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
def test_quantize_4bit_equals_bitsandbytes(quant_type, double_quant, dtype, blocksize, shape, seed):
    generator = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=generator) * 0.02).to(dtype)
    x.view(-1)[: blocksize // 2] *= 50  # outliers in the first block

    packed, state = quantize_4bit(x, quant_type=quant_type, blocksize=blocksize, double_quant=double_quant)
    bnb_packed, bnb_state = F.quantize_4bit(
        x, blocksize=blocksize, quant_type=quant_type, compress_statistics=double_quant
    )
    # the bytes themselves: same codes, same nibble order, same shape
    assert packed.shape == bnb_packed.shape and torch.equal(packed, bnb_packed)
    assert torch.equal(state.absmax, bnb_state.absmax)
    assert state.nested == bnb_state.nested
    if double_quant:
        assert torch.equal(state.offset, bnb_state.offset)
        assert torch.equal(state.state2.absmax, bnb_state.state2.absmax)
        assert torch.equal(state.state2.code, bnb_state.state2.code)

    x_hat = dequantize_4bit(packed, state)
    assert x_hat.shape == x.shape and x_hat.dtype == dtype
    reference = _bnb_reference_dequantize(bnb_packed, bnb_state)
    torch.testing.assert_close(x_hat, reference.view(x.shape), rtol=1e-6, atol=0)
    if len(shape) == 1 or shape[-1] % blocksize == 0 or shape[-1] % 2:  # bnb's public API
        expected = F.dequantize_4bit(bnb_packed, bnb_state)  # (1, n) for a 1-D input
        torch.testing.assert_close(x_hat, expected.view(x.shape), rtol=1e-6, atol=0)


@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
def test_bitsandbytes_dequantizes_our_bytes(quant_type):
    x = torch.randn(96, 128, generator=torch.Generator().manual_seed(3))
    packed, state = quantize_4bit(x, quant_type=quant_type, blocksize=64, double_quant=True)
    from_bnb = F.dequantize_4bit(packed, to_bnb_quant_state(state))
    torch.testing.assert_close(dequantize_4bit(packed, state), from_bnb, rtol=1e-6, atol=0)


def test_float16_input_equals_bitsandbytes():
    x = torch.randn(32, 64, generator=torch.Generator().manual_seed(4)).half()
    packed, state = quantize_4bit(x, "nf4", 64, True)
    bnb_packed, bnb_state = F.quantize_4bit(x, blocksize=64, quant_type="nf4", compress_statistics=True)
    assert torch.equal(packed, bnb_packed)
    torch.testing.assert_close(dequantize_4bit(packed, state), F.dequantize_4bit(bnb_packed, bnb_state))


@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
def test_midpoints_and_exact_levels_round_like_bitsandbytes(quant_type):
    # values exactly on the levels and on the midpoints between them (ties go down)
    levels = codebook(quant_type).sort().values
    midpoints = (levels[1:] + levels[:-1]) / 2
    block = torch.cat([levels, midpoints, torch.tensor([1.0, -1.0, 0.0, -0.0])])  # 35 values
    x = torch.cat([block, torch.zeros(64 - block.numel())]).repeat(4)  # absmax = 1 per block
    packed, _ = quantize_4bit(x, quant_type, 64, False)
    bnb_packed, _ = F.quantize_4bit(x, blocksize=64, quant_type=quant_type)
    assert torch.equal(packed, bnb_packed)


@pytest.mark.parametrize("quant_type", ["nf4", "fp4", "int4"])
def test_grid_lookup_equals_bucketize_on_ties_edges_and_random_values(quant_type):
    code = codebook(quant_type)
    levels = code.sort().values
    midpoints = (levels[1:] + levels[:-1]) / 2
    up, down = torch.tensor(2.0), torch.tensor(-2.0)
    grid_edges = torch.arange(-2048, 2049) / 2048  # cell edges of the 4096-cell grid
    special = torch.cat([
        levels, midpoints, midpoints.nextafter(up), midpoints.nextafter(down),
        grid_edges, grid_edges.nextafter(up), grid_edges.nextafter(down),
        torch.tensor([-0.0, 1.0000001, -1.0000001, 1e-30, -1e-30]),
    ])
    random = torch.rand(200_000, generator=torch.Generator().manual_seed(10)) * 2 - 1
    for values in (special, random):
        assert torch.equal(nearest_code(values, code), nearest_code_bucketize(values, code))


@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
@pytest.mark.parametrize("double_quant", [False, True])
def test_chunked_processing_equals_bitsandbytes(monkeypatch, quant_type, double_quant):
    import qlora_lab.quant.nf4

    monkeypatch.setattr(qlora_lab.quant.nf4, "CHUNK_ELEMENTS", 1024)  # 16 blocks of 64 per chunk
    x = torch.randn(37, 301, generator=torch.Generator().manual_seed(11))  # 11137: odd, partial
    packed, state = quantize_4bit(x, quant_type, 64, double_quant)
    bnb_packed, bnb_state = F.quantize_4bit(
        x, blocksize=64, quant_type=quant_type, compress_statistics=double_quant
    )
    assert torch.equal(packed, bnb_packed)
    assert torch.equal(dequantize_4bit(packed, state), F.dequantize_4bit(bnb_packed, bnb_state))
    bf16 = dequantize_4bit(packed, QuantState(**{**vars(state), "dtype": torch.bfloat16}))
    assert torch.equal(bf16, dequantize_4bit(packed, state).to(torch.bfloat16))


# ----------------------------------------------------------------------------- behaviour


@pytest.mark.parametrize("quant_type", ["nf4", "fp4", "int4"])
@pytest.mark.parametrize("double_quant", [False, True])
def test_all_zero_blocks_dequantize_to_zero(quant_type, double_quant):
    x = torch.randn(4, 64, generator=torch.Generator().manual_seed(5))
    x[1] = 0.0  # one whole zero block
    packed, state = quantize_4bit(x, quant_type, 64, double_quant)
    x_hat = dequantize_4bit(packed, state)
    assert not torch.isnan(x_hat).any()
    assert torch.equal(x_hat[1], torch.zeros(64))
    zeros = torch.zeros(100)  # everything zero, partial last block
    assert torch.equal(dequantize_4bit(*quantize_4bit(zeros, quant_type, 64, double_quant)), zeros)


def test_int4_codebook_equals_absmax_at_4_bits_per_block():
    x = torch.randn(64, 64, generator=torch.Generator().manual_seed(6))
    packed, state = quantize_4bit(x, "int4", blocksize=64, double_quant=False)
    expected = fake_quantize(x, bits=4, scheme="absmax", granularity="block", blocksize=64)
    torch.testing.assert_close(dequantize_4bit(packed, state), expected, rtol=1e-6, atol=1e-7)


def test_nf4_has_lower_error_than_fp4_and_int4_on_normal_weights():
    x = torch.randn(256, 256, generator=torch.Generator().manual_seed(7)) * 0.02
    mse = {}
    for quant_type in ("nf4", "fp4", "int4"):
        x_hat = dequantize_4bit(*quantize_4bit(x, quant_type, 64, False))
        mse[quant_type] = float(((x - x_hat) ** 2).mean())
    assert mse["nf4"] < mse["int4"] < mse["fp4"], mse


def test_double_quant_changes_the_reconstruction_very_little():
    x = torch.randn(128, 256, generator=torch.Generator().manual_seed(8))
    plain = dequantize_4bit(*quantize_4bit(x, "nf4", 64, False))
    nested = dequantize_4bit(*quantize_4bit(x, "nf4", 64, True))
    err_plain = float(((x - plain) ** 2).mean())
    err_nested = float(((x - nested) ** 2).mean())
    assert err_nested == pytest.approx(err_plain, rel=0.02)


def test_dequantize_uses_the_lookup_table_faithfully():
    x = torch.randn(3, 50, generator=torch.Generator().manual_seed(9))
    packed, state = quantize_4bit(x, "fp4", blocksize=32, double_quant=False)
    codes = unpack_4bit(packed)[: x.numel()].long()
    scale = state.absmax.repeat_interleave(32)[: x.numel()]
    expected = (state.code[codes] * scale).view(x.shape)  # the plain formula
    assert torch.equal(dequantize_4bit(packed, state), expected)


def test_state_uses_bitsandbytes_vocabulary():
    x = torch.randn(10, 64)
    packed, state = quantize_4bit(x, "nf4", 64, True)
    assert isinstance(state, QuantState)
    assert state.shape == x.shape and state.dtype == torch.float32 and state.quant_type == "nf4"
    assert state.nested and state.absmax.dtype == torch.uint8 and state.state2.blocksize == 256
    assert packed.shape == (math.ceil(x.numel() / 2), 1)


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [
        ({"quant_type": "nf3"}, "quant_type"),
        ({"blocksize": 48}, "blocksize"),
        ({"blocksize": 0}, "blocksize"),
        ({"blocksize": -64}, "blocksize"),
    ],
)
def test_bad_arguments_raise_value_error_naming_them(kwargs, argument):
    with pytest.raises(ValueError, match=argument):
        quantize_4bit(torch.randn(128), **kwargs)


@pytest.mark.parametrize(
    "x",
    [
        torch.arange(128),
        torch.tensor([1.0, float("nan")] * 64),
        torch.tensor([1.0, float("inf")] * 64),
        torch.empty(0),
    ],
    ids=["int", "nan", "inf", "empty"],
)
def test_bad_input_tensor_raises_value_error_naming_x(x):
    with pytest.raises(ValueError, match=r"^x "):
        quantize_4bit(x)


def test_symmetric_normal_map_without_the_extra_value_equals_bitsandbytes():
    """use_extra_value=False: 7 positive and 7 negative quantiles around an exact 0 (15 values)."""
    ours = normal_map(BNB_NF4_OFFSET, use_extra_value=False)
    theirs = F.create_normal_map(offset=BNB_NF4_OFFSET, use_extra_value=False).unique()  # 256 entries, zeros padded
    assert ours.shape == (15,) and torch.equal(ours, theirs)


def test_tables_are_float32_whatever_the_default_dtype():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        tables = {"fp4": fp4_levels(), "int4": int4_levels(), "normal_map": normal_map()}
    finally:
        torch.set_default_dtype(previous)
    assert {name: t.dtype for name, t in tables.items()} == dict.fromkeys(tables, torch.float32)
    assert torch.equal(tables["fp4"], F.get_4bit_type("fp4", device="cpu"))


@pytest.mark.parametrize("double_quant", [False, True])
def test_to_bnb_quant_state_carries_every_field_bitsandbytes_sets(double_quant):
    x = torch.randn(64, 128, generator=torch.Generator().manual_seed(5))
    _, state = quantize_4bit(x, "nf4", 64, double_quant)
    ours = to_bnb_quant_state(state)
    _, theirs = F.quantize_4bit(x, blocksize=64, quant_type="nf4", compress_statistics=double_quant)
    assert isinstance(ours, F.QuantState) and ours.nested == theirs.nested == double_quant
    assert (ours.shape, ours.blocksize, ours.quant_type, ours.dtype) == (theirs.shape, 64, "nf4", theirs.dtype)
    assert torch.equal(ours.absmax, theirs.absmax) and torch.equal(ours.code, theirs.code)
    if double_quant:
        assert torch.equal(ours.offset, theirs.offset)
        s2, t2 = ours.state2, theirs.state2
        assert torch.equal(s2.absmax, t2.absmax) and torch.equal(s2.code, t2.code)
        assert (s2.blocksize, s2.dtype) == (t2.blocksize, t2.dtype)
    else:
        assert ours.state2 is None and theirs.state2 is None


def test_defaults_are_the_fine_tune_defaults():
    """quantize_4bit() quantizes as a default fine-tune does (NF4, double quantization)."""
    from qlora_lab.finetune.config import FinetuneConfig

    config = FinetuneConfig()
    x = torch.randn(64, 64, generator=torch.Generator().manual_seed(6))
    _, state = quantize_4bit(x)
    assert (state.quant_type, state.nested) == (config.quant_type, config.double_quant)


def test_errors_name_the_argument_and_what_was_given():
    with pytest.raises(ValueError, match="unknown quant_type 'nf5'"):
        quantize_4bit(torch.randn(64), "nf5")
    with pytest.raises(ValueError, match="floating-point tensor, got torch.int64"):
        quantize_4bit(torch.arange(64))
    with pytest.raises(ValueError, match="floating-point tensor, got <class 'list'>"):
        quantize_4bit([0.5] * 64)
    with pytest.raises(ValueError, match="contains NaN or inf"):
        quantize_4bit(torch.tensor([1.0, float("nan")] * 32))
    packed, state = quantize_4bit(torch.randn(64), "nf4", 64, False)
    state.quant_type = "nf5"
    with pytest.raises(ValueError, match="unknown quant_type 'nf5'"):
        dequantize_4bit(packed, state)
    state.quant_type, state.blocksize = "nf4", 48
    with pytest.raises(ValueError, match="state.blocksize must be a positive power of two, got 48"):
        dequantize_4bit(packed, state)


def test_a_state_without_quant_type_dequantizes_with_its_own_table():
    packed, state = quantize_4bit(torch.randn(64, 64, generator=torch.Generator().manual_seed(7)), "nf4", 64, False)
    expected = dequantize_4bit(packed, state)
    state.quant_type = None  # e.g. a custom code: the table in state.code is what counts
    assert torch.equal(dequantize_4bit(packed, state), expected)


def test_nested_state_with_another_second_level_blocksize():
    from qlora_lab.quant.double_quant import dequantize_absmax, quantize_absmax

    x = torch.randn(300, 64, generator=torch.Generator().manual_seed(8))
    packed, state = quantize_4bit(x, "nf4", 64, double_quant=False)
    plain = dequantize_4bit(packed, state)
    qabsmax, offset, absmax2, code2 = quantize_absmax(state.absmax, 128)
    state.absmax, state.offset = qabsmax, offset
    state.state2 = type(state)(absmax=absmax2, code=code2, blocksize=128, dtype=torch.float32)
    restored = dequantize_absmax(qabsmax, offset, absmax2, code2, 128)
    expected = (plain.view(-1, 64) / plain.view(-1, 64).abs().amax(1, keepdim=True).clamp(min=1e-30)
                * restored[:, None]).view_as(x)
    torch.testing.assert_close(dequantize_4bit(packed, state), expected, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("n", [3, 75, 64 * 9 + 33])
@pytest.mark.parametrize("chunk", [2**24, 256])
def test_odd_sizes_and_small_chunks_equal_bitsandbytes(monkeypatch, n, chunk):
    """Chunking never changes a result: 256-value chunks (4 blocks) across a partial last block."""
    from qlora_lab.quant import nf4

    monkeypatch.setattr(nf4, "CHUNK_ELEMENTS", chunk)
    x = torch.randn(n, generator=torch.Generator().manual_seed(n))
    for dtype in (torch.float32, torch.bfloat16):
        packed, state = quantize_4bit(x.to(dtype), "nf4", 64, double_quant=True)
        bnb_packed, bnb_state = F.quantize_4bit(x.to(dtype), blocksize=64, quant_type="nf4", compress_statistics=True)
        assert torch.equal(packed, bnb_packed) and torch.equal(state.absmax, bnb_state.absmax)
        ours = dequantize_4bit(packed, state)
        assert ours.shape == x.shape and ours.dtype == dtype
        assert torch.equal(ours.reshape(-1), F.dequantize_4bit(bnb_packed, bnb_state).reshape(-1))


@pytest.mark.parametrize("n", [64 * 8, 64 * 7 + 33, 64 * 9 + 33], ids=["whole-blocks", "partial-ends-a-chunk", "partial"])
def test_zero_blocks_at_chunk_ends_equal_bitsandbytes(monkeypatch, n):
    """4-block chunks; block 3 (the end of the first chunk) and the last block all zero.

    bitsandbytes floors the absmax of the last block at 1e-38 only when that block is partial:
    a whole zero block keeps absmax 0, wherever it sits, and a partial one gets 1e-38 even when
    it ends a chunk exactly (8 blocks = two chunks of 4). Decoding must also stop at a last
    chunk made of whole blocks (512 values = two full chunks).
    """
    from qlora_lab.quant import nf4

    monkeypatch.setattr(nf4, "CHUNK_ELEMENTS", 256)
    x = torch.randn(n, generator=torch.Generator().manual_seed(n))
    x[3 * 64 : 4 * 64] = 0.0
    x[(math.ceil(n / 64) - 1) * 64 :] = 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. torch's "an output ... was resized": a chunk written off its slot
        packed, state = quantize_4bit(x, "nf4", 64, double_quant=False)
        ours = dequantize_4bit(packed, state)
    bnb_packed, bnb_state = F.quantize_4bit(x, blocksize=64, quant_type="nf4", compress_statistics=False)
    assert torch.equal(packed, bnb_packed) and torch.equal(state.absmax, bnb_state.absmax)
    assert torch.equal(ours, F.dequantize_4bit(bnb_packed, bnb_state).reshape(-1))


def test_each_value_is_coded_and_decoded_once(monkeypatch):
    """Chunks tile the tensor without overlap: the lookups see n values (plus the odd-count pad), not more."""
    from qlora_lab.quant import nf4

    monkeypatch.setattr(nf4, "CHUNK_ELEMENTS", 256)
    seen = {"coded": 0, "decoded_bytes": 0}
    real_nearest, real_decode = nf4.nearest_code, nf4.decode_4bit

    def counting_nearest(values, code):
        seen["coded"] += values.numel()
        return real_nearest(values, code)

    def counting_decode(packed, code, out=None):
        seen["decoded_bytes"] += packed.numel()
        return real_decode(packed, code, out)

    monkeypatch.setattr(nf4, "nearest_code", counting_nearest)
    monkeypatch.setattr(nf4, "decode_4bit", counting_decode)
    n = 64 * 9 + 33  # 10 blocks: chunks of 4, 4 and 2 blocks; odd, so one padding lookup
    packed, state = quantize_4bit(torch.randn(n, generator=torch.Generator().manual_seed(1)), "nf4", 64, False)
    assert seen["coded"] == 10 * 64 + 1  # every block once (the last one zero-padded), plus the pad of the odd count
    dequantize_4bit(packed, state)
    assert seen["decoded_bytes"] == math.ceil(n / 2) == packed.numel()


def test_unknown_quant_type_is_named_in_the_error():
    with pytest.raises(ValueError, match=r"^unknown quant_type 'nf5': expected one of "):
        quantize_4bit(torch.ones(64), "nf5")


def test_codebook_names_an_unknown_quant_type():
    with pytest.raises(ValueError, match=r"^unknown quant_type 'nf5': expected one of \('nf4', 'fp4', 'int4'\)$"):
        codebook("nf5")
