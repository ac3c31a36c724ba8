"""Peak tensor memory of one training step, itemised (weights, adapters, gradients, optimizer,
activations) by `qlora_lab.hardware.tensor_memory`: what the estimator of
`qlora_lab.sizing.memory.training_memory` predicts, measured on any device.

    report = step_memory(model, optimizer, input_ids)
    report.peak_bytes, report.peak["activations"]
"""

from __future__ import annotations

import torch

from qlora_lab.finetune.config import FinetuneConfig
from qlora_lab.finetune.evaluation import autocast
from qlora_lab.hardware.tensor_memory import TensorMemoryReport, TensorMemoryTracker


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, input_ids: torch.Tensor,
               tracker: TensorMemoryTracker | None = None) -> None:
    """The fine-tune's step: bf16 autocast forward, backward, AdamW step, gradients set to None."""
    with autocast(input_ids.device):
        loss = model(input_ids=input_ids, labels=input_ids).loss
    loss.backward()
    del loss
    if tracker is None:
        optimizer.step()
    else:
        with tracker.phase("optimizer"):
            optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def prime_optimizer(optimizer: torch.optim.Optimizer) -> None:
    """Create the optimizer's states as its first step would, without a forward/backward pass.

    A step on zero gradients: AdamW makes its two moments (and its step counter) and moves no
    weight (the update m / (sqrt(v) + eps) is 0; weight decay, if any, shrinks weights a little).
    """
    params = [p for group in optimizer.param_groups for p in group["params"] if p.requires_grad]
    for p in params:
        p.grad = torch.zeros_like(p)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def step_memory(model: torch.nn.Module, optimizer: torch.optim.Optimizer, input_ids: torch.Tensor,
                prime: bool = True) -> TensorMemoryReport:
    """Account for every live tensor during one training step on `input_ids` (labels = inputs).

    AdamW creates its moments during the first step, so only from the second on do they sit in
    memory through the forward and backward passes: with `prime`, the states are created first
    (`prime_optimizer`) and the step measured is a steady one.
    """
    model.train()
    if prime:
        prime_optimizer(optimizer)
    with TensorMemoryTracker(model, optimizer) as tracker:
        train_step(model, optimizer, input_ids, tracker)
    return tracker.report()


def config_step_memory(config: FinetuneConfig, device: torch.device | str = "cpu") -> TensorMemoryReport:
    """One training step of the fine-tune `config` describes (its mode, model, LoRA settings,
    checkpointing, batch_size x seq_len), accounted for on random token ids.

    The model is loaded and made trainable exactly as `qlora-lab finetune` does: NF4 + DQ base
    for qlora (PEFT upcasts the unquantized weights to fp32), bf16 base for lora, fp32 for full.
    """
    from qlora_lab.finetune.prepare import load_for_mode, make_optimizer, make_trainable, seed_everything

    device = torch.device(device)
    seed_everything(config.seed)
    model, _ = load_for_mode(config, device)
    model.config.use_cache = False
    model = make_trainable(model, config, sharded=False)
    optimizer = make_optimizer([p for p in model.parameters() if p.requires_grad], config, device)
    shape = (config.batch_size, config.seq_len)
    ids = torch.randint(0, model.config.vocab_size, shape, generator=torch.Generator().manual_seed(config.seed))
    return step_memory(model, optimizer, ids.to(device))
