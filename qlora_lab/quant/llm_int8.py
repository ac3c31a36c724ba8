"""LLM.int8() (Dettmers et al. 2022): vector-wise INT8 matmul with outlier features kept in 16 bits.

The outliers of LLM.int8() live in the *activations* (hidden states), not in the weights:
from about 6.7B parameters on, a few hidden dimensions carry values up to ~20x larger
than the rest, in almost every token and layer ("emergent features", paper §4). A row
of X quantized with one absmax scale then spends its 255 levels on that one value and
rounds everything else to a few levels. The fix (paper §3.2, "mixed-precision
decomposition"): the *columns* of X (hidden dimensions) where any |x| >= threshold (6.0)
are multiplied in 16 bits; the rest go through the INT8 matmul, each row of X and each
row of W with its own absmax scale ("vector-wise quantization", §3.1):

    X W^T ~ (C_X C_W^T) * (s_X s_W^T) / 127^2  +  X[:, O] W[:, O]^T     (O = outlier columns)

`int8_matmul` reproduces bitsandbytes 0.50's ``Linear8bitLt`` forward in inference, step by
step (its default kernels ``int8_vectorwise_quant``, ``int8_mixed_scaled_mm``,
``int8_mm_dequant``): X cast to float16 for quantization; outlier *elements* zeroed before
the row absmax, then the outlier columns zeroed in the codes; the outlier part multiplies
the 16-bit X by the *int8-dequantized* weight columns (bitsandbytes keeps only the int8
weight). tests/test_llm_int8.py checks the output equals ``Linear8bitLt``'s.

    from qlora_lab.quant.llm_int8 import int8_matmul, outlier_columns
    y = int8_matmul(x, layer.weight, threshold=6.0)      # threshold=0.0: plain vector-wise INT8
"""

from __future__ import annotations

import torch

from qlora_lab.backends import import_bnb

THRESHOLD = 6.0  # LLM.int8() §3.2: |x| >= 6 marks an outlier feature
INV_127 = 7.874015718698502e-3  # 1/127 as bitsandbytes writes it (int8_vectorwise_dequant)
INV_127_SQUARED = 6.200124e-05  # 1/127^2 as bitsandbytes writes it (int8_mm_dequant)


def outlier_columns(x: torch.Tensor, threshold: float = THRESHOLD) -> torch.Tensor:
    """Hidden dimensions (columns of the 2-D `x`) holding at least one |value| >= threshold."""
    return torch.argwhere((x.abs() >= threshold).any(dim=0)).view(-1)


def vectorwise_quant(a: torch.Tensor, threshold: float = 0.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Row-wise absmax INT8 of a 2-D tensor: (codes int8, row absmax float32, outlier columns).

    With threshold > 0 the outlier elements do not count in the row absmax and the outlier
    columns get code 0 (they go through the 16-bit path instead).
    """
    cols = outlier_columns(a, threshold) if threshold > 0 else torch.empty(0, dtype=torch.long)
    kept = torch.where(a.abs() >= threshold, torch.zeros_like(a), a) if threshold > 0 else a
    absmax = kept.abs().max(dim=1).values.float()  # (rows,)
    codes = torch.round(kept * (127.0 / absmax.unsqueeze(-1))).to(torch.int8)
    if a.shape[0] > 1 and cols.numel():
        codes[:, cols] = 0
    return codes, absmax, cols


def int8_matmul(x: torch.Tensor, weight: torch.Tensor, threshold: float = THRESHOLD,
                bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ weight.T`` the LLM.int8() way (bitsandbytes' arithmetic); threshold 0 = plain INT8.

    Args:
        x: (..., in_features) activations; weight: (out_features, in_features).
    Returns:
        (..., out_features) in x's dtype.
    """
    a = x.reshape(-1, x.shape[-1])
    codes_a, scale_a, cols = vectorwise_quant(a.to(torch.float16), threshold)
    codes_w, scale_w, _ = vectorwise_quant(weight.to(torch.float16))
    # int32 accumulation; exact in float32 while |sum| < 2^24 (127^2 * 1040 columns)
    acc = (codes_a.float() @ codes_w.float().T).to(torch.int32)
    out = acc * (scale_a.unsqueeze(1) * scale_w.unsqueeze(0)) * INV_127_SQUARED
    if bias is not None:
        out = out + bias
    out = out.to(a.dtype)
    if cols.numel():
        w_cols = (codes_w[:, cols] * scale_w.view(-1, 1) * INV_127).to(a.dtype)  # (out, n_outliers)
        out = out.addmm(a[:, cols], w_cols.T)
    return out.reshape(*x.shape[:-1], weight.shape[0])


def to_linear8bitlt(linear: torch.nn.Linear, threshold: float = THRESHOLD) -> torch.nn.Module:
    """bitsandbytes' ``Linear8bitLt`` (inference: int8 weight only) holding `linear`'s weight.

    ``Int8Params`` quantizes when moved to a device, even CPU -> CPU, hence the ``.to``.
    """
    bnb = import_bnb()
    layer = bnb.nn.Linear8bitLt(linear.in_features, linear.out_features, bias=linear.bias is not None,
                                has_fp16_weights=False, threshold=threshold)
    layer.weight = bnb.nn.Int8Params(linear.weight.data.clone(), requires_grad=False, has_fp16_weights=False)
    if linear.bias is not None:
        layer.bias = torch.nn.Parameter(linear.bias.data.clone(), requires_grad=False)
    return layer.to(linear.weight.device).eval()


def decomposition_error(x: torch.Tensor, weight: torch.Tensor, threshold: float = THRESHOLD) -> dict[str, float]:
    """Relative output error of plain vector-wise INT8 and of LLM.int8() against the float product."""
    reference = x.float() @ weight.float().T
    norm = torch.linalg.norm(reference)
    plain = int8_matmul(x.float(), weight, threshold=0.0)
    mixed = int8_matmul(x.float(), weight, threshold=threshold)
    return {"int8": float(torch.linalg.norm(plain - reference) / norm),
            "llm_int8": float(torch.linalg.norm(mixed - reference) / norm),
            "n_outliers": int(outlier_columns(x.reshape(-1, x.shape[-1]), threshold).numel())}
