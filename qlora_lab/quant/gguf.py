"""llama.cpp's `q4_0` format (GGUF), to set it beside NF4: a different 4-bit scheme.

q4_0 cuts a tensor into blocks of 32 weights; each block stores one fp16 scale `d`
and 32 unsigned 4-bit codes q in 0..15, decoded as (q - 8)·d: 16 *evenly spaced*
levels (an INT4 grid), where NF4 uses 16 normal quantiles and a block of 64.
Storage: 32·4 + 16 = 144 bits per 32 weights = 4.5 bits/weight.

Reference: ggml/src/ggml-quants.c, `quantize_row_q4_0_ref` / `dequantize_row_q4_0`.
"""

from __future__ import annotations

import torch

Q4_0_BLOCK = 32  # QK4_0 in ggml
Q4_0_BITS_PER_WEIGHT = (Q4_0_BLOCK * 4 + 16) / Q4_0_BLOCK  # 4.5


def quantize_q4_0(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize like ggml: per block, d = (the signed value of largest magnitude) / -8.

    Returns (codes uint8 (n_blocks, 32) in 0..15, scales fp16 (n_blocks,)).

    Raises:
        ValueError: the number of elements is not a multiple of 32 (ggml requires it).
    """
    flat = x.detach().float().reshape(-1)
    if flat.numel() % Q4_0_BLOCK:
        raise ValueError(f"x has {flat.numel()} elements, not a multiple of the q4_0 block ({Q4_0_BLOCK})")
    blocks = flat.view(-1, Q4_0_BLOCK)  # (n_blocks, 32)
    idx = blocks.abs().argmax(dim=1, keepdim=True)
    signed_max = blocks.gather(1, idx).squeeze(1)
    d = signed_max / -8  # the extreme value lands exactly on code 0, i.e. level -8
    inv = torch.where(d != 0, 1.0 / d, torch.zeros_like(d))
    codes = torch.clamp((blocks * inv[:, None] + 8.5).floor(), max=15).to(torch.uint8)  # (int8_t)(x0 + 8.5f)
    return codes, d.to(torch.float16)


def dequantize_q4_0(codes: torch.Tensor, scales: torch.Tensor, shape: torch.Size | None = None) -> torch.Tensor:
    """(q - 8)·d per block, in float32 (reshaped to `shape` when given)."""
    out = (codes.float() - 8) * scales.float()[:, None]
    return out.reshape(shape) if shape is not None else out.reshape(-1)


def q4_0_nbytes(n_weights: int) -> int:
    """Bytes of `n_weights` stored as q4_0: 18 bytes per block of 32."""
    if n_weights % Q4_0_BLOCK:
        raise ValueError(f"n_weights={n_weights} is not a multiple of {Q4_0_BLOCK}")
    return n_weights // Q4_0_BLOCK * (Q4_0_BLOCK // 2 + 2)
