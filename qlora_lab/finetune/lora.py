"""LoRA in a few lines: the maths, the parameter counts, and a tiny layer equal to PEFT's.

LoRA (Hu et al. 2021) freezes a weight W (d_out × d_in) and learns a low-rank update:
    y = W x + (alpha / r) · B A x      A: (r × d_in), B: (d_out × r), B = 0 at the start
so a layer trains r·(d_in + d_out) numbers instead of d_in·d_out. QLoRA keeps W in NF4
and A, B in 16 or 32 bits (Dettmers et al. 2023, §3).

    from qlora_lab.finetune.lora import LoRALinear, lora_params_for_shape
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

from qlora_lab.model.llama_shapes import LLAMA_ALL_LINEAR, llama_linear_shapes

def lora_params_per_linear(d_in: int, d_out: int, r: int) -> int:
    """Trainable numbers of one LoRA adapter: A (r × d_in) + B (d_out × r)."""
    if r <= 0:
        raise ValueError(f"r must be a positive rank, got r={r}")
    return r * (d_in + d_out)


def lora_params_for_shape(
    hidden: int, intermediate: int, n_layers: int, n_heads: int, n_kv_heads: int | None = None,
    r: int = 16, target_modules: Iterable[str] = LLAMA_ALL_LINEAR,
) -> int:
    """LoRA parameters of a whole Llama-shaped model for rank `r` on `target_modules`.

    Raises:
        ValueError: a target module is not one of the Llama linear layers.
    """
    shapes = llama_linear_shapes(hidden, intermediate, n_heads, n_kv_heads or n_heads)
    targets = list(target_modules)
    unknown = [t for t in targets if t not in shapes]
    if unknown:
        raise ValueError(f"target_modules {unknown} are not Llama linear layers {tuple(shapes)}")
    return n_layers * sum(lora_params_per_linear(*shapes[t], r) for t in targets)


def lora_params_of_model(model: nn.Module, r: int, target_modules: Iterable[str]) -> int:
    """LoRA parameters PEFT would add to `model`: every nn.Linear whose name ends in a target."""
    targets = tuple(target_modules)
    total = 0
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and name.split(".")[-1] in targets:
            total += lora_params_per_linear(module.in_features, module.out_features, r)
    return total


class LoRALinear(nn.Module):
    """A frozen nn.Linear plus a trainable low-rank update, initialised like PEFT.

    A gets Kaiming-uniform(a=√5) (nn.Linear's own init), B gets zeros: at step 0 the
    adapted layer computes exactly what the base layer computes.
    """

    def __init__(self, base: nn.Linear, r: int = 8, alpha: float = 16.0) -> None:
        super().__init__()
        if r <= 0:
            raise ValueError(f"r must be a positive rank, got r={r}")
        self.base = base
        self.base.weight.requires_grad_(False)
        if self.base.bias is not None:
            self.base.bias.requires_grad_(False)
        self.r = r
        self.scaling = alpha / r  # PEFT: lora_alpha / r
        self.lora_A = nn.Parameter(torch.empty(r, base.in_features))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, r))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (…, d_in) -> (…, r) -> (…, d_out): never builds the d_out × d_in product B·A.
        return self.base(x) + (x @ self.lora_A.T @ self.lora_B.T) * self.scaling

    def merged_weight(self) -> torch.Tensor:
        """W + (alpha/r)·B·A: the single matrix to ship after training (no extra latency)."""
        return self.base.weight + self.scaling * (self.lora_B @ self.lora_A)


def copy_from_peft(ours: LoRALinear, peft_layer: nn.Module, adapter: str = "default") -> None:
    """Load a PEFT `lora.Linear`'s A and B into our layer (to prove both compute the same)."""
    with torch.no_grad():
        ours.lora_A.copy_(peft_layer.lora_A[adapter].weight)
        ours.lora_B.copy_(peft_layer.lora_B[adapter].weight)
    ours.scaling = float(peft_layer.scaling[adapter])


def trainable_fraction(model: nn.Module) -> tuple[int, int, float]:
    """(trainable, total, trainable/total) parameters of `model`."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total, trainable / max(total, 1)
