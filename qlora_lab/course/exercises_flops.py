"""Self-check of chapter 06's exercises (attention vs weights, weight memory, arithmetic intensity).

Expected values come from `qlora_lab.sizing` (the embedded model's shape on the meta
device, the memory estimator, the matmul's byte count), on first use.
"""

from __future__ import annotations

import torch

from qlora_lab.course.self_check import Checker, exact, numeric, parts
from qlora_lab.sizing import flops, memory

SIZES = ("13B", "34B", "70B")
GPU_GIB = 24
MATRIX_SIZES = (512, 4096)


def attention_overtakes_weights() -> int:
    """06.1: the smallest T at which the counted attention term 4·L·T·d exceeds 2N (embedded model)."""
    from transformers import AutoConfig, LlamaForCausalLM

    from qlora_lab.paths import EMBEDDED_MODEL_DIR

    config = AutoConfig.from_pretrained(EMBEDDED_MODEL_DIR)
    with torch.device("meta"):
        n = flops.matmul_params(LlamaForCausalLM(config))
    return 2 * n // (4 * config.num_hidden_layers * config.hidden_size) + 1


def formats_that_fit(size: str, gib: float = GPU_GIB) -> int:
    """06.2: how many of the chapter's six weight formats hold CodeLlama-`size` in `gib` GiB."""
    formats = ("fp32", "fp16", "int8", "nf4", "nf4-dq", "q4_0")
    return sum(memory.weight_bytes(memory.CODELLAMA[size], f) <= gib * 2**30 for f in formats)


def decoding_intensity(n: int) -> float:
    """06.3: FLOP per byte of an fp32 (1 × n)·(n × n) product (counted by flops.MatmulTiming)."""
    return flops.MatmulTiming(1, n, n, "float32", "cpu", 1.0).arithmetic_intensity


def fp32_limit() -> float:
    """06.3: 2 FLOPs per weight read, over the bytes of one fp32 weight."""
    return 2 / torch.empty(0, dtype=torch.float32).element_size()


EXERCISES: dict[str, Checker] = {
    "06.1": exact(attention_overtakes_weights),
    "06.2": parts({s: exact(lambda s=s: formats_that_fit(s)) for s in SIZES}),
    "06.3": parts({**{n: numeric(lambda n=n: decoding_intensity(n), rtol=0.005) for n in MATRIX_SIZES},
                   "limite": numeric(fp32_limit, rtol=0.005)}),
}
