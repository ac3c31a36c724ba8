"""The embedded model (or any Llama) in every format of the quality table: one name, one model.

    model, tokenizer = load_quantized("gptq4")
    evaluate_split(model, tokenizer, "validation").bits_per_byte

Three kinds of format:

* **bitsandbytes at run time** (the real kernels, on CPU too): ``nf4``, ``nf4-dq``, ``fp4``
  (``Linear4bit``, through `load_model`), ``llm-int8`` (``Linear8bitLt``, threshold 6.0);
* **fake quantization**: each Linear weight of the decoder layers is replaced by its
  quantized-then-dequantized copy (stored in bf16), which is exactly what the matmul of a
  weight-only quantized model computes, up to bf16 rounding of the grid points:
  ``int8`` (absmax per output channel), ``int4-absmax`` (symmetric absmax by blocks of 64, the
  Int4 of QLoRA's Table 2), ``intN`` (round-to-nearest, asymmetric min/max per group of 64,
  GPTQ's grid), ``hqqN`` (the `hqq` package, no calibration),
* **calibrated fake quantization**: ``gptqN`` and ``awqN``, layer by layer on stdlib text
  (:mod:`qlora_lab.model.calibration`).

Embeddings, norms and the (tied) output head stay in 16 bits in every format, as in the
papers and in bitsandbytes.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import torch

from qlora_lab.model.calibration import calibration_windows, decoder_layers, linear_layers, quantize_sequentially
from qlora_lab.model.models import load_model
from qlora_lab.quant.absmax import fake_quantize
from qlora_lab.quant.awq import awq_quantize
from qlora_lab.quant.gptq import gptq_quantize, rtn_quantize
from qlora_lab.quant.llm_int8 import THRESHOLD, to_linear8bitlt
from qlora_lab.quant.nf4 import dequantize_4bit, quantize_4bit

GROUP_SIZE = 64  # QLoRA's blocksize; also the group of every integer format here


@dataclass(frozen=True)
class QuantFormat:
    """One row of the quality table: how weights are stored, at how many bits each."""

    name: str
    kind: str  # "bnb" (bitsandbytes kernels), "weights" (fake quantization), "calibrated"
    bits: float  # bits per weight, scales included (group of 64: 16-bit scale [+ zero] / 64)
    description: str


def _format(name: str, kind: str, bits: float, description: str) -> tuple[str, QuantFormat]:
    return name, QuantFormat(name, kind, bits, description)


# bits: codes + per-group constants (fp32 absmax / 64 = 0.5; DQ: 8/64 + 32/(64*256) = 0.127;
# min/max grid: fp16 scale + fp16 zero per 64 = 0.5; per channel: 32/in_features ~ 0.1)
FORMATS: dict[str, QuantFormat] = dict([
    _format("none", "reference", 16.0, "bf16, the reference"),
    _format("int8", "weights", 8.1, "INT8 absmax per output channel"),
    _format("llm-int8", "bnb", 8.1, "LLM.int8(): INT8 vector-wise, |x| >= 6 features in 16 bits (bitsandbytes)"),
    _format("nf4", "bnb", 4.5, "NF4, blocks of 64 (bitsandbytes)"),
    _format("nf4-dq", "bnb", 4.127, "NF4 + double quantization (QLoRA, bitsandbytes)"),
    _format("fp4", "bnb", 4.5, "FP4, blocks of 64 (bitsandbytes)"),
    _format("int4-absmax", "weights", 4.5, "INT4 absmax (symmetric, 15 levels), blocks of 64: QLoRA Table 2's Int4"),
    *[_format(f"int{b}", "weights", b + 0.5, f"INT{b} round-to-nearest, min/max grid, groups of 64") for b in (4, 3, 2)],
    *[_format(f"gptq{b}", "calibrated", b + 0.5, f"GPTQ {b} bits, groups of 64") for b in (4, 3, 2)],
    *[_format(f"awq{b}", "calibrated", b + 0.5, f"AWQ scaling + RTN {b} bits, groups of 64") for b in (4, 3)],
    *[_format(f"hqq{b}", "weights", b + 0.5, f"HQQ {b} bits, groups of 64 (hqq package)") for b in (4, 3, 2)],
])


def hqq_quantize(weight: torch.Tensor, bits: int = 4, group_size: int = GROUP_SIZE) -> torch.Tensor:
    """HQQ (Badri & Shaji 2023) through the `hqq` package: zero and scale optimised without data."""
    from hqq.core.quantize import Quantizer

    w = weight.detach().float()
    codes, meta = Quantizer.quantize(w, nbits=bits, group_size=group_size, optimize=True, axis=1,
                                     device=str(w.device), compute_dtype=torch.float32)
    return Quantizer.dequantize(codes, meta).reshape(w.shape).to(weight.dtype)


def int4_absmax_quantize(weight: torch.Tensor, blocksize: int = GROUP_SIZE) -> torch.Tensor:
    """Symmetric absmax INT4 by blocks, the codebook way of NF4 and FP4 (`qlora_lab.quant.nf4`)."""
    return dequantize_4bit(*quantize_4bit(weight, quant_type="int4", blocksize=blocksize, double_quant=False))


def weight_quantizer(name: str):
    """The function (weight) -> dequantized weight of a "weights" format."""
    bits = int(name[-1]) if name[-1].isdigit() else 8
    if name == "int4-absmax":
        return int4_absmax_quantize
    if name == "int8":
        return functools.partial(fake_quantize, bits=8, granularity="channel")
    if name.startswith("int"):
        return functools.partial(rtn_quantize, bits=bits, group_size=GROUP_SIZE)
    return functools.partial(hqq_quantize, bits=bits, group_size=GROUP_SIZE)


def calibrated_quantizer(name: str):
    """The function (weight, inputs) -> dequantized weight of a "calibrated" format."""
    method = gptq_quantize if name.startswith("gptq") else awq_quantize
    return functools.partial(method, bits=int(name[-1]), group_size=GROUP_SIZE)


def _check_format(name: str) -> QuantFormat:
    if name not in FORMATS:
        raise ValueError(f"unknown quantization format {name!r}: choose one of {tuple(FORMATS)}")
    return FORMATS[name]


def apply_to_weights(model, quantizer) -> None:
    """Replace every decoder Linear weight by ``quantizer(weight)`` (fake quantization)."""
    with torch.no_grad():
        for block in decoder_layers(model):
            for linear in linear_layers(block).values():
                linear.weight.data = quantizer(linear.weight.data).to(linear.weight.dtype)


def to_llm_int8(model, threshold: float = THRESHOLD) -> None:
    """Swap every decoder Linear for bitsandbytes' ``Linear8bitLt`` (LLM.int8(), inference)."""
    for block in decoder_layers(model):
        for name, linear in linear_layers(block).items():
            parent_name, _, child = name.rpartition(".")
            parent = block.get_submodule(parent_name) if parent_name else block
            setattr(parent, child, to_linear8bitlt(linear, threshold))


def load_quantized(name: str, model: str | Path | None = None, calibration: torch.Tensor | None = None,
                   device: torch.device | str | None = "cpu"):
    """(model, tokenizer) of `model` (default: the embedded one) in format `name`, eval mode.

    Args:
        calibration: token windows for "calibrated" formats; default `calibration_windows`.
        device: where the model runs (None: `load_model`'s default device); CPU by default,
            where every format runs and the quality table was measured.

    Raises:
        ValueError: an unknown format name.
    """
    fmt = _check_format(name)
    if name in ("nf4", "nf4-dq", "fp4"):
        return load_model(model, quantization=name.removesuffix("-dq"), double_quant=name == "nf4-dq",
                          device=device)
    base, tokenizer = load_model(model, quantization="none", device=device)
    if name == "llm-int8":
        to_llm_int8(base)
    elif fmt.kind == "weights":
        apply_to_weights(base, weight_quantizer(name))
    elif fmt.kind == "calibrated":
        windows = calibration if calibration is not None else calibration_windows(tokenizer)
        quantize_sequentially(base, windows, calibrated_quantizer(name))
    return base.eval(), tokenizer
