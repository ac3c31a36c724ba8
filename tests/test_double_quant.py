"""Tests for qlora_lab.quant.double_quant: the dynamic code, 8-bit constants, memory accounting."""

import pytest
import torch

from qlora_lab.backends import import_bnb
from qlora_lab.quant.double_quant import (
    DQ_BLOCKSIZE,
    bits_per_param,
    dequantize_absmax,
    dequantize_blockwise_8bit,
    dynamic_map,
    model_weight_bytes,
    quant_state_breakdown,
    quant_state_nbytes,
    quantize_absmax,
    quantize_blockwise_8bit,
)
from qlora_lab.quant.nf4 import quantize_4bit

F = import_bnb().functional


pytestmark = pytest.mark.usefixtures("single_thread")


def test_dynamic_map_equals_bitsandbytes():
    code = dynamic_map()
    assert code.shape == (256,) and code.dtype == torch.float32
    assert torch.equal(code, F.create_dynamic_map(signed=True))
    assert code[-1] == 1.0 and (code == 0).sum() == 1 and torch.all(code[1:] > code[:-1])


@pytest.mark.parametrize("kwargs", [{}, {"signed": False}, {"max_exponent_bits": 4}, {"max_exponent_bits": 4, "total_bits": 6}],
                         ids=["defaults", "unsigned", "4-exponent-bits", "6-bit"])
def test_build_dynamic_map_equals_bitsandbytes_for_every_setting(kwargs):
    """Uncached and with each argument: its defaults and branches, not only the cached default."""
    from qlora_lab.quant.double_quant import build_dynamic_map

    assert torch.equal(build_dynamic_map(**kwargs), F.create_dynamic_map(**kwargs))


def test_build_dynamic_map_is_float32_whatever_the_default_dtype():
    """bitsandbytes computes the table in float32; so must we, even under a float64 default."""
    from qlora_lab.quant.double_quant import build_dynamic_map

    settings = [{}, {"max_exponent_bits": 4}, {"max_exponent_bits": 4, "total_bits": 6}]
    expected = [F.create_dynamic_map(**kwargs) for kwargs in settings]  # under the float32 default
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        tables = [build_dynamic_map(**kwargs) for kwargs in settings]
    finally:
        torch.set_default_dtype(previous)
    for table, reference in zip(tables, expected):
        assert table.dtype == torch.float32 and torch.equal(table, reference)


def test_dynamic_map_is_fine_near_zero_and_coarse_near_one():
    gaps = dynamic_map().diff()
    assert gaps[120:135].max() < 1e-4 < gaps[-5:].min()


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("n", [256 * 4, 256 * 3 + 77, 100])
def test_8bit_blockwise_equals_bitsandbytes_cpu_kernel(seed, n):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, generator=generator) * torch.logspace(-3, 0, n)  # many magnitudes
    if n > 256:
        x[256:512] = 0.0  # an all-zero block
    codes, absmax = quantize_blockwise_8bit(x, dynamic_map(), 256)
    bnb_codes, bnb_state = F.quantize_blockwise(x, blocksize=256)
    assert torch.equal(codes, bnb_codes)
    assert torch.equal(absmax, bnb_state.absmax)
    values = dequantize_blockwise_8bit(codes, absmax, dynamic_map(), 256)
    assert torch.equal(values, F.dequantize_blockwise(bnb_codes, bnb_state))
    assert not torch.isnan(values).any()


def test_8bit_blockwise_block_of_subnormals_equals_bitsandbytes():
    """absmax below 2**-126: 1/absmax overflows to inf, so only the clamp to [-1, 1] keeps the
    codes at the ends of the table (255 for +, 0 for -), as bitsandbytes' kernel does."""
    x = torch.randn(512, generator=torch.Generator().manual_seed(0))
    x[:256] = torch.tensor([1e-39, -1e-39, 5e-40, -2e-39] * 64)  # float32 subnormals
    codes, absmax = quantize_blockwise_8bit(x, dynamic_map(), 256)
    bnb_codes, bnb_state = F.quantize_blockwise(x, blocksize=256)
    assert torch.equal(codes, bnb_codes) and torch.equal(absmax, bnb_state.absmax)
    assert codes[:4].tolist() == [255, 0, 255, 0]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_absmax_constants_round_trip_like_bitsandbytes(seed):
    x = torch.randn(300, 64, generator=torch.Generator().manual_seed(seed))
    absmax = x.abs().amax(dim=1)  # (300,) first-level constants
    qabsmax, offset, absmax2, code = quantize_absmax(absmax)
    assert qabsmax.dtype == torch.uint8 and absmax2.shape == (2,)  # ceil(300 / 256)
    assert offset == absmax.mean()
    _, state = F.quantize_4bit(x, blocksize=64, quant_type="nf4", compress_statistics=True)
    assert torch.equal(qabsmax, state.absmax) and torch.equal(absmax2, state.state2.absmax)
    restored = dequantize_absmax(qabsmax, offset, absmax2, code)
    expected = F.dequantize_blockwise(state.absmax, state.state2) + state.offset
    assert torch.equal(restored, expected)
    # 8-bit dynamic code on centred constants: well under 1 % relative error
    assert ((restored - absmax).abs() / absmax).max() < 1e-2


@pytest.mark.parametrize("dq_blocksize", [128, 512])
def test_absmax_constants_at_another_second_level_blocksize_like_bitsandbytes(dq_blocksize):
    absmax = torch.rand(1000, generator=torch.Generator().manual_seed(dq_blocksize)) + 0.5  # (1000,) > 0
    qabsmax, offset, absmax2, code = quantize_absmax(absmax, dq_blocksize)
    bnb_q, bnb_state2 = F.quantize_blockwise(absmax - absmax.mean(), blocksize=dq_blocksize)
    assert absmax2.shape == (-(-1000 // dq_blocksize),)
    assert torch.equal(qabsmax, bnb_q) and torch.equal(absmax2, bnb_state2.absmax)
    restored = dequantize_absmax(qabsmax, offset, absmax2, code, dq_blocksize)
    assert torch.equal(restored, F.dequantize_blockwise(bnb_q, bnb_state2) + absmax.mean())


def test_bits_per_param_values_from_the_paper():
    assert bits_per_param(64, double_quant=False) == 4.5
    assert round(bits_per_param(64, double_quant=True), 3) == 4.127
    assert bits_per_param(64, True, 256) == 4 + 8 / 64 + 32 / (64 * 256)
    saving = bits_per_param(64, False) - bits_per_param(64, True)
    assert saving == pytest.approx(0.373, abs=1e-3)  # QLoRA §3
    assert model_weight_bytes(65e9, saving) / 1e9 == pytest.approx(3.03, abs=0.01)  # "≈ 3 GB"
    with pytest.raises(ValueError, match="blocksize"):
        bits_per_param(0)
    with pytest.raises(ValueError, match="dq_blocksize"):
        bits_per_param(64, True, 0)
    assert bits_per_param(64, True, 1) == 4 + 8 / 64 + 32 / 64  # one constant per second-level block
    assert bits_per_param(1, double_quant=False) == 4 + 32  # a float32 absmax for every weight


@pytest.mark.parametrize("double_quant", [False, True])
def test_bits_per_param_matches_a_real_bitsandbytes_quant_state(double_quant):
    w = torch.randn(4096, 4096, generator=torch.Generator().manual_seed(0))
    packed, state = F.quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=double_quant)
    parts = quant_state_breakdown(packed, state)
    n = w.numel()
    assert parts["packed"] == n // 2  # two codes per byte
    assert parts["absmax"] == n // 64 * (1 if double_quant else 4)
    tables = parts["code"] + parts.get("nested_code", 0) + parts.get("offset", 0)
    assert tables == (64 + 1024 + 4 if double_quant else 64)  # fixed-size extras
    measured = (quant_state_nbytes(packed, state) - tables) * 8 / n
    assert measured == bits_per_param(64, double_quant=double_quant)  # exact
    total_bits = quant_state_nbytes(packed, state) * 8 / n
    assert total_bits == pytest.approx(bits_per_param(64, double_quant), abs=1e-3)


def test_breakdown_counts_what_each_item_really_holds():
    """A hand-built state: an offset stored as float64 (8 bytes) or as a Python float (4, as
    bitsandbytes saves it), and a missing table (0 bytes)."""
    from types import SimpleNamespace

    state2 = SimpleNamespace(absmax=torch.zeros(3), code=torch.zeros(256))
    state = SimpleNamespace(absmax=torch.zeros(700, dtype=torch.uint8), code=None, nested=True, state2=state2,
                            offset=torch.tensor(0.5, dtype=torch.float64))
    packed = torch.zeros(100, dtype=torch.uint8)
    expected = {"packed": 100, "absmax": 700, "code": 0, "nested_absmax": 12, "nested_code": 1024, "offset": 8}
    assert quant_state_breakdown(packed, state) == expected
    state.offset = 0.5
    assert quant_state_breakdown(packed, state) == {**expected, "offset": 4}
    assert quant_state_nbytes(packed, state) == 100 + 700 + 12 + 1024 + 4


@pytest.mark.parametrize("double_quant", [False, True])
def test_our_state_holds_the_same_bytes_as_bitsandbytes(double_quant):
    w = torch.randn(256, 512, generator=torch.Generator().manual_seed(1))
    ours = quant_state_breakdown(*quantize_4bit(w, "nf4", 64, double_quant))
    bnb_packed, bnb_state = F.quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=double_quant)
    theirs = quant_state_breakdown(bnb_packed, bnb_state)
    assert ours == theirs


def test_model_weight_bytes_table():
    # LLaMA-65B in 16 bits vs NF4 + DQ, weights only
    assert model_weight_bytes(65e9, 16) == 130e9
    assert model_weight_bytes(65e9, bits_per_param()) / 1e9 == pytest.approx(33.53, abs=0.01)
    assert model_weight_bytes(7e9, 4.5) == 3_937_500_000
    assert model_weight_bytes(0, 4) == 0
    with pytest.raises(ValueError, match="bits_per_param"):
        model_weight_bytes(7e9, 0)


def test_second_level_blocksize_is_the_one_bitsandbytes_uses():
    w = torch.randn(64, 64 * 300, generator=torch.Generator().manual_seed(2))  # 19200 blocks of 64
    _, state = F.quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=True)
    assert state.state2.blocksize == DQ_BLOCKSIZE
    _, _, absmax2, _ = quantize_absmax(w.abs().view(-1, 64).amax(dim=1))  # 19200 constants
    assert absmax2.shape == state.state2.absmax.shape == (-(-19200 // DQ_BLOCKSIZE),)


# --- bits_per_param against the bytes of real bitsandbytes states, every blocksize ------------

N_WEIGHTS = 512 * 512  # a multiple of 32 · 128 and 256 · 256: every block is full


def measured_bits(blocksize: int, dq_blocksize: int | None) -> float:
    """Bits per weight that bitsandbytes really stores: codes + absmax (+ state2.absmax).

    The nested level is bitsandbytes' own `quantize_blockwise` of the centred constants, as
    `quantize_4bit(compress_statistics=True)` does it (which fixes dq_blocksize at 256).
    Fixed-size tables (the 16- and 256-value codes, the offset) are left out, as in the formula.
    """
    w = torch.randn(512, 512, generator=torch.Generator().manual_seed(blocksize))
    packed, state = F.quantize_4bit(w, blocksize=blocksize, quant_type="nf4", compress_statistics=False)
    nbytes = packed.numel() * packed.element_size()
    if dq_blocksize is None:
        nbytes += state.absmax.numel() * state.absmax.element_size()  # float32
    else:
        qabsmax, state2 = F.quantize_blockwise(state.absmax - state.absmax.mean(), blocksize=dq_blocksize)
        assert qabsmax.dtype == torch.uint8 and state2.absmax.dtype == torch.float32
        nbytes += qabsmax.numel() + state2.absmax.numel() * 4
    return nbytes * 8 / N_WEIGHTS


def check_bits_per_param_matches_bitsandbytes(bits_fn) -> None:
    """Shared with tests/test_planted_mutants.py: `bits_fn` is a bits_per_param."""
    for blocksize in (32, 64, 128, 256):
        assert bits_fn(blocksize, double_quant=False) == measured_bits(blocksize, None), blocksize
        for dq_blocksize in (128, 256):
            expected = measured_bits(blocksize, dq_blocksize)
            assert bits_fn(blocksize, True, dq_blocksize) == pytest.approx(expected, rel=1e-12), (blocksize, dq_blocksize)


def test_bits_per_param_matches_bitsandbytes_at_every_blocksize():
    check_bits_per_param_matches_bitsandbytes(bits_per_param)


@pytest.mark.parametrize("blocksize", [32, 64, 128, 256])
def test_bits_per_param_matches_quantize_4bit_with_compressed_statistics(blocksize):
    w = torch.randn(512, 512, generator=torch.Generator().manual_seed(blocksize))
    packed, state = F.quantize_4bit(w, blocksize=blocksize, quant_type="nf4", compress_statistics=True)
    parts = quant_state_breakdown(packed, state)
    tables = parts["code"] + parts["nested_code"] + parts["offset"]
    measured = (quant_state_nbytes(packed, state) - tables) * 8 / w.numel()
    assert measured == pytest.approx(bits_per_param(blocksize, True, state.state2.blocksize), rel=1e-12)
