"""Validation loss of a fine-tune on its held-out examples, weighted per target token."""

from __future__ import annotations

import torch

from qlora_lab.finetune.data import Example, collate
from qlora_lab.hardware.device import default_compute_dtype


def autocast(device: torch.device):
    """bf16 autocast (CPU and recent GPUs): the dtype QLoRA's compute runs in."""
    return torch.autocast(device.type, dtype=default_compute_dtype(device))


def validation_loss(model, examples: list[Example], pad_id: int, batch_size: int = 8, accelerator=None) -> float:
    """Mean loss (nats per target token) on `examples`, in eval mode, without gradients.

    With an `accelerator` of N processes, `examples` is this process's shard: the token-weighted
    sums are added over the processes, so every process returns the loss of all the shards.
    """
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        with torch.no_grad(), autocast(device):
            for start in range(0, len(examples), batch_size):
                batch = {k: v.to(device) for k, v in collate(examples[start : start + batch_size], pad_id).items()}
                n = int((batch["labels"][:, 1:] != -100).sum())
                total += float(model(**batch).loss) * n
                count += n
    finally:
        model.train(was_training)
    if accelerator is not None and accelerator.num_processes > 1:
        total, count = accelerator.reduce(torch.tensor([total, float(count)], dtype=torch.float64, device=device),
                                          reduction="sum").tolist()
    return total / count
