"""Self-check of chapter 10's exercises (longest sequence per GPU, monitor alerts, PEFT's count).

Expected values come from the memory calculator, the training monitor and the LoRA
formula on the embedded model's shape, on first use.
"""

from __future__ import annotations

import math

from qlora_lab.course.calculators import embedded_shape, memory_per_device, smallest_gpu_gib
from qlora_lab.course.monitoring import TrainingMonitor
from qlora_lab.course.self_check import Checker, exact, parts
from qlora_lab.finetune.lora import LLAMA_ALL_LINEAR, lora_params_for_shape

GPU_GIB = (8, 24)
SEQ_LENS = tuple(2**k for k in range(7, 15))  # 128 … 16 384 tokens
LOSSES = (3.2, 2.9, 2.7, 3.5, 2.6, 3.3, math.nan)


def longest_sequence(gib: int) -> int:
    """10.1: the longest power-of-two sequence whose CodeLlama-7B QLoRA run (batch 1) fits a `gib` card."""
    fitting = [s for s in SEQ_LENS
               if (g := smallest_gpu_gib(memory_per_device("7B", "qlora", s).total)) is not None and g <= gib]
    return max(fitting, default=0)


def alert_steps(losses: tuple[float, ...] = LOSSES) -> list[int]:
    """10.2: the steps (numbered from 1) at which TrainingMonitor raises an alert."""
    monitor = TrainingMonitor()
    for step, loss in enumerate(losses, start=1):
        monitor.record(step, loss)
    return sorted({int(alert.split()[1]) for alert in monitor.alerts()})


def trainable_all_linear(r: int = 8) -> int:
    """10.3: LoRA parameters of the embedded model, rank r on every linear layer of the blocks."""
    s = embedded_shape()
    return lora_params_for_shape(s.hidden, s.intermediate, s.n_layers, s.n_heads, s.n_kv_heads, r=r,
                                 target_modules=LLAMA_ALL_LINEAR)


EXERCISES: dict[str, Checker] = {
    "10.1": parts({g: exact(lambda g=g: longest_sequence(g)) for g in GPU_GIB}),
    "10.2": exact(alert_steps),
    "10.3": exact(trainable_all_linear),
}
