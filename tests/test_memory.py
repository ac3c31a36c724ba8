"""The memory estimator: weight formats, training breakdown, and measured activations."""

import pytest
import torch

from qlora_lab import memory
from qlora_lab.memory import CODELLAMA, ModelShape


@pytest.mark.parametrize("size, billions", [("7B", 6.74), ("13B", 13.02), ("34B", 33.74), ("70B", 68.98)])
def test_codellama_shapes_have_their_parameter_counts(size, billions):
    assert CODELLAMA[size].n_params / 1e9 == pytest.approx(billions, rel=0.005)


@pytest.mark.parametrize("size", list(CODELLAMA))
def test_nf4_dq_weights_are_4_127_bits_plus_16_bit_rest(size):
    shape = CODELLAMA[size]
    expected = shape.linear_params() * 4.127 / 8 + 2 * shape.other_params()
    assert memory.weight_bytes(shape, "nf4-dq") == pytest.approx(expected, rel=1e-4)


@pytest.mark.parametrize("fmt, bits", [("fp32", 32), ("fp16", 16), ("bf16", 16), ("int8", 8), ("nf4", 4.5),
                                       ("nf4-dq", 4.127), ("q4_0", 4.5)])
def test_bits_per_linear_weight(fmt, bits):
    assert memory.bits_per_linear_weight(fmt) == pytest.approx(bits, abs=1e-3)


def test_formats_are_ordered_by_size():
    shape = CODELLAMA["7B"]
    sizes = [memory.weight_bytes(shape, f) for f in ("fp32", "fp16", "int8", "nf4", "nf4-dq")]
    assert sizes == sorted(sizes, reverse=True)
    assert memory.weight_bytes(shape, "fp16") / 1e9 == pytest.approx(13.5, rel=0.01)


def test_unknown_format_and_method_are_clear_errors():
    with pytest.raises(ValueError, match="fmt="):
        memory.bits_per_linear_weight("int3")
    with pytest.raises(ValueError, match="method="):
        memory.training_memory(CODELLAMA["7B"], "prefix-tuning")


def test_full_fine_tuning_of_65b_needs_more_than_780_gb():
    llama_65b = ModelShape("LLaMA-65B", 8192, 22016, 80, 64, 64, 32000)
    full = memory.training_memory(llama_65b, "full", seq_len=512, gradient_checkpointing=True)
    assert (full.weights + full.gradients + full.optimizer) / 1e9 == pytest.approx(780, rel=0.02)  # QLoRA paper, intro


@pytest.mark.parametrize("size", ["7B", "13B"])
def test_qlora_needs_less_than_lora_less_than_full(size):
    totals = [memory.training_memory(CODELLAMA[size], m, seq_len=512).total for m in ("qlora", "lora", "full")]
    assert totals == sorted(totals)


def test_7b_qlora_at_512_tokens_fits_in_8_gb_but_not_at_4096_tokens_without_checkpointing():
    shape = CODELLAMA["7B"]
    short = memory.training_memory(shape, "qlora", seq_len=512, gradient_checkpointing=True)
    long = memory.training_memory(shape, "qlora", seq_len=4096, gradient_checkpointing=False)
    assert memory.smallest_gpu_that_fits(short.total) == 8
    assert long.total > 16e9


def test_gradient_checkpointing_cuts_activations():
    shape = CODELLAMA["7B"]
    plain = memory.activation_bytes(shape, 1024, gradient_checkpointing=False)
    ckpt = memory.activation_bytes(shape, 1024, gradient_checkpointing=True)
    assert ckpt < plain / 5


@pytest.mark.parametrize("seq_len", [64, 128])
@pytest.mark.parametrize("hidden, layers", [(128, 2), (256, 3)])
@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_activation_formula_matches_saved_tensors(seq_len, hidden, layers, attention):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=1000, hidden_size=hidden, intermediate_size=(8 * hidden) // 3,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=4)
    model = LlamaForCausalLM(config).to(torch.bfloat16).train()
    model.set_attn_implementation(attention)
    ids = torch.randint(0, 1000, (1, seq_len))
    measured = memory.measure_saved_activation_bytes(model, ids)
    estimated = memory.activation_bytes(ModelShape.from_config(config), seq_len, attention=attention)
    assert estimated == pytest.approx(measured, rel=0.10)


def test_from_config_reads_a_llama_config():
    from transformers import LlamaConfig

    shape = ModelShape.from_config(LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64,
                                               num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2))
    assert (shape.hidden, shape.n_kv_heads, shape.vocab) == (32, 2, 100)


def test_available_memory_on_cpu_is_positive_and_below_total():
    import psutil

    free = memory.available_memory_bytes("cpu")
    assert 0 < free <= psutil.virtual_memory().total
