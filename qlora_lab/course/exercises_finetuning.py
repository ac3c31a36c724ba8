"""Self-check of chapter 8's exercises (the learning-rate schedule, LoRA's rank, the held-out split).

Every expected value is cheap and computed from the package, never from a new fine-tune:
the recipe `FinetuneConfig.for_data("functions")` fed to the scheduler the training loop
builds (08.1), LoRA's closed-form parameter count on the embedded model's shapes (08.2), and
the task generator's families and SHA-256 split (08.3).
"""

from __future__ import annotations

import json

from qlora_lab.course.self_check import Checker, exact, numeric, parts
from qlora_lab.finetune.config import FinetuneConfig
from qlora_lab.finetune.functions_tasks import HELDOUT_FAMILIES, HELDOUT_SHARE, TRAIN_FAMILIES
from qlora_lab.finetune.lora import lora_params_for_shape
from qlora_lab.paths import EMBEDDED_MODEL_DIR

DATA = "functions"  # the chapter's recipe
HALF_STEPS = 150  # 08.1: half of the recipe's 300 steps
RANKS = (4, 32)  # 08.2: a quarter and twice the recipe's rank 16


def learning_rate_at(step: int, max_steps: int | None = None) -> float:
    """08.1: the rate of optimizer step `step` (1-based, as in the metrics rows) of the recipe.

    Built with the same `transformers.get_scheduler` call as the training loop, on a dummy
    parameter: the loop logs the rate *before* `scheduler.step()`, i.e. index `step - 1`.
    """
    import torch
    from transformers import get_scheduler

    overrides = {} if max_steps is None else {"max_steps": max_steps}
    config = FinetuneConfig.for_data(DATA, **overrides)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=config.learning_rate)
    scheduler = get_scheduler(config.lr_schedule, optimizer, num_warmup_steps=min(config.warmup_steps, config.max_steps),
                              num_training_steps=config.max_steps)
    for _ in range(step - 1):
        optimizer.step()
        scheduler.step()
    return scheduler.get_last_lr()[0]


def lora_params_at_rank(r: int) -> int:
    """08.2: LoRA parameters at rank `r` on the recipe's target layers of the embedded model."""
    shape = json.loads((EMBEDDED_MODEL_DIR / "config.json").read_text(encoding="utf-8"))
    config = FinetuneConfig.for_data(DATA)
    return lora_params_for_shape(shape["hidden_size"], shape["intermediate_size"], shape["num_hidden_layers"],
                                 shape["num_attention_heads"], shape["num_key_value_heads"], r=r,
                                 target_modules=config.target_modules)


EXERCISES: dict[str, Checker] = {
    "08.1": parts({"lr_pas_150_sur_300": numeric(lambda: learning_rate_at(HALF_STEPS), rtol=1e-3),
                   "lr_pas_150_sur_150": numeric(lambda: learning_rate_at(HALF_STEPS, HALF_STEPS), rtol=1e-3)}),
    "08.2": parts({f"r{r}": exact(lambda r=r: lora_params_at_rank(r)) for r in RANKS}),
    "08.3": parts({"familles_entrainees": exact(lambda: len(TRAIN_FAMILIES)),
                   "familles_reservees": exact(lambda: len(HELDOUT_FAMILIES)),
                   "part_evaluation": numeric(lambda: 1 / HELDOUT_SHARE, rtol=0.1, partial_rtol=0.5)}),
}
