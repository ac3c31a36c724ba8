"""Uniform integer quantization: symmetric absmax and asymmetric zero-point.

The two classic schemes that every later format builds upon (LLM.int8 paper §2,
Dettmers et al. 2022; Jacob et al. 2018 for zero-point):

* **absmax** (symmetric): ``scale = absmax(x) / (2^(b-1) - 1)``, ``q = round(x / scale)``.
  Zero maps to code 0, the range is symmetric, one code is left unused (-128 at 8 bits)
  so that +absmax and -absmax are both exact.
* **zeropoint** (asymmetric, "affine"): ``scale = (max - min) / (2^b - 1)``,
  ``zero_point = round(-min / scale)``, ``q = round(x / scale) + zero_point``. All 2^b codes
  cover ``[min, max]``, which helps skewed data (ReLU outputs, shifted ranges). As in
  PyTorch's observers, the range is widened to contain 0 so that 0.0 is exactly
  representable (padding and ReLU zeros stay exact) and the zero-point is a valid code.

Each scheme works per tensor (one scale), per channel (one scale per row of dim 0, the
output channel of a ``Linear`` weight of shape ``(out_features, in_features)``) or per
block (one scale per ``blocksize`` consecutive elements of the flattened tensor: the
granularity bitsandbytes uses for NF4). Smaller groups isolate outliers: one large value
only coarsens the grid of its own group.

Usage::

    from qlora_lab.quant.absmax import quantize, dequantize, fake_quantize, quantization_error
    qt = quantize(w, bits=4, scheme="absmax", granularity="block", blocksize=64)
    w_hat = dequantize(qt)
    quantization_error(w, w_hat)   # {'mse': ..., 'max_abs': ..., 'sqnr_db': ...}

The rounding follows ``torch.fake_quantize_per_tensor_affine`` exactly (multiply by the
reciprocal of the scale, round half to even), so the tests can compare with PyTorch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

SCHEMES = ("absmax", "zeropoint")
GRANULARITIES = ("tensor", "channel", "block")
MIN_BITS, MAX_BITS = 2, 8


@dataclass
class QuantizedTensor:
    """Integer codes plus everything needed to map them back to floats.

    ``scale`` and ``zero_point`` have one entry per group: shape ``()`` per tensor,
    ``(shape[0],)`` per channel, ``(n_blocks,)`` per block. ``codes`` has the shape of
    the input (int8 for absmax, uint8 for zeropoint; b < 8 bits still use one byte each:
    bit packing is shown in :mod:`qlora_lab.quant.nf4`).
    """

    codes: torch.Tensor
    scale: torch.Tensor
    zero_point: torch.Tensor
    bits: int
    scheme: str
    granularity: str
    blocksize: int
    shape: torch.Size
    dtype: torch.dtype


# ----------------------------------------------------------------------------- checks


def check_float_tensor(x: torch.Tensor, name: str = "x") -> None:
    """Raise ValueError unless ``x`` is a non-empty, finite floating-point tensor."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if x.numel() == 0:
        raise ValueError(f"{name} must not be empty")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains NaN or inf: quantization needs finite values")


def check_blocksize(blocksize: int, name: str = "blocksize") -> None:
    """Raise ValueError unless ``blocksize`` is a positive power of two."""
    if isinstance(blocksize, bool) or not isinstance(blocksize, int):
        raise ValueError(f"{name} must be an int, got {blocksize!r}")
    if blocksize <= 0 or blocksize & (blocksize - 1):
        raise ValueError(f"{name} must be a positive power of two, got {blocksize}")


def check_choice(value: str, choices: tuple[str, ...], name: str) -> None:
    """Raise ValueError unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}: expected one of {choices}")


def _check_bits(bits: int) -> None:
    if isinstance(bits, bool) or not isinstance(bits, int) or not MIN_BITS <= bits <= MAX_BITS:
        raise ValueError(f"bits must be an int in {MIN_BITS}..{MAX_BITS}, got {bits!r}")


# ----------------------------------------------------------------------------- ranges


def code_range(bits: int, scheme: str) -> tuple[int, int]:
    """(qmin, qmax) of the integer codes: symmetric ±(2^(b-1)-1), or 0..2^b-1."""
    _check_bits(bits)
    check_choice(scheme, SCHEMES, "scheme")
    if scheme == "absmax":
        qmax = 2 ** (bits - 1) - 1
        return -qmax, qmax
    return 0, 2**bits - 1


def _groups(x: torch.Tensor, granularity: str, blocksize: int) -> torch.Tensor:
    """View ``x`` (as float32) as ``(n_groups, group_size)``; blocks are zero-padded."""
    flat = x.detach().float().reshape(-1)
    if granularity == "tensor":
        return flat.view(1, -1)
    if granularity == "channel":
        if x.ndim == 0:
            raise ValueError("granularity='channel' needs a tensor with at least 1 dimension")
        return flat.view(x.shape[0], -1)  # (channels, elements per channel)
    n_blocks = math.ceil(flat.numel() / blocksize)
    pad = n_blocks * blocksize - flat.numel()
    # Zero padding is harmless: |0| never raises an absmax, and 0 is inside every
    # zero-point range since the range always contains 0.
    return torch.nn.functional.pad(flat, (0, pad)).view(n_blocks, blocksize)  # (n_blocks, blocksize)


def _scale_and_zero_point(groups: torch.Tensor, bits: int, scheme: str) -> tuple[torch.Tensor, torch.Tensor]:
    """One scale (float32) and zero-point (int32) per row of ``groups``."""
    qmin, qmax = code_range(bits, scheme)
    if scheme == "absmax":
        lo = torch.zeros(groups.shape[0])
        scale = groups.abs().amax(dim=1) / qmax
    else:
        lo = groups.amin(dim=1).clamp(max=0.0)  # widen the range to contain 0
        scale = (groups.amax(dim=1).clamp(min=0.0) - lo) / (qmax - qmin)
    # An all-zero group has scale 0: any positive scale codes it exactly (as zeros).
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    zero_point = (qmin - torch.round(lo / scale)).clamp(qmin, qmax).to(torch.int32)
    if scheme == "absmax":
        zero_point.zero_()  # symmetric: 0.0 is code 0
    return scale, zero_point


# ----------------------------------------------------------------------------- public API


def quantize(
    x: torch.Tensor,
    bits: int = 8,
    scheme: str = "absmax",
    granularity: str = "tensor",
    blocksize: int = 64,
) -> QuantizedTensor:
    """Quantize ``x`` to ``bits``-bit integers with one scale per tensor/channel/block.

    Args:
        x: floating-point tensor (any shape, finite values).
        bits: 2..8.
        scheme: "absmax" (symmetric, codes in ±(2^(b-1)-1)) or "zeropoint" (0..2^b-1).
        granularity: "tensor", "channel" (rows of dim 0) or "block" (flattened chunks).
        blocksize: elements per block (positive power of two), used by "block" only.

    Returns:
        A :class:`QuantizedTensor`; :func:`dequantize` inverts it.

    Raises:
        ValueError: on bad bits, scheme, granularity, blocksize or input tensor.
    """
    _check_bits(bits)
    check_choice(scheme, SCHEMES, "scheme")
    check_choice(granularity, GRANULARITIES, "granularity")
    check_blocksize(blocksize)
    check_float_tensor(x)
    qmin, qmax = code_range(bits, scheme)
    groups = _groups(x, granularity, blocksize)  # (n_groups, group_size)
    scale, zero_point = _scale_and_zero_point(groups, bits, scheme)
    # Same arithmetic as torch.fake_quantize_*_affine: round(x * (1/scale)) + zero_point,
    # rounding half to even, then clamp to the code range.
    inv_scale = (1.0 / scale).unsqueeze(1)
    codes = (torch.round(groups * inv_scale) + zero_point.unsqueeze(1)).clamp_(qmin, qmax)
    codes = codes.reshape(-1)[: x.numel()].view(x.shape)
    storage = torch.int8 if scheme == "absmax" else torch.uint8
    if granularity == "tensor":
        scale, zero_point = scale.squeeze(0), zero_point.squeeze(0)  # shape ()
    return QuantizedTensor(
        codes=codes.to(storage),
        scale=scale,
        zero_point=zero_point,
        bits=bits,
        scheme=scheme,
        granularity=granularity,
        blocksize=blocksize,
        shape=x.shape,
        dtype=x.dtype,
    )


def dequantize(qt: QuantizedTensor) -> torch.Tensor:
    """Map codes back to floats: ``(q - zero_point) * scale``, in ``qt.dtype``."""
    codes = _groups(qt.codes.to(torch.float32), qt.granularity, qt.blocksize)  # (n_groups, size)
    scale = qt.scale.reshape(-1, 1)
    zero_point = qt.zero_point.reshape(-1, 1).to(torch.float32)
    values = (codes - zero_point) * scale
    return values.reshape(-1)[: math.prod(qt.shape)].view(qt.shape).to(qt.dtype)


def fake_quantize(
    x: torch.Tensor,
    bits: int = 8,
    scheme: str = "absmax",
    granularity: str = "tensor",
    blocksize: int = 64,
) -> torch.Tensor:
    """Quantize then dequantize: the float tensor a low-bit model actually "sees".

    Used for error plots and quantization-aware training (wrap it in a
    straight-through estimator: ``x + (fake_quantize(x) - x).detach()``).
    """
    return dequantize(quantize(x, bits=bits, scheme=scheme, granularity=granularity, blocksize=blocksize))


def quantization_error(x: torch.Tensor, x_hat: torch.Tensor) -> dict[str, float]:
    """Error metrics between an original tensor and its reconstruction.

    Returns:
        ``mse`` (mean squared error), ``mae`` (mean absolute error), ``max_abs``
        (worst element) and ``sqnr_db``: signal-to-quantization-noise ratio,
        ``10 log10(sum x^2 / sum (x - x_hat)^2)``; each extra bit buys about 6.02 dB
        on uniform data. ``inf`` when the reconstruction is exact.
    """
    if x.shape != x_hat.shape:
        raise ValueError(f"x_hat must have the shape of x: {tuple(x_hat.shape)} != {tuple(x.shape)}")
    x64, err = x.detach().double(), (x.detach().double() - x_hat.detach().double())
    noise = float((err**2).sum())
    signal = float((x64**2).sum())
    if noise == 0.0:
        sqnr = math.inf
    elif signal == 0.0:
        sqnr = -math.inf
    else:
        sqnr = 10.0 * math.log10(signal / noise)
    return {
        "mse": float((err**2).mean()),
        "mae": float(err.abs().mean()),
        "max_abs": float(err.abs().max()),
        "sqnr_db": sqnr,
    }
