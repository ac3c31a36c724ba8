"""GPTQ (Frantar et al. 2022): quantize a weight column by column, fixing each error later.

Round-to-nearest (RTN) rounds every weight on its own. GPTQ minimises the *layer output*
error ``||X W^T - X W_hat^T||^2`` on calibration inputs X instead. For one row w of W this
is the quadratic form ``(w - w_hat) H (w - w_hat)^T`` with the Hessian ``H = 2 X^T X``
(GPTQ §3, eq. 1). Optimal Brain Quantization (OBQ) quantizes one weight q, then moves the
not-yet-quantized ones to compensate (eq. 2, with ``H^-1`` the inverse Hessian of the
weights still free):

    delta_F = -(w_q - quant(w_q)) / [H^-1]_qq * [H^-1]_{:,q}

GPTQ's three ideas, all here:

1. the *same column order* for every row (left to right), so one ``H^-1`` serves all rows;
2. *Cholesky*: the rows of ``H^-1`` needed after removing columns 0..q-1 are the rows of the
   upper Cholesky factor of ``H^-1`` (scaled), so no explicit downdate is ever computed (§3
   "Cholesky reformulation");
3. *lazy batch updates*: columns are processed in blocks; inside a block updates touch only
   the block, and the columns to the right get one matrix product per block (§3 "lazy
   batch-updates"), which turns many thin updates into one fat one.

Dampening: ``lambda = 1 %`` of the mean diagonal is added to H (§3, as the reference code's
``percdamp=.01``), which keeps the Cholesky factorisation stable. Columns never seen
(zero diagonal, "dead") are set to zero, as the reference does.

The grid is the reference's asymmetric min/max grid per group of ``group_size`` input
columns (``quant.py``'s ``Quantizer.find_params`` with ``sym=False``): ``2**bits`` levels
``scale * (q - zero)``, the range widened to contain 0. A group's grid is fixed when its
first column is reached, from the weights *as updated so far* (the reference reads its
grid from a not-yet-updated copy inside a block, which makes its result depend on the
block size; here blocks are multiples of the group size and the result does not).

    from qlora_lab.quant.gptq import gptq_quantize, rtn_quantize
    w_hat = gptq_quantize(layer.weight, x, bits=4, group_size=64)   # x: (n_samples, in_features)
"""

from __future__ import annotations

import torch

DAMP_FRACTION = 0.01  # GPTQ §3: lambda = 1 % of the average diagonal of H
LAZY_BLOCK = 128  # columns per lazy batch update (the reference's blocksize)


def _check(weight: torch.Tensor, bits: int, group_size: int) -> None:
    if weight.ndim != 2:
        raise ValueError(f"weight must be 2-D (out_features, in_features), got shape {tuple(weight.shape)}")
    if not 2 <= bits <= 8:
        raise ValueError(f"bits={bits} must be in [2, 8]")
    if group_size < 1:
        raise ValueError(f"group_size={group_size} must be positive")


def group_grid(w: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, zero) of the asymmetric min/max grid of each row of `w` (out, group columns).

    As GPTQ's reference ``Quantizer.find_params(sym=False)``: the range [min, max] is widened
    to contain 0, an all-zero row gets [-1, 1], and the zero point is rounded to an integer.
    """
    maxq = 2**bits - 1
    xmin = w.min(dim=1).values.clamp(max=0)  # (out,)
    xmax = w.max(dim=1).values.clamp(min=0)
    both_zero = (xmin == 0) & (xmax == 0)
    xmin = torch.where(both_zero, -torch.ones_like(xmin), xmin)
    xmax = torch.where(both_zero, torch.ones_like(xmax), xmax)
    scale = (xmax - xmin) / maxq
    zero = torch.round(-xmin / scale)
    return scale.unsqueeze(1), zero.unsqueeze(1)  # (out, 1) each


def quantize_on_grid(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int) -> torch.Tensor:
    """Nearest grid point ``scale * (q - zero)``, q in [0, 2**bits - 1] (reference ``quantize``)."""
    q = torch.clamp(torch.round(w / scale) + zero, 0, 2**bits - 1)
    return scale * (q - zero)


def rtn_quantize(weight: torch.Tensor, bits: int = 4, group_size: int = 64) -> torch.Tensor:
    """Round-to-nearest on GPTQ's grid: the baseline GPTQ is compared with (same bits, same groups)."""
    _check(weight, bits, group_size)
    w = weight.to(torch.float64 if weight.dtype == torch.float64 else torch.float32)
    out = torch.empty_like(w)
    for start in range(0, w.shape[1], group_size):
        group = w[:, start : start + group_size]
        out[:, start : start + group_size] = quantize_on_grid(group, *group_grid(group, bits), bits)
    return out.to(weight.dtype)


def hessian(calibration_inputs: torch.Tensor) -> torch.Tensor:
    """``H = 2/n X^T X`` (in_features, in_features): the curvature of the layer output error.

    The reference accumulates the same average over batches; the 1/n only rescales H, which
    changes neither the updates nor the result (the dampening is relative to H's diagonal).
    """
    x = calibration_inputs.reshape(-1, calibration_inputs.shape[-1]).to(torch.float64)
    return 2.0 / x.shape[0] * x.T @ x


def inverse_hessian_cholesky(h: torch.Tensor, damp: float = DAMP_FRACTION) -> torch.Tensor:
    """Upper Cholesky factor U of ``(H + lambda I)^-1`` (``U^T U = H^-1``): GPTQ's ``Hinv``.

    Row q of U, divided by U[q, q], is row q of the inverse Hessian of the columns q.. once
    columns 0..q-1 have been quantized and removed: the downdates of OBQ, all at once.
    """
    h = h.clone()
    idx = torch.arange(h.shape[0])
    h[idx, idx] += damp * torch.mean(torch.diag(h))
    lower = torch.linalg.cholesky(h)
    return torch.linalg.cholesky(torch.cholesky_inverse(lower), upper=True)


def _dead_columns(h: torch.Tensor, w: torch.Tensor) -> None:
    """Columns no calibration input touches: weight set to 0, H given a unit diagonal."""
    dead = torch.diag(h) == 0
    h[dead, dead] = 1
    w[:, dead] = 0


def gptq_quantize(weight: torch.Tensor, calibration_inputs: torch.Tensor, bits: int = 4,
                  group_size: int = 64, damp: float = DAMP_FRACTION) -> torch.Tensor:
    """GPTQ-quantized copy of `weight`, dequantized: same shape and dtype (a fake-quantized weight).

    Args:
        weight: (out_features, in_features), as ``nn.Linear.weight``.
        calibration_inputs: (n_samples, in_features) inputs of the layer (more dims are flattened).
        bits: 2..8 bits per weight; group_size: input columns sharing one (scale, zero).
        damp: dampening, a fraction of H's mean diagonal.

    Raises:
        ValueError: bad shapes, bits or group size.
    """
    _check(weight, bits, group_size)
    if calibration_inputs.shape[-1] != weight.shape[1]:
        raise ValueError(f"calibration_inputs have {calibration_inputs.shape[-1]} features, "
                         f"the weight has {weight.shape[1]} input columns")
    w = weight.detach().to(torch.float64).clone()
    h = hessian(calibration_inputs)
    _dead_columns(h, w)
    u = inverse_hessian_cholesky(h, damp)
    block = group_size * max(1, LAZY_BLOCK // group_size)  # whole groups per block
    out = torch.zeros_like(w)
    for b1 in range(0, w.shape[1], block):
        b2 = min(b1 + block, w.shape[1])
        w1, u1 = w[:, b1:b2].clone(), u[b1:b2, b1:b2]
        err = torch.zeros_like(w1)  # (out, block): scaled errors, for the lazy update
        for i in range(b2 - b1):
            if i % group_size == 0:  # a new group: its grid from the weights updated so far
                scale, zero = group_grid(w1[:, i : i + group_size], bits)
            q = quantize_on_grid(w1[:, i : i + 1], scale, zero, bits)[:, 0]
            out[:, b1 + i] = q
            err[:, i] = (w1[:, i] - q) / u1[i, i]
            w1[:, i:] -= err[:, i : i + 1] @ u1[i : i + 1, i:]  # OBQ update inside the block
        w[:, b2:] -= err @ u[b1:b2, b2:]  # lazy batch update of every column to the right
    return out.to(weight.dtype)


def output_error(weight: torch.Tensor, weight_hat: torch.Tensor, inputs: torch.Tensor) -> float:
    """Relative layer output error ``||X W^T - X W_hat^T|| / ||X W^T||`` (what GPTQ minimises)."""
    x = inputs.reshape(-1, inputs.shape[-1]).to(torch.float64)
    reference = x @ weight.to(torch.float64).T
    return float(torch.linalg.norm(reference - x @ weight_hat.to(torch.float64).T) / torch.linalg.norm(reference))
