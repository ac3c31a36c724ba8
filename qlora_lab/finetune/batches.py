"""Which examples each optimizer step sees, and how many steps a run has.

Batches are a pure function of the step number, so a resumed run sees exactly the
batches it would have seen, and N processes split the same global batch.
"""

from __future__ import annotations

import math

import torch

from qlora_lab.finetune.config import FinetuneConfig
from qlora_lab.finetune.data import Example, collate
from qlora_lab.finetune.parallel import rank_slice


def total_steps(config: FinetuneConfig, n_train: int, world_size: int = 1) -> int:
    """Optimizer steps of the run: `max_steps`, or `epochs` over the training examples."""
    if config.max_steps > 0:
        return config.max_steps
    per_step = config.batch_size * world_size * config.gradient_accumulation
    return max(1, math.ceil(config.epochs * n_train / per_step))


def batch_indices(n_train: int, batch_size: int, micro_step: int, seed: int) -> list[int]:
    """Examples of micro-batch `micro_step`: a fresh seeded shuffle each epoch."""
    per_epoch = max(1, n_train // batch_size)
    epoch, index = divmod(micro_step, per_epoch)
    order = torch.randperm(n_train, generator=torch.Generator().manual_seed(seed + epoch))
    return order[index * batch_size : (index + 1) * batch_size].tolist()


def micro_batch(train: list[Example], config: FinetuneConfig, micro_step: int, rank: int, world: int,
                pad_id: int, device: torch.device) -> tuple[list[int], dict[str, torch.Tensor]]:
    """This process's share of one global micro-batch: (example indices, tensors on `device`)."""
    everyone = batch_indices(len(train), config.batch_size * world, micro_step, config.seed)
    idx = rank_slice(everyone, rank, world)
    return idx, {k: v.to(device) for k, v in collate([train[i] for i in idx], pad_id).items()}
