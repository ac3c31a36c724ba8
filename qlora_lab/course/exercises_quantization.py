"""Self-check of the exercises of chapters 01 (fundamentals), 02 (PTQ and QAT) and 03 (NF4).

Each expected value is computed by the same package functions the student calls (seeded,
so the answer is reproducible), on first use; `qlora_lab.course.self_check.verifier`
finds this module by its `exercises_` prefix. The statements are in the notebooks.
"""

from __future__ import annotations

import math

import torch

from qlora_lab.course.images import image_report, load_sample_image
from qlora_lab.course.level_explorer import format_errors, sample_weights
from qlora_lab.course.self_check import Checker, choice, exact, numeric, parts
from qlora_lab.course.widgets import granularity_errors, outlier_weights
from qlora_lab.finetune.lora import lora_params_per_linear
from qlora_lab.quant.absmax import dequantize, quantization_error, quantize
from qlora_lab.quant.nf4 import QUANT_TYPES, normal_map
from qlora_lab.quant.qat import QATLinear, qat_vs_ptq

# Chapter 02's exercises use a smaller experiment than the chapter's, to run in a second.
QAT_EXERCISE = {"hidden": 32, "pretrain_epochs": 20, "finetune_epochs": 8, "seed": 0}
PSNR_TARGET_DB = 40.0


def centred_absmax_over_zeropoint() -> float:
    """01.1: MSE ratio absmax / zero-point at 4 bits on 10 000 seeded N(0, 1) values."""
    x = torch.randn(10_000, generator=torch.Generator().manual_seed(0))
    mse = {s: quantization_error(x, dequantize(quantize(x, bits=4, scheme=s)))["mse"]
           for s in ("absmax", "zeropoint")}
    return mse["absmax"] / mse["zeropoint"]


def fewest_bits_for_psnr(target_db: float = PSNR_TARGET_DB) -> int:
    """01.2: the smallest bit depth at which the sample photo exceeds `target_db` of PSNR."""
    report = image_report(load_sample_image(), tuple(range(1, 9)))
    return min(r.bits for r in report if r.psnr_db > target_db)


def tensor_over_block_error(n_outliers: int) -> float:
    """01.3: per-tensor MSE / per-block MSE (4 bits, blocks of 64) of `outlier_weights`."""
    errors = granularity_errors(outlier_weights(n_outliers=n_outliers), bits=4, blocksize=64)
    return errors["tensor"] / errors["block"]


def qat_gain(bits: int, granularity: str = "tensor") -> float:
    """02.1 and 02.2: what QAT gains over the same extra epochs in float then PTQ (MSE ratio)."""
    result = qat_vs_ptq(bits=bits, granularity=granularity, **QAT_EXERCISE)
    return result.float_more_ptq_mse / result.qat_mse


def qat_trainable(d_in: int = 4096, d_out: int = 4096) -> int:
    """02.3: numbers that receive a gradient in a QAT layer (bias-free): its whole weight."""
    layer = QATLinear(d_in, d_out, bias=False)
    return sum(p.numel() for p in layer.parameters() if p.requires_grad)


def best_and_worst_format(df: float = 3.0, blocksize: int = 64) -> tuple[str, str]:
    """03.2: the 4-bit formats with the smallest and the largest MSE on Student-t weights."""
    errors = format_errors(sample_weights(df), blocksize)
    ranked = sorted(QUANT_TYPES, key=lambda q: errors[q]["mse"])
    return ranked[0], ranked[-1]


def int4_over_nf4(blocksize: int) -> float:
    """03.3: INT4 MSE / NF4 MSE on 65 536 seeded normal weights, for a block size."""
    errors = format_errors(sample_weights(math.inf), blocksize)
    return errors["int4"]["mse"] / errors["nf4"]["mse"]


EXERCISES: dict[str, Checker] = {
    "01.1": numeric(centred_absmax_over_zeropoint, rtol=0.02),
    "01.2": exact(fewest_bits_for_psnr),
    "01.3": parts({"avec": numeric(lambda: tensor_over_block_error(8)),
                   "sans": numeric(lambda: tensor_over_block_error(0))}),
    "02.1": parts({4: numeric(lambda: qat_gain(4)), 8: numeric(lambda: qat_gain(8))}),
    "02.2": numeric(lambda: qat_gain(4, "channel")),
    "02.3": parts({"qlora": exact(lambda: lora_params_per_linear(4096, 4096, 16)),
                   "qat": exact(qat_trainable)}),
    "03.1": parts({"niveaux": exact(lambda: len(normal_map(use_extra_value=False))),
                   "positifs": exact(lambda: int((normal_map(use_extra_value=False) > 0).sum()))}),
    "03.2": parts({"meilleur": choice(lambda: best_and_worst_format()[0], QUANT_TYPES),
                   "pire": choice(lambda: best_and_worst_format()[1], QUANT_TYPES)}),
    "03.3": parts({32: numeric(lambda: int4_over_nf4(32)), 1024: numeric(lambda: int4_over_nf4(1024))}),
}
