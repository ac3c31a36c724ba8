"""Self-check of chapter 09: each checker against an independent computation."""

import json

from qlora_lab.course.self_check import verifier
from qlora_lab.paths import BENCHMARK_RESULTS_DIR
from qlora_lab.sizing import memory, multi_gpu


def test_09_1_reads_the_measured_1b_peaks():
    modes = json.loads((BENCHMARK_RESULTS_DIR / "memory_scale_cpu.json").read_text())["modes"]
    saving = 1 - modes["qlora"]["measured_peak_bytes"] / modes["lora"]["measured_peak_bytes"]
    assert 0 < saving < 0.75  # activations and fp32 embeddings keep QLoRA above the weights-only -74 %
    assert verifier("09.1", saving).juste
    assert verifier("09.1", 0.75).status != "juste"  # the guide's figure is not the measured one


def _longest_power_of_two(checkpointing: bool) -> int:
    """Doubling from 128 tokens while the estimate of CodeLlama-13B QLoRA stays within 16 GiB."""
    n = 128
    while n < 8192 and memory.training_memory(memory.CODELLAMA["13B"], "qlora", seq_len=2 * n,
                                              gradient_checkpointing=checkpointing).total <= 16 * 2**30:
        n *= 2
    return n


def test_09_2_longest_sequence_on_16_gib():
    avec, sans = _longest_power_of_two(True), _longest_power_of_two(False)
    assert sans < avec  # checkpointing frees activations
    assert verifier("09.2", {"avec": avec, "sans": sans}).juste
    assert verifier("09.2", {"avec": avec, "sans": avec}).status == "partiel"


def test_09_3_fsdp_cards_for_70b():
    def fewest(gib):  # smallest N whose per-GPU estimate plus the headroom (GiB) fits a card of `gib` GiB
        return next(n for n in range(1, 65) if multi_gpu.per_device_memory(
            memory.CODELLAMA["70B"], "qlora", "fsdp", n).total + multi_gpu.RUNTIME_HEADROOM_GIB * 2**30 <= gib * 2**30)

    answer = {16: fewest(16), 40: fewest(40)}
    assert answer[16] > answer[40] >= 1
    assert verifier("09.3", answer).juste
    assert verifier("09.3", {16: answer[16], 40: answer[40] + 1}).status == "partiel"


def test_an_empty_answer_asks_for_one():
    assert verifier("09.1", None).status == "vide"
    assert verifier("09.2", {"avec": None, "sans": None}).status == "vide"
