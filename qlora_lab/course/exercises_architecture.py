"""Self-check of chapter 07's exercises (LoRA's rank, QLoRA's memory, LoRA's dropout).

Expected values come from `qlora_lab.finetune.lora`, the memory estimator and PEFT, on
first use; `qlora_lab.course.self_check.verifier` finds this module by its prefix.
"""

from __future__ import annotations

import torch
from torch import nn

from qlora_lab.course.self_check import Checker, choice, exact, numeric, parts
from qlora_lab.finetune.lora import LLAMA_ALL_LINEAR, LoRALinear, copy_from_peft, lora_params_for_shape
from qlora_lab.sizing.memory import CODELLAMA, training_memory

SHARE = 0.01
SEQ_LENS = (512, 4096)
DROPOUT = 0.1


def rank_for_share(size: str = "13B", share: float = SHARE) -> int:
    """07.1: the smallest rank r whose all-linear adapters reach `share` of CodeLlama-`size`."""
    shape = CODELLAMA[size]
    r = 1
    while lora_params_for_shape(shape.hidden, shape.intermediate, shape.n_layers, shape.n_heads,
                                shape.n_kv_heads, r=r, target_modules=LLAMA_ALL_LINEAR) < share * shape.n_params:
        r += 1
    return r


def qlora_gib(seq_len: int, checkpointing: bool) -> float:
    """07.2: QLoRA training memory of CodeLlama-7B (GiB), batch 1, r = 16, all linear layers."""
    return training_memory(CODELLAMA["7B"], "qlora", seq_len=seq_len,
                           gradient_checkpointing=checkpointing).total / 2**30


def _peft_layer_with_dropout():
    """A PEFT LoRA layer (r = 8, lora_dropout = DROPOUT) with a non-zero B, and an input."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    model = get_peft_model(nn.Sequential(nn.Linear(64, 48)),
                           LoraConfig(r=8, lora_alpha=16, lora_dropout=DROPOUT, target_modules=["0"]))
    with torch.no_grad():
        model.base_model.model[0].lora_B["default"].weight.normal_()
    return model, torch.randn(4, 64)


def eval_gap() -> float:
    """07.3: in eval mode dropout is the identity: PEFT with dropout = our LoRALinear without it."""
    model, x = _peft_layer_with_dropout()
    layer = model.base_model.model[0]
    ours = LoRALinear(nn.Linear(64, 48), r=8, alpha=16)
    ours.base.load_state_dict(layer.base_layer.state_dict())
    copy_from_peft(ours, layer)
    model.eval()
    with torch.no_grad():
        return float((ours(x) - model(x)).abs().max())


def train_calls_identical() -> str:
    """07.3: in train mode, do two calls on the same input give the same output? ('oui'/'non')."""
    model, x = _peft_layer_with_dropout()
    model.train()
    with torch.no_grad():
        return "oui" if torch.equal(model(x), model(x)) else "non"


EXERCISES: dict[str, Checker] = {
    "07.1": exact(rank_for_share),
    "07.2": parts({f"{'avec' if c else 'sans'} {s}": numeric(lambda s=s, c=c: qlora_gib(s, c), rtol=0.01)
                   for s in SEQ_LENS for c in (True, False)}),
    "07.3": parts({"eval": numeric(eval_gap, atol=1e-5), "train identiques": choice(train_calls_identical, ("oui", "non"))}),
}
