"""Peak tensor memory of one training step, itemised (weights, adapters, gradients, optimizer,
activations) by `qlora_lab.hardware.tensor_memory`: what the estimator of
`qlora_lab.sizing.memory.training_memory` predicts, measured on any device.

    report = step_memory(model, optimizer, input_ids)
    report.peak_bytes, report.peak["activations"]
"""

from __future__ import annotations

import torch

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


def step_memory(model: torch.nn.Module, optimizer: torch.optim.Optimizer, input_ids: torch.Tensor,
                warmup: int = 1) -> TensorMemoryReport:
    """Account for every live tensor during one training step on `input_ids` (labels = inputs).

    `warmup` steps run first, unmeasured: AdamW creates its moments during the first step, so
    only from the second on do they sit in memory through the forward and backward passes.
    """
    model.train()
    for _ in range(warmup):
        train_step(model, optimizer, input_ids)
    with TensorMemoryTracker(model, optimizer) as tracker:
        train_step(model, optimizer, input_ids, tracker)
    return tracker.report()


def mode_step_memory(model_dir: str, mode: str, seq_len: int = 512, batch: int = 1, lora_r: int = 16,
                     device: torch.device | str = "cpu", seed: int = 0) -> TensorMemoryReport:
    """One training step of the package's own fine-tune setup for `mode`, accounted for.

    The model is loaded and made trainable exactly as `qlora-lab finetune` does (NF4 + DQ base
    for qlora, bf16 base for lora, fp32 for full; all linear layers adapted, r = `lora_r`,
    alpha = 2r, gradient checkpointing), on random token ids.
    """
    from qlora_lab.finetune.config import FinetuneConfig
    from qlora_lab.finetune.prepare import load_for_mode, make_optimizer, make_trainable, seed_everything

    device = torch.device(device)
    config = FinetuneConfig(mode=mode, model=str(model_dir), lora_r=lora_r, lora_alpha=2 * lora_r,
                            gradient_checkpointing=True, seq_len=seq_len, batch_size=batch, seed=seed)
    seed_everything(seed)
    model, _ = load_for_mode(config, device)
    model.config.use_cache = False
    model = make_trainable(model, config, sharded=False)
    optimizer = make_optimizer([p for p in model.parameters() if p.requires_grad], config, device)
    ids = torch.randint(0, model.config.vocab_size, (batch, seq_len), generator=torch.Generator().manual_seed(seed))
    return step_memory(model, optimizer, ids.to(device))
