"""Self-check of chapter 04's exercises (double quantization: bits per weight, model sizes).

Expected values come from `qlora_lab.quant.double_quant` and from bitsandbytes itself, on
first use; `qlora_lab.course.self_check.verifier` finds this module by its prefix.
"""

from __future__ import annotations

import math

import torch

from qlora_lab.course.self_check import Checker, exact, numeric, parts
from qlora_lab.quant.double_quant import bits_per_param

BLOCKSIZES = (8, 16, 32, 64, 128, 256)
GPU_GIB = 24


def blocksize_costing_like_64_without_dq() -> int:
    """04.1: the block size whose NF4 + DQ cost is closest to NF4 without DQ at blocks of 64."""
    target = bits_per_param(64, double_quant=False)
    return min(BLOCKSIZES, key=lambda b: abs(bits_per_param(b, double_quant=True) - target))


def measured_bits_without_dq() -> float:
    """04.2: bits per weight (codes + absmax) of a 320 × 896 matrix that bitsandbytes quantizes without DQ."""
    from qlora_lab.backends import import_bnb

    w = torch.randn(896, 320, generator=torch.Generator().manual_seed(0)) * 0.02
    packed, state = import_bnb().functional.quantize_4bit(w, blocksize=64, quant_type="nf4",
                                                          compress_statistics=False)
    nbytes = packed.numel() * packed.element_size() + state.absmax.numel() * state.absmax.element_size()
    return 8 * nbytes / w.numel()


def largest_model_billions(double_quant: bool, gib: float = GPU_GIB) -> int:
    """04.3: the largest whole number of billions of weights that fit in `gib` GiB in NF4 (± DQ)."""
    return math.floor(gib * 2**30 * 8 / bits_per_param(64, double_quant=double_quant) / 1e9)


EXERCISES: dict[str, Checker] = {
    "04.1": parts({32: numeric(lambda: bits_per_param(32, double_quant=True), rtol=1e-4),
                   128: numeric(lambda: bits_per_param(128, double_quant=True), rtol=1e-4),
                   "même coût": exact(blocksize_costing_like_64_without_dq)}),
    "04.2": numeric(measured_bits_without_dq, rtol=1e-3),
    "04.3": parts({"NF4 + DQ": exact(lambda: largest_model_billions(True)),
                   "NF4": exact(lambda: largest_model_billions(False))}),
}
