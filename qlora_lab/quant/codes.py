"""4-bit codes: the nearest of 16 levels, two codes per byte, and fast decoding.

The machinery under :mod:`qlora_lab.quant.nf4` (and any 16-level code, FP4 and INT4
too): the readable reference `nearest_code_bucketize` is what bitsandbytes' CPU kernel
does; `nearest_code` gives the same indices, faster; `decode_4bit` turns packed bytes
back into levels four at a time.
"""

from __future__ import annotations

import math
import sys
from functools import lru_cache

import torch


def pack_4bit(codes: torch.Tensor) -> torch.Tensor:
    """Pack 4-bit codes two per byte, first code in the high nibble (bitsandbytes' order).

    An odd count gets one padding code 0. Returns uint8 of shape ``(ceil(n/2), 1)``, the
    shape bitsandbytes returns.
    """
    codes = codes.reshape(-1).to(torch.uint8)
    if codes.numel() % 2:
        codes = torch.nn.functional.pad(codes, (0, 1))
    pairs = codes.view(-1, 2)  # (n_bytes, 2): (element 2i, element 2i+1)
    return ((pairs[:, 0] << 4) | pairs[:, 1]).unsqueeze(1)


def unpack_4bit(packed: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`pack_4bit`: uint8 codes, ``2 * packed.numel()`` of them."""
    flat = packed.reshape(-1)
    return torch.stack([flat >> 4, flat & 0x0F], dim=1).reshape(-1)


@lru_cache(maxsize=8)
def _byte_pair_table(code_bytes: bytes) -> torch.Tensor:
    """Decoding table: a 16-bit word (2 packed bytes) -> its 4 float32 values. (65536, 4).

    Decoding with one gather per 2 bytes instead of one per nibble is what makes
    :func:`qlora_lab.quant.nf4.dequantize_4bit` fast; the table is 1 MiB and stays in cache. Keyed by the
    code's bytes so that it is built once per codebook.
    """
    code = torch.frombuffer(bytearray(code_bytes), dtype=torch.float32)
    byte = torch.arange(256)
    per_byte = torch.stack([code[byte >> 4], code[byte & 0x0F]], dim=1)  # (256, 2)
    word = torch.arange(65536)
    first, second = (word & 0xFF, word >> 8) if sys.byteorder == "little" else (word >> 8, word & 0xFF)
    return torch.cat([per_byte[first], per_byte[second]], dim=1)  # (65536, 4)


def decode_4bit(packed: torch.Tensor, code: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """``code[unpack_4bit(packed)]`` as float32, computed 4 values per lookup.

    ``out``, if given, is a float32 tensor of ``4 * ceil(n_bytes / 2)`` values to fill.
    """
    flat = packed.reshape(-1).view(torch.uint8)
    if flat.numel() % 2:
        flat = torch.nn.functional.pad(flat, (0, 1))
    words = flat.view(torch.uint16).to(torch.int32)  # (n_bytes / 2,) in 0..65535
    table = _byte_pair_table(code.detach().float().cpu().contiguous().numpy().tobytes())  # (65536, 4)
    table = table.to(flat.device)
    # Each row (4 float32 = 16 bytes) is gathered as one complex128 element: a 1-D
    # index_select moves whole 16-byte items, faster than copying 4-float rows.
    table = table.view(torch.complex128).view(-1)
    if out is None:
        return table.index_select(0, words).view(torch.float32)
    torch.index_select(table, 0, words, out=out.view(torch.complex128))
    return out


GRID_CELLS = 4096  # uniform cells over [-1, 1] for the fast nearest-code lookup


def nearest_code_bucketize(scaled: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
    """Index of the nearest table entry, via the 15 midpoints between sorted levels.

    ``torch.bucketize`` does a binary search among the midpoints (4 comparisons instead of
    16 distances); a value exactly on a midpoint goes to the lower level. This is what
    bitsandbytes' CPU ``quantize_4bit`` does, so the codes are identical. Values a hair
    outside [-1, 1] (rounding of x / absmax) land in the outer bins: no clamp needed.
    The readable reference for :func:`nearest_code`.
    """
    sorted_code, order = torch.sort(code, stable=True)  # FP4 is stored unsorted
    midpoints = (sorted_code[:-1] + sorted_code[1:]) / 2  # (15,)
    position = torch.bucketize(scaled, midpoints, out_int32=True)
    return order.to(torch.int32)[position].to(torch.uint8)  # sorted position -> stored code


def _grid_cell(values: torch.Tensor) -> torch.Tensor:
    """Cell of each value on a uniform grid of GRID_CELLS over [-1, 1] (monotone in value)."""
    return ((values + 1.0) * (GRID_CELLS / 2)).to(torch.int32).clamp_(0, GRID_CELLS - 1)


@lru_cache(maxsize=8)
def _grid_tables(code_bytes: bytes) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """Per grid cell: sorted positions below it, the one midpoint inside it, the order."""
    code = torch.frombuffer(bytearray(code_bytes), dtype=torch.float32)
    sorted_code, order = torch.sort(code, stable=True)
    midpoints = (sorted_code[:-1] + sorted_code[1:]) / 2  # (15,)
    cells = _grid_cell(midpoints)
    if not bool((cells[1:] > cells[:-1]).all()):
        return None  # two midpoints share a cell (levels closer than 2/4096): use bucketize
    below = torch.searchsorted(cells, torch.arange(GRID_CELLS, dtype=torch.int32)).to(torch.uint8)
    threshold = torch.full((GRID_CELLS,), math.inf)
    threshold[cells.long()] = midpoints
    return below, threshold, order.to(torch.uint8)


def nearest_code(scaled: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
    """Same result as :func:`nearest_code_bucketize`, several times faster.

    A binary search branches on every element. Instead, cut [-1, 1] into 4096 equal cells:
    with levels at least 2/4096 apart, a cell holds at most one midpoint, so the position is
    ``(midpoints below the cell) + (value > the cell's midpoint)``: two table lookups and
    one comparison, branch-free. Cells are computed with the same float operations for the
    midpoints and the values, and cell order follows value order, so ties and values on a
    cell edge get exactly bucketize's answer (tests check it).
    """
    tables = _grid_tables(code.detach().float().cpu().contiguous().numpy().tobytes())
    if tables is None:
        return nearest_code_bucketize(scaled, code.to(scaled.device))
    below, threshold, order = (t.to(scaled.device) for t in tables)
    cell = _grid_cell(scaled)
    position = below.index_select(0, cell)  # uint8
    position += scaled > threshold.index_select(0, cell)
    if bool((order.cpu() != torch.arange(16, dtype=torch.uint8)).any()):
        position = order.index_select(0, position.to(torch.int32))  # sorted -> stored code
    return position
