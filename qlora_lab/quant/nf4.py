"""4-bit codebooks (NF4, FP4, INT4) and blockwise 4-bit quantization, as bitsandbytes does it.

A 4-bit code is an index into a table of 16 values in [-1, 1]. Quantizing a block of
``blocksize`` weights (64 in QLoRA) means: divide by the block's absmax, replace each value
by the index of the nearest table entry, and store two indices per byte. The table is the
whole difference between the formats:

* **NF4** (NormalFloat, QLoRA paper §3): quantiles of N(0, 1), so that normally distributed
  weights use the 16 codes about equally often (each bin holds about the same probability
  mass), which wastes no code on rare values. Asymmetric: 7 negative levels, an exact 0,
  8 positive levels.
* **FP4** (E2M1 in bitsandbytes' encoding): a tiny float, sign + 2 exponent bits + 1
  mantissa bit; levels are dense near 0 and sparse near ±1 (log-like).
* **INT4**: 15 evenly spaced levels, the absmax scheme of :mod:`qlora_lab.quant.absmax` at 4 bits.

``quantize_4bit`` / ``dequantize_4bit`` reproduce ``bitsandbytes.functional.quantize_4bit``
/ ``dequantize_4bit`` exactly for "nf4" and "fp4" (same packed bytes, same constants,
same output): see tests/test_nf4.py.

What bitsandbytes 0.50.2 does on CPU, checked by the tests and copied where it matters:

* nearest code: binary search (``torch.bucketize``) on the midpoints between sorted levels,
  a value exactly on a midpoint going to the lower level; FP4's table is unsorted;
* full blocks are multiplied by ``1 / absmax``, but the last partial block is *divided* by
  its absmax, and that absmax is stored floored at 1e-38 (so an all-zero tail is not 0/0);
* an odd element count is padded with the code of 0.0; the first element of each pair goes
  in the high nibble; ``packed`` has shape ``(ceil(n/2), 1)``;
* double quantization uses a C++ kernel that rounds through a 65,536-entry lookup table
  (see :mod:`qlora_lab.quant.double_quant`);
* ``dequantize_4bit`` returns shape ``(1, n)`` for a 1-D input, and its C++ kernel gives
  wrong values for a multi-row tensor whose last dimension is not a multiple of the
  blocksize (e.g. (8, 48) with blocksize 64); its PyTorch fallback, which we match, is right.

Usage::

    from qlora_lab.quant.nf4 import quantize_4bit, dequantize_4bit
    packed, state = quantize_4bit(w, quant_type="nf4", blocksize=64, double_quant=True)
    w_hat = dequantize_4bit(packed, state)   # same shape and dtype as w
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import torch

from qlora_lab.quant.absmax import check_blocksize, check_choice
from qlora_lab.quant.codes import decode_4bit, nearest_code, pack_4bit
from qlora_lab.quant.double_quant import DQ_BLOCKSIZE, dequantize_absmax, quantize_absmax

QUANT_TYPES = ("nf4", "fp4", "int4")

# NF4's outermost quantile (bitsandbytes create_normal_map(offset=0.9677083)).
# With k equal-probability bins of N(0, 1) the outermost level would sit at probability 1,
# i.e. at +inf: one cannot take the quantile of 1. Instead the extreme level is put at the
# centre of the last bin, probability 1 - 1/(2k). NF4 splits the positive side into 16 bins
# (8 levels kept) and the negative side into 15 (7 kept); the offset is the mean of the two
# centres, (1 - 1/(2*15) + 1 - 1/(2*16)) / 2 = 0.9677083, i.e. ppf = 1.848 standard
# deviations, which becomes ±1 after normalising by the largest level.
NF4_OFFSET = (1 - 1 / (2 * 15) + 1 - 1 / (2 * 16)) / 2  # 0.96770833...
BNB_NF4_OFFSET = 0.9677083  # the literal bitsandbytes uses (rounded to 7 decimals)


@dataclass
class QuantState:
    """What is needed to undo a 4-bit quantization (bitsandbytes' ``QuantState`` fields).

    ``absmax``: float32 ``(n_blocks,)``, or uint8 codes when double-quantized (then
    ``offset`` holds the subtracted mean and ``state2`` the second-level state: float32
    absmax per 256 constants, the 256-value dynamic ``code``, ``blocksize=256``).
    ``code``: the 16-value table indexed by the stored nibbles.
    """

    absmax: torch.Tensor
    shape: torch.Size | None = None
    code: torch.Tensor | None = None
    blocksize: int = 64
    quant_type: str | None = None
    dtype: torch.dtype = torch.float32
    offset: torch.Tensor | None = None
    state2: QuantState | None = None

    @property
    def nested(self) -> bool:
        """True when the constants are double-quantized (bitsandbytes' name)."""
        return self.state2 is not None


# ----------------------------------------------------------------------------- codebooks


def normal_map(offset: float = BNB_NF4_OFFSET, use_extra_value: bool = True) -> torch.Tensor:
    """Derive the NF4 levels from normal quantiles, as ``create_normal_map`` does.

    8 positive levels: ``norm.ppf`` of 9 probabilities evenly spaced from ``offset`` down
    to 0.5 (the last one, ppf(0.5) = 0, dropped); 7 negative levels likewise from 8
    probabilities; plus an exact 0 (so that zero padding and exact zeros stay exact).
    Normalised by the largest level, so the values span [-1, 1]. Uses float32
    ``torch.linspace`` like bitsandbytes, so the result is bit-identical.

    Returns:
        float32 values, ascending: 16 by default (15 with ``use_extra_value=False``,
        a symmetric variant NF4 does not use).
    """
    from scipy.stats import norm  # lazy: scipy.stats takes a moment to import

    n_positive = 9 if use_extra_value else 8
    positive = norm.ppf(torch.linspace(offset, 0.5, n_positive)[:-1].numpy()).tolist()
    negative = (-norm.ppf(torch.linspace(offset, 0.5, 8)[:-1].numpy())).tolist()
    values = torch.tensor(sorted(positive + [0.0] + negative), dtype=torch.float32)
    return values / values.max()


@lru_cache(maxsize=1)
def _nf4_cached() -> torch.Tensor:
    return normal_map()


def nf4_levels() -> torch.Tensor:
    """The 16 NF4 values (float32, ascending), derived from N(0, 1) quantiles."""
    return _nf4_cached().clone()


def fp4_levels() -> torch.Tensor:
    """bitsandbytes' 16 FP4 values, indexed by their 4-bit pattern (not sorted).

    Bit 3 is the sign; bits 2-1 the exponent field e; bit 0 the mantissa m. bitsandbytes'
    E2M1 encoding: ``(1 + m/2) * 2^(4 - e)`` for e > 0 (e = 1, 2, 3 give 8, 4, 2, times
    1 or 1.5) and ``m * 2^-4`` for the subnormal e = 0; then divided by the largest value,
    12. Sort the result for plots: ``fp4_levels().sort().values``.
    """
    raw = []
    for pattern in range(16):
        sign = -1.0 if pattern & 0b1000 else 1.0
        exponent, mantissa = (pattern >> 1) & 0b11, pattern & 0b1
        magnitude = (1 + mantissa / 2) * 2.0 ** (4 - exponent) if exponent else mantissa * 2.0**-4
        raw.append(sign * magnitude)
    table = torch.tensor(raw, dtype=torch.float32)
    return table / table.abs().max()


def e2m1_levels() -> torch.Tensor:
    """The standard FP4 E2M1 values (OCP Microscaling spec v1.0), by bit pattern, in [-1, 1].

    Exponent bias 1: ``(1 + m/2) * 2^(e - 1)`` for e > 0 and the subnormal ``m/2`` for
    e = 0, so the magnitudes are 0, 0.5, 1, 1.5, 2, 3, 4, 6 (divided by 6 here). Shown
    beside :func:`fp4_levels` because bitsandbytes maps the exponent differently: its
    subnormal is 0.0625/12 ≈ 0.0052, 32 times below its next level, where E2M1's
    subnormal is half its smallest normal.
    """
    raw = []
    for pattern in range(16):
        sign = -1.0 if pattern & 0b1000 else 1.0
        exponent, mantissa = (pattern >> 1) & 0b11, pattern & 0b1
        magnitude = (1 + mantissa / 2) * 2.0 ** (exponent - 1) if exponent else mantissa / 2
        raw.append(sign * magnitude)
    table = torch.tensor(raw, dtype=torch.float32)
    return table / table.abs().max()


def int4_levels() -> torch.Tensor:
    """Uniform INT4 levels: k/7 for k = -7..7, ascending, 0 listed twice (16 entries).

    Symmetric like absmax quantization at 4 bits (15 distinct levels); the 16th code is a
    second zero, as in the list of bitsandbytes' ``get_4bit_type("int4")`` (7..0, -0..-7;
    that call itself fails in bitsandbytes 0.50.2: it divides an integer tensor in place).
    """
    steps = torch.tensor([-7, -6, -5, -4, -3, -2, -1, 0, 0, 1, 2, 3, 4, 5, 6, 7], dtype=torch.float32)
    return steps / 7


def codebook(quant_type: str) -> torch.Tensor:
    """The 16-value table indexed by the stored 4-bit code, for "nf4", "fp4" or "int4"."""
    check_choice(quant_type, QUANT_TYPES, "quant_type")
    return {"nf4": nf4_levels, "fp4": fp4_levels, "int4": int4_levels}[quant_type]()


# Values processed per step, to bound the temporaries (64 MiB of float32) on big tensors.
# Smaller chunks are faster single-threaded (they stay in cache) but multiply the thread
# synchronisations, which costs dearly when other processes share the cores: measured here.
CHUNK_ELEMENTS = 2**24


def _blocks(x: torch.Tensor, blocksize: int) -> torch.Tensor:
    """Flattened float32 copy/view of ``x`` as ``(n_blocks, blocksize)``, zero-padded."""
    flat = x.reshape(-1).float()
    n_blocks = math.ceil(flat.numel() / blocksize)
    pad = n_blocks * blocksize - flat.numel()
    if pad:
        flat = torch.nn.functional.pad(flat, (0, pad))
    return flat.view(n_blocks, blocksize)


def _chunk_rows(blocksize: int) -> int:
    """Blocks per chunk: about CHUNK_ELEMENTS values, a multiple of 4 blocks."""
    return max(4, CHUNK_ELEMENTS // blocksize)


def _blockwise_codes(blocks: torch.Tensor, code: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(absmax per block, code index per value) of ``blocks`` ``(n_blocks, blocksize)``, chunk by chunk.

    ``n`` is the number of real values (the last block may be zero-padded); the codes
    tensor has one spare slot for the padding code of an odd count.
    """
    n_blocks, blocksize = blocks.shape
    absmax = torch.empty(n_blocks, device=blocks.device)  # (n_blocks,)
    codes = torch.empty(n_blocks * blocksize + 1, dtype=torch.uint8, device=blocks.device)  # +1: odd-count pad
    rows = _chunk_rows(blocksize)
    for first in range(0, n_blocks, rows):
        chunk = blocks[first : first + rows]  # (rows, blocksize)
        chunk_absmax = absmax[first : first + rows]
        torch.amax(chunk.abs(), dim=1, out=chunk_absmax)
        # Normalise to [-1, 1]: bitsandbytes multiplies by the reciprocal of absmax,
        # floored at 1e-38 so that an all-zero block gives 0, never 0/0 = NaN.
        scaled = chunk * (1.0 / chunk_absmax.clamp(min=1e-38)).unsqueeze(1)
        if n % blocksize and first + rows >= n_blocks:
            # bitsandbytes *divides* the last partial block and stores its absmax floored
            # at 1e-38; both change the last bit of rounding, so we copy them.
            chunk_absmax[-1] = chunk_absmax[-1].clamp(min=1e-38)
            scaled[-1] = chunk[-1] / chunk_absmax[-1]
        codes[first * blocksize : (first + chunk.shape[0]) * blocksize] = nearest_code(scaled.view(-1), code)
    return absmax, codes


def quantize_4bit(
    x: torch.Tensor, quant_type: str = "nf4", blocksize: int = 64, double_quant: bool = True
) -> tuple[torch.Tensor, QuantState]:
    """Blockwise 4-bit quantization with one absmax per block (QLoRA paper §3).

    Equals ``bitsandbytes.functional.quantize_4bit(x, blocksize=blocksize,
    quant_type=quant_type, compress_statistics=double_quant)`` for "nf4" and "fp4".
    Steps, per block of ``blocksize`` values: absmax, divide by it, nearest level's index,
    two indices per byte. Tensors over 16M values are processed in chunks to bound the
    temporaries (the result does not depend on it).

    Args:
        x: float32, bfloat16 or float16 tensor of any shape, finite values.
        quant_type: "nf4", "fp4" or "int4" (our extra, for teaching).
        blocksize: weights per absmax block (positive power of two; QLoRA uses 64).
        double_quant: also quantize the absmax constants to 8 bits (see
            :mod:`qlora_lab.quant.double_quant`).

    Returns:
        ``(packed, state)``: uint8 ``(ceil(n/2), 1)`` with two codes per byte, and the
        :class:`QuantState` that :func:`dequantize_4bit` needs.

    Raises:
        ValueError: bad quant_type or blocksize, non-float, empty or non-finite ``x``.
    """
    check_choice(quant_type, QUANT_TYPES, "quant_type")
    check_blocksize(blocksize)
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise ValueError(f"x must be a floating-point tensor, got {getattr(x, 'dtype', type(x))}")
    if x.numel() == 0:
        raise ValueError("x must not be empty")
    n = x.numel()
    code = codebook(quant_type).to(x.device)
    absmax, codes = _blockwise_codes(_blocks(x.detach(), blocksize), code, n)
    # amax propagates NaN and inf, so checking the constants checks every element.
    if not math.isfinite(absmax.max().item()):
        raise ValueError("x contains NaN or inf: quantization needs finite values")
    if n % 2:  # an odd count is padded with the code of 0.0, as bitsandbytes does
        codes[n] = nearest_code(torch.zeros(1, device=x.device), code)[0]
    packed = pack_4bit(codes[: n + n % 2])
    state = QuantState(
        absmax=absmax,
        shape=x.shape,
        code=code,
        blocksize=blocksize,
        quant_type=quant_type,
        dtype=x.dtype,
    )
    if double_quant:
        qabsmax, offset, absmax2, code2 = quantize_absmax(absmax, DQ_BLOCKSIZE)
        state.absmax, state.offset = qabsmax, offset
        state.state2 = QuantState(absmax=absmax2, code=code2, blocksize=DQ_BLOCKSIZE, dtype=torch.float32)
    return packed, state


def dequantize_4bit(packed: torch.Tensor, state: QuantState) -> torch.Tensor:
    """Inverse of :func:`quantize_4bit`: ``code[q] * absmax`` per block, in ``state.dtype``.

    Computed in float32 and rounded once to the target dtype, like bitsandbytes, chunk
    by chunk (as in :func:`quantize_4bit`). Returns a tensor of shape ``state.shape``
    (bitsandbytes' CPU kernel returns ``(1, n)`` for a 1-D input; we keep the shape).
    """
    if state.quant_type is not None:
        check_choice(state.quant_type, QUANT_TYPES, "quant_type")
    check_blocksize(state.blocksize, "state.blocksize")
    absmax = state.absmax
    if state.nested:
        absmax = dequantize_absmax(
            state.absmax, state.offset, state.state2.absmax, state.state2.code, state.state2.blocksize
        )
    n, blocksize = math.prod(state.shape), state.blocksize
    flat = packed.reshape(-1).view(torch.uint8)
    decoded = torch.empty(4 * math.ceil(n / 4), device=flat.device)  # float32, 4 per 2 bytes
    out = decoded if state.dtype == torch.float32 else torch.empty(n, dtype=state.dtype, device=flat.device)
    rows = _chunk_rows(blocksize)
    for first in range(0, math.ceil(n / blocksize), rows):
        start, stop = first * blocksize, min((first + rows) * blocksize, n)  # start % 4 == 0
        chunk_bytes = flat[start // 2 : (stop + 1) // 2]
        target = decoded[start : start + 4 * math.ceil(len(chunk_bytes) / 2)]  # 4 per 2 bytes
        values = decode_4bit(chunk_bytes, state.code, target)
        values = values[: stop - start]
        full = (stop - start) // blocksize  # complete blocks in this chunk
        values[: full * blocksize].view(full, blocksize).mul_(absmax[first : first + full].unsqueeze(1))
        if full * blocksize < stop - start:  # the last, partial block
            values[full * blocksize :].mul_(absmax[first + full])
        if out is not decoded:
            out[start:stop] = values  # rounds to state.dtype once
    return out[:n].view(state.shape)


def to_bnb_quant_state(state: QuantState):
    """The same state as a ``bitsandbytes.functional.QuantState`` (for bnb's kernels)."""
    from qlora_lab.backends import import_bnb

    functional = import_bnb().functional
    state2 = None
    if state.nested:
        s2 = state.state2
        state2 = functional.QuantState(absmax=s2.absmax, code=s2.code, blocksize=s2.blocksize, dtype=s2.dtype)
    return functional.QuantState(
        absmax=state.absmax,
        shape=state.shape,
        code=state.code,
        blocksize=state.blocksize,
        quant_type=state.quant_type,
        dtype=state.dtype,
        offset=state.offset,
        state2=state2,
    )
