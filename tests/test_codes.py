"""4-bit codes (qlora_lab.quant.codes) against plain references: indexing, argmin, bit arithmetic.

tests/test_nf4.py checks the codes inside quantize_4bit against bitsandbytes; here each piece
is checked on its own, including the paths quantize_4bit never takes (decode without `out`,
levels too close for the grid, unsorted tables).
"""

import pytest
import torch

from qlora_lab.quant import codes as codes_module
from qlora_lab.quant.codes import (GRID_CELLS, decode_4bit, nearest_code, nearest_code_bucketize, pack_4bit,
                                   unpack_4bit)
from qlora_lab.quant.nf4 import codebook


def argmin_code(values: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
    """The nearest level by brute force: |value - level| over all 16 levels, first minimum."""
    return (values.reshape(-1, 1) - code.reshape(1, -1)).abs().argmin(dim=1).to(torch.uint8)


def random_values(n: int, seed: int) -> torch.Tensor:
    return torch.rand(n, generator=torch.Generator().manual_seed(seed)) * 2 - 1  # uniform in [-1, 1)


@pytest.mark.parametrize("n_bytes", [1, 2, 7, 64])
@pytest.mark.parametrize("table", ["nf4", "random"])
def test_decode_without_out_is_a_lookup_of_both_nibbles(n_bytes, table):
    code = codebook("nf4") if table == "nf4" else torch.randn(16, generator=torch.Generator().manual_seed(1))
    packed = torch.randint(0, 256, (n_bytes, 1), dtype=torch.uint8, generator=torch.Generator().manual_seed(n_bytes))
    high, low = packed.view(-1).long() // 16, packed.view(-1).long() % 16  # first code in the high nibble
    expected = code[torch.stack([high, low], dim=1).reshape(-1)]
    decoded = decode_4bit(packed, code)
    assert decoded.dtype == torch.float32 and decoded.numel() == 4 * ((n_bytes + 1) // 2)
    assert torch.equal(decoded[: 2 * n_bytes], expected)
    out = torch.full((decoded.numel(),), float("nan"))
    assert decode_4bit(packed, code, out=out) is out and torch.equal(out[: 2 * n_bytes], expected)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int32, torch.int64])
def test_pack_makes_bytes_whatever_the_integer_type(dtype):
    values = [3, 12, 15, 0, 9]
    packed = pack_4bit(torch.tensor(values, dtype=dtype))
    assert packed.dtype == torch.uint8 and packed.shape == (3, 1)
    assert packed.view(-1).tolist() == [3 * 16 + 12, 15 * 16 + 0, 9 * 16 + 0]  # odd count: a 0 pad
    assert unpack_4bit(packed)[:5].tolist() == values


@pytest.fixture
def no_binary_search(monkeypatch):
    """nearest_code must answer from its grid: calling the binary search fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError("nearest_code fell back to the binary search")

    monkeypatch.setattr(codes_module, "nearest_code_bucketize", refuse)


@pytest.mark.parametrize("quant_type", ["nf4", "fp4", "int4"])
def test_course_tables_take_the_grid_path_and_equal_argmin(no_binary_search, quant_type):
    """Levels at least 2/4096 apart: the grid lookup answers, the binary search is never called."""
    code = codebook(quant_type)
    values = random_values(20_000, seed=3)
    expected = argmin_code(values, code)
    found = nearest_code(values, code)
    # FP4 stores +0 and -0: the same level, either index is nearest; compare the levels
    assert found.dtype == torch.uint8
    assert torch.equal(code[found.long()], code[expected.long()])


def test_levels_two_and_a_half_cells_apart_still_take_the_grid_path(no_binary_search):
    """The docstring's bound: midpoints 2.5/4096 apart fall in distinct cells of width 2/4096."""
    code = -1 + torch.arange(16, dtype=torch.float32) * (2.5 / GRID_CELLS)
    values = -1 + torch.rand(5000, generator=torch.Generator().manual_seed(4)) * (16 * 2.5 / GRID_CELLS)
    assert torch.equal(nearest_code(values, code), argmin_code(values, code))


def test_levels_closer_than_the_grid_fall_back_to_the_binary_search(monkeypatch):
    code = codebook("nf4").clone()
    code[9], code[10] = 1e-4, 2e-4  # 0, 0.0001, 0.0002: two midpoints in one grid cell of width 2/4096
    values = torch.cat([random_values(20_000, seed=5), 3e-4 * random_values(2000, seed=8)])
    calls = []

    def spy(scaled, table):
        calls.append(scaled.numel())
        return nearest_code_bucketize(scaled, table)

    monkeypatch.setattr(codes_module, "nearest_code_bucketize", spy)
    assert torch.equal(nearest_code(values, code), argmin_code(values, code))
    assert calls == [values.numel()]  # the binary search answered, once, for every value


def test_a_descending_table_maps_sorted_positions_back_to_stored_codes():
    code = codebook("nf4").flip(0)  # stored 1.0 first: no level keeps its sorted position
    values = random_values(20_000, seed=6)
    expected = argmin_code(values, code)
    assert torch.equal(nearest_code(values, code), expected)
    assert torch.equal(nearest_code_bucketize(values, code), expected)


def test_bucketize_returns_bytes_and_a_repeated_level_keeps_its_first_index():
    """A 32-entry table with every level stored twice: a value on a level gets the first index,
    as argmin does (a stable sort; torch's unstable CPU sort reorders ties from 17 entries)."""
    levels = torch.linspace(-1, 1, 16)
    shuffled = torch.randperm(32, generator=torch.Generator().manual_seed(7))
    code = torch.cat([levels, levels])[shuffled]
    found = nearest_code_bucketize(levels, code)
    assert found.dtype == torch.uint8
    assert torch.equal(found.long(), (levels.reshape(-1, 1) - code.reshape(1, -1)).abs().argmin(dim=1))
