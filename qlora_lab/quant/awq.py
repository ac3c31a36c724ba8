"""AWQ's idea (Lin et al. 2023): scale the input channels that see large activations before rounding.

A weight multiplied by a large activation matters more to the output. AWQ multiplies the
input channel j of W by ``s_j > 1`` before round-to-nearest and divides the activation by
``s_j`` (folded into the previous operation in the real method, so the product is
unchanged): the important weights then use more of the grid and lose less to rounding.
The scales come from the mean activation magnitude, ``s = mean|x|^alpha``, with alpha in
[0, 1] picked by a grid search on calibration data to minimise the layer output error
(AWQ §3.2, eq. 5); alpha = 0 is plain RTN. No weight is updated as in GPTQ; only the scales
are searched.

Here the scaled weight is returned dequantized and divided back, ``Q(W diag(s)) diag(s)^-1``:
the weight the layer effectively applies. Simplified against the paper's code: one search per
linear layer (AWQ shares one scale for q, k, v, which read the same input) and no search of
clipping ranges (its ``auto_clip``).

    from qlora_lab.quant.awq import awq_quantize
    w_hat = awq_quantize(layer.weight, x, bits=4, group_size=64)
"""

from __future__ import annotations

import torch

from qlora_lab.quant.gptq import rtn_quantize

N_GRID = 20  # alphas 0, 0.05, ..., 0.95 (llm-awq's auto_scale grid)
MAX_ROWS = 4096  # calibration rows used in the search (enough for 320-896 input channels)


def activation_scales(calibration_inputs: torch.Tensor, alpha: float) -> torch.Tensor:
    """Per-input-channel scales ``mean|x|^alpha``, normalised so that max * min = 1 (llm-awq)."""
    magnitude = calibration_inputs.reshape(-1, calibration_inputs.shape[-1]).abs().float().mean(dim=0)
    s = magnitude.pow(alpha).clamp(min=1e-4)
    return s / torch.sqrt(s.max() * s.min())


def awq_search(weight: torch.Tensor, calibration_inputs: torch.Tensor, bits: int = 4, group_size: int = 64,
               n_grid: int = N_GRID) -> tuple[torch.Tensor, float]:
    """Grid search of alpha: (dequantized weight, same shape and dtype; the chosen alpha).

    Raises:
        ValueError: calibration inputs that do not match the weight's input columns.
    """
    if calibration_inputs.shape[-1] != weight.shape[1]:
        raise ValueError(f"calibration_inputs have {calibration_inputs.shape[-1]} features, "
                         f"the weight has {weight.shape[1]} input columns")
    x = calibration_inputs.reshape(-1, weight.shape[1]).float()[:MAX_ROWS]
    w = weight.detach().float()
    reference = x @ w.T
    best: tuple[float, torch.Tensor, float] | None = None
    for step in range(n_grid):
        alpha = step / n_grid
        s = activation_scales(x, alpha)
        w_hat = rtn_quantize(w * s, bits, group_size) / s
        error = float((x @ w_hat.T - reference).pow(2).mean())
        if best is None or error < best[0]:
            best = (error, w_hat, alpha)
    return best[1].to(weight.dtype), best[2]


def awq_quantize(weight: torch.Tensor, calibration_inputs: torch.Tensor, bits: int = 4,
                 group_size: int = 64) -> torch.Tensor:
    """Activation-aware RTN: the dequantized weight (same shape and dtype), as `gptq_quantize`."""
    return awq_search(weight, calibration_inputs, bits, group_size)[0]
