"""Self-check of chapter 00's exercises (first contact with NF4 through bitsandbytes).

Each expected value is computed with bitsandbytes on seeded weights shaped like the
chapter's (1024 × 1024, std 0.02), on first use; `qlora_lab.course.self_check.verifier`
finds this module by its `exercises_` prefix. The statements are in the notebook.
"""

from __future__ import annotations

from functools import lru_cache

import torch

from qlora_lab.course.self_check import Checker, numeric, parts

SHAPE = (1024, 1024)  # the chapter's matrix: the student's answer comes from the same shape
WEIGHT_STD = 0.02


@lru_cache(maxsize=None)
def relative_error(quant_type: str = "nf4", blocksize: int = 64) -> float:
    """‖dequantize(quantize(w)) − w‖ / ‖w‖ for seeded N(0, 0.02²) weights, on the CPU."""
    from qlora_lab.backends import import_bnb

    bnb = import_bnb()
    w = torch.randn(*SHAPE, generator=torch.Generator().manual_seed(0)) * WEIGHT_STD
    packed, state = bnb.functional.quantize_4bit(w, blocksize=blocksize, quant_type=quant_type,
                                                 compress_statistics=True)
    restored = bnb.functional.dequantize_4bit(packed, state).reshape(w.shape)
    return float((restored - w).norm() / w.norm())


def packed_kib() -> float:
    """00.1: KiB of the packed 4-bit codes of the chapter's 1024 × 1024 weights."""
    from qlora_lab.backends import import_bnb

    packed, _ = import_bnb().functional.quantize_4bit(torch.zeros(*SHAPE), blocksize=64, quant_type="nf4")
    return packed.numel() * packed.element_size() / 1024


EXERCISES: dict[str, Checker] = {
    "00.1": numeric(packed_kib, rtol=1e-6),
    "00.2": numeric(lambda: relative_error("fp4") / relative_error("nf4"), rtol=0.03),
    "00.3": parts({256: numeric(lambda: relative_error("nf4", 256), rtol=0.03),
                   1024: numeric(lambda: relative_error("nf4", 1024), rtol=0.03)}),
}
