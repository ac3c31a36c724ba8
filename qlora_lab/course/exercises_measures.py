"""Self-check of chapter 09's exercises (measured memory at 1.1B, longest sequence, FSDP cards).

Expected values come from the committed 1.1B measurement (`benchmarks/results/memory_scale_cpu.json`,
read by `qlora_lab.course.benchmark_results`) and from the estimators of `qlora_lab.sizing`,
on first use; none is a literal.
"""

from __future__ import annotations

from qlora_lab.course import benchmark_results
from qlora_lab.course.calculators import SEQ_LENS
from qlora_lab.course.self_check import Checker, exact, numeric, parts
from qlora_lab.sizing import memory, multi_gpu

MEMORY_SCALE_FILE = "memory_scale_cpu.json"
GPU_GIB = 16  # 09.2: a card sold as "16 GB" holds 16 GiB (2³⁰ bytes)
CARD_SIZES_GIB = (16, 40)  # 09.3


def measured_saving() -> float:
    """09.1: 1 - QLoRA peak / LoRA bf16 peak, both measured tensor by tensor on the 1.1B Llama."""
    modes = benchmark_results.load_results()[MEMORY_SCALE_FILE]["modes"]
    return 1 - modes["qlora"]["measured_peak_bytes"] / modes["lora"]["measured_peak_bytes"]


def longest_sequence(gradient_checkpointing: bool, size: str = "13B", gpu_gib: float = GPU_GIB) -> int | None:
    """09.2: the longest of `SEQ_LENS` whose estimated QLoRA training of CodeLlama-`size` fits in `gpu_gib`."""
    fitting = [n for n in SEQ_LENS if memory.training_memory(
        memory.CODELLAMA[size], "qlora", seq_len=n, batch=1,
        gradient_checkpointing=gradient_checkpointing).total <= gpu_gib * memory.GIB]
    return max(fitting) if fitting else None


def fsdp_cards(gpu_gib: float, size: str = "70B") -> int | None:
    """09.3: the fewest `gpu_gib` GiB cards that hold CodeLlama-`size` in FSDP-QLoRA (default headroom)."""
    return multi_gpu.devices_needed(memory.CODELLAMA[size], "qlora", "fsdp", gpu_gib)


EXERCISES: dict[str, Checker] = {
    "09.1": numeric(measured_saving, rtol=0.02),
    "09.2": parts({"avec": exact(lambda: longest_sequence(True)),
                   "sans": exact(lambda: longest_sequence(False))}),
    "09.3": parts({g: exact(lambda g=g: fsdp_cards(g)) for g in CARD_SIZES_GIB}),
}
