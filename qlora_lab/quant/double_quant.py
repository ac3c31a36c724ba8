"""Double quantization: quantizing the quantization constants (QLoRA paper §3).

Blockwise 4-bit quantization stores one float32 ``absmax`` per block of 64 weights:
32/64 = 0.5 extra bit per parameter. QLoRA's double quantization (DQ) quantizes those
constants a second time, as bitsandbytes does in ``quantize_4bit(...,
compress_statistics=True)``:

1. subtract their mean (``offset``): the absmax values are all positive, centring them
   lets a *signed* 8-bit code use its whole range;
2. quantize the centred constants blockwise, 256 per block, to 8 bits with the *dynamic*
   code of bitsandbytes (``create_dynamic_map``: a sign, a run of zeros standing for a
   decimal exponent, then a linear fraction; fine near 0, coarse near ±1);
3. keep one float32 absmax per 256 constants (``state2.absmax``) and the offset.

Cost: 8/64 + 32/(64*256) = 0.127 bit per parameter instead of 0.5, a saving of
0.373 bit/param, about 3 GB on a 65B model (paper §3). NF4 + DQ is 4.127 bits/param.

Usage::

    from qlora_lab.quant.double_quant import bits_per_param, model_weight_bytes
    bits_per_param(64, double_quant=True)          # 4.1269...
    model_weight_bytes(65e9, bits_per_param()) / 1e9  # ≈ 33.5 GB
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch

DQ_BLOCKSIZE = 256  # constants per second-level block (QLoRA paper §3)
LUT_SIZE = 65536  # entries of bitsandbytes' CPU lookup table over [-1, 1]


# ----------------------------------------------------------------------------- the 8-bit code


def dynamic_map(signed: bool = True, max_exponent_bits: int = 7, total_bits: int = 8) -> torch.Tensor:
    """The 256 values of bitsandbytes' dynamic 8-bit code, sorted (``create_dynamic_map``).

    Cached: returns a fresh copy of the table built by :func:`build_dynamic_map`.
    """
    return _dynamic_map_cached(signed, max_exponent_bits, total_bits).clone()


@lru_cache(maxsize=4)
def _dynamic_map_cached(signed: bool, max_exponent_bits: int, total_bits: int) -> torch.Tensor:
    return build_dynamic_map(signed, max_exponent_bits, total_bits)


def build_dynamic_map(signed: bool = True, max_exponent_bits: int = 7, total_bits: int = 8) -> torch.Tensor:
    """The 256 values of bitsandbytes' dynamic 8-bit code, sorted (``create_dynamic_map``).

    Dettmers 2016 ("8-Bit Approximations for Parallelism in Deep Learning"): after the
    sign bit, the number of leading zero bits is a decimal exponent (10^0 .. 10^-6) and
    the bits after the first 1 are a linear fraction in [0.1, 1]. Small magnitudes get
    fine steps, large ones coarse steps, which suits values of very different sizes.
    Computed with the same float32 operations as bitsandbytes so the values are identical.
    """
    data: list[float] = []
    non_sign_bits = total_bits - 1
    additional_items = 2 ** (non_sign_bits - max_exponent_bits) - 1
    for i in range(max_exponent_bits):
        exponent = 10 ** (-(max_exponent_bits - 1) + i)
        fraction_items = int(
            2 ** (i + non_sign_bits - max_exponent_bits) + 1
            if signed
            else 2 ** (i + non_sign_bits - max_exponent_bits + 1) + 1
        )
        boundaries = torch.linspace(0.1, 1, fraction_items, dtype=torch.float32)
        means = (boundaries[:-1] + boundaries[1:]) / 2.0  # mid-points of the fraction bins
        data += (exponent * means).tolist()
        if signed:
            data += (-exponent * means).tolist()
    if additional_items > 0:  # unused with the defaults (7 exponent bits)
        boundaries = torch.linspace(0.1, 1, additional_items + 1, dtype=torch.float32)
        means = (boundaries[:-1] + boundaries[1:]) / 2.0
        data += (exponent * means).tolist()
        if signed:
            data += (-exponent * means).tolist()
    data += [0.0, 1.0]  # an exact zero and an exact maximum
    data += [0.0] * (2**8 - len(data))
    return torch.tensor(sorted(data), dtype=torch.float32)


@lru_cache(maxsize=4)
def _lookup_table(code_bytes: bytes) -> torch.Tensor:
    """LUT over [-1, 1]: entry i holds the nearest code to ``-1 + 2i/65535``."""
    code = torch.frombuffer(bytearray(code_bytes), dtype=torch.float32)
    midpoints = (code[:-1] + code[1:]) * 0.5  # (255,) decision thresholds
    grid = -1.0 + (2.0 * torch.arange(LUT_SIZE, dtype=torch.float32)) / (LUT_SIZE - 1)
    return torch.searchsorted(midpoints, grid, side="left").to(torch.uint8)  # (65536,)


# ----------------------------------------------------------------------------- 8-bit blockwise


def quantize_blockwise_8bit(
    x: torch.Tensor, code: torch.Tensor, blocksize: int = DQ_BLOCKSIZE
) -> tuple[torch.Tensor, torch.Tensor]:
    """8-bit blockwise quantization as bitsandbytes' CPU kernel does it.

    Each block is divided by its absmax, then the nearest code is read from a 65,536-entry
    lookup table over [-1, 1] (bitsandbytes' ``quantize_cpu``): the normalised value is
    rounded to the LUT grid first, so a value within half a grid step (1.5e-5) of a
    midpoint may get the second-nearest code. We reproduce it bit for bit, so our
    double-quantized constants equal bitsandbytes'. (Its CUDA kernel does an exact
    nearest-code search instead; the two can differ on such values.)

    Args:
        x: float32 tensor (flattened here).
        code: 256 sorted values in [-1, 1], e.g. :func:`dynamic_map`.
        blocksize: values per block.

    Returns:
        ``(codes, absmax)``: uint8 codes of shape ``x.shape`` and float32 ``(n_blocks,)``.
    """
    flat = x.reshape(-1).float()
    n = flat.numel()
    n_blocks = math.ceil(n / blocksize)
    if n % blocksize:
        flat = torch.nn.functional.pad(flat, (0, n_blocks * blocksize - n))
    blocks = flat.view(n_blocks, blocksize)
    absmax = blocks.abs().amax(dim=1)  # (n_blocks,)
    inv = torch.where(absmax > 0, 1.0 / absmax, torch.zeros_like(absmax))
    normed = (blocks * inv.unsqueeze(1)).clamp_(-1.0, 1.0)  # (n_blocks, blocksize)
    # The C++ kernel's float32 steps: ((v + 1) * 0.5) * 65535 + 0.5, truncated. (v + 1) * 0.5
    # is exact, so one multiplication by 32767.5 rounds identically.
    grid_index = normed.add_(1.0).mul_((LUT_SIZE - 1) / 2).add_(0.5).to(torch.int32)
    lut = _lookup_table(code.detach().float().cpu().contiguous().numpy().tobytes()).to(x.device)
    codes = lut.index_select(0, grid_index.view(-1))
    codes.view(n_blocks, blocksize)[absmax == 0] = 0  # bnb writes code 0 for an all-zero block
    return codes[:n].view(x.shape), absmax


def dequantize_blockwise_8bit(
    codes: torch.Tensor, absmax: torch.Tensor, code: torch.Tensor, blocksize: int = DQ_BLOCKSIZE
) -> torch.Tensor:
    """Inverse of :func:`quantize_blockwise_8bit`: ``code[q] * absmax`` (float32)."""
    values = code.to(codes.device).index_select(0, codes.reshape(-1).to(torch.int32))  # (n,), fresh
    n_full = values.numel() // blocksize
    values[: n_full * blocksize].view(n_full, blocksize).mul_(absmax[:n_full].unsqueeze(1))
    if n_full * blocksize < values.numel():  # the last, partial block
        values[n_full * blocksize :].mul_(absmax[n_full])
    return values.view(codes.shape)


# ----------------------------------------------------------------------------- absmax constants


def quantize_absmax(
    absmax: torch.Tensor, blocksize: int = DQ_BLOCKSIZE
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Double-quantize first-level constants (QLoRA §3).

    Args:
        absmax: float32 ``(n_blocks,)`` constants of a 4-bit quantization.
        blocksize: constants per second-level block (256 in QLoRA and bitsandbytes).

    Returns:
        ``(qabsmax, offset, absmax2, code)``: uint8 ``(n_blocks,)`` codes, the float32
        mean that was subtracted (shape ``()``), float32 ``(ceil(n_blocks/256),)``
        second-level absmax, and the 256-value dynamic code used.
    """
    offset = absmax.mean()  # same reduction as bitsandbytes (torch mean, float32)
    code = dynamic_map().to(absmax.device)
    qabsmax, absmax2 = quantize_blockwise_8bit(absmax - offset, code, blocksize)
    return qabsmax, offset, absmax2, code


def dequantize_absmax(
    qabsmax: torch.Tensor,
    offset: torch.Tensor,
    absmax2: torch.Tensor,
    code: torch.Tensor,
    blocksize: int = DQ_BLOCKSIZE,
) -> torch.Tensor:
    """Recover float32 first-level constants: ``code[q] * absmax2 + offset``."""
    return dequantize_blockwise_8bit(qabsmax, absmax2, code, blocksize).add_(offset)


# ----------------------------------------------------------------------------- memory accounting


def bits_per_param(
    blocksize: int = 64, double_quant: bool = True, dq_blocksize: int = DQ_BLOCKSIZE, weight_bits: int = 4
) -> float:
    """Storage bits per weight: the code plus its share of the constants.

    Without DQ: ``4 + 32/blocksize`` (4.5 at 64). With DQ: ``4 + 8/blocksize +
    32/(blocksize * dq_blocksize)`` = 4.127 at 64/256 (QLoRA §3). The fixed-size
    tables (16-value 4-bit code, 256-value dynamic code, the offset) are ignored: a few
    hundred bytes per tensor.
    """
    if blocksize <= 0 or dq_blocksize <= 0:
        raise ValueError(f"blocksize and dq_blocksize must be positive, got {blocksize}, {dq_blocksize}")
    if not double_quant:
        return weight_bits + 32 / blocksize
    return weight_bits + 8 / blocksize + 32 / (blocksize * dq_blocksize)


def _nbytes(t: torch.Tensor | None) -> int:
    return 0 if t is None else t.numel() * t.element_size()


def quant_state_breakdown(packed: torch.Tensor, quant_state) -> dict[str, int]:
    """Bytes held by a 4-bit tensor, item by item, as bitsandbytes stores them.

    Works with a ``bitsandbytes.functional.QuantState`` and with
    :class:`qlora_lab.quant.nf4.QuantState` alike (same attribute names).
    """
    parts = {
        "packed": _nbytes(packed),
        "absmax": _nbytes(quant_state.absmax),  # uint8 with DQ, float32 without
        "code": _nbytes(quant_state.code),  # the 16-value 4-bit table
    }
    if quant_state.nested:
        offset = quant_state.offset
        parts["nested_absmax"] = _nbytes(quant_state.state2.absmax)
        parts["nested_code"] = _nbytes(quant_state.state2.code)
        parts["offset"] = _nbytes(offset) if isinstance(offset, torch.Tensor) else 4
    return parts


def quant_state_nbytes(packed: torch.Tensor, quant_state) -> int:
    """Total bytes held by packed 4-bit weights and their (possibly nested) state."""
    return sum(quant_state_breakdown(packed, quant_state).values())


def model_weight_bytes(n_params: float, bits_per_param: float) -> int:
    """Bytes for ``n_params`` weights at ``bits_per_param`` bits each (rounded up).

    Example: ``model_weight_bytes(65e9, 16) / 1e9`` = 130 GB in bf16, about 33.5 GB in
    NF4 + DQ (weights only: activations, adapters and optimizer states come on top).
    """
    if n_params < 0 or bits_per_param <= 0:
        raise ValueError(f"n_params must be >= 0 and bits_per_param > 0, got {n_params}, {bits_per_param}")
    return math.ceil(n_params * bits_per_param / 8)
