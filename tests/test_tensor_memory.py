"""Tensor accounting against hand counts: a Linear's weights, gradients and Adam states, a matmul's
output, a freed temporary, a 4-bit layer's codes and constants, a LoRA step's items."""

import pytest
import torch

from qlora_lab.finetune.step_memory import step_memory
from qlora_lab.hardware.tensor_memory import CATEGORIES, TensorMemoryTracker

IN, OUT, BATCH = 64, 32, 8
FP32 = 4
LINEAR_BYTES = FP32 * (IN * OUT + OUT)  # weight + bias


@pytest.fixture
def linear():
    torch.manual_seed(0)
    return torch.nn.Linear(IN, OUT)


def test_a_matmul_output_is_an_activation_and_the_weights_are_weights(linear):
    x = torch.randn(BATCH, IN)  # made before: not counted
    with TensorMemoryTracker(linear) as tracker:
        y = linear(x)
    report = tracker.report()
    assert report.final == dict.fromkeys(CATEGORIES, 0) | {"weights": LINEAR_BYTES, "activations": FP32 * BATCH * OUT}
    assert report.weights_by_dtype == {"float32": LINEAR_BYTES}
    assert y.shape == (BATCH, OUT)


def test_gradients_then_adam_states_are_two_moments_per_parameter(linear):
    optimizer = torch.optim.Adam(linear.parameters())
    x = torch.randn(BATCH, IN)
    with TensorMemoryTracker(linear, optimizer) as tracker:
        linear(x).square().sum().backward()
        after_backward = tracker.report()
        with tracker.phase("optimizer"):
            optimizer.step()
        after_step = tracker.report()
        optimizer.zero_grad(set_to_none=True)
    assert after_backward.final["gradients"] == LINEAR_BYTES  # one fp32 gradient per parameter
    assert after_backward.peak["gradients"] == LINEAR_BYTES  # re-labelled in the peak too
    # exp_avg and exp_avg_sq: 2 x the parameters; plus torch's float32 `step` counter per tensor
    assert after_step.final["optimizer"] == 2 * LINEAR_BYTES + FP32 * 2
    assert tracker.report().final["gradients"] == 0  # set to None: freed


def test_a_freed_temporary_sets_the_peak_and_leaves_it(linear):
    with TensorMemoryTracker() as tracker:
        temporary = torch.ones(1000)
        del temporary
        kept = torch.ones(500).view(25, 20)
        alias = kept.t()  # a view: the same storage, counted once
    report = tracker.report()
    assert report.peak_bytes == FP32 * 1000
    assert report.final["activations"] == FP32 * 500
    assert alias.untyped_storage().data_ptr() == kept.untyped_storage().data_ptr()


def test_a_4_bit_layer_is_its_codes_and_its_quantization_constants():
    from qlora_lab.backends import import_bnb

    bnb = import_bnb()
    n_in, n_out = 256, 128
    layer = bnb.nn.Linear4bit(n_in, n_out, bias=False, compute_dtype=torch.bfloat16, quant_type="nf4",
                              compress_statistics=True)
    layer.weight = bnb.nn.Params4bit(torch.randn(n_out, n_in), requires_grad=False, quant_type="nf4",
                                     compress_statistics=True)
    layer = layer.to("cpu")  # quantizes
    with TensorMemoryTracker(layer) as tracker:
        pass
    n = n_in * n_out
    blocks = n // 64
    expected = (n // 2                     # two 4-bit codes per byte
                + blocks                   # absmax quantized to 8 bits (double quantization)
                + FP32 * -(-blocks // 256)  # their float32 absmax, one per 256 constants
                + FP32                     # the offset (mean) removed before the second level
                + FP32 * 16 + FP32 * 256)  # the NF4 table and the 8-bit dynamic table
    assert tracker.report().final["weights"] == expected
    assert tracker.report().weights_by_dtype == {"uint8": n // 2}


def tiny_bf16_llama(layers: int = 2):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=500, hidden_size=64, intermediate_size=160, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=4)
    torch.manual_seed(0)
    return LlamaForCausalLM(config).to(torch.bfloat16)


def test_a_lora_step_counts_fp32_adapters_their_moments_and_the_bf16_base():
    from peft import LoraConfig, get_peft_model

    from qlora_lab.finetune.lora import lora_params_of_model

    base = tiny_bf16_llama()
    n_base = sum(p.numel() for p in base.parameters())
    n_adapter = lora_params_of_model(base, 4, ("q_proj", "v_proj"))
    model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], lora_dropout=0.0))
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable)
    report = step_memory(model, optimizer, torch.randint(0, 500, (2, 16)))
    assert report.weights_by_dtype == {"bfloat16": 2 * n_base}
    assert report.final["adapters"] == FP32 * n_adapter  # PEFT keeps A and B in fp32
    assert report.final["optimizer"] == 2 * FP32 * n_adapter + FP32 * len(trainable)
    assert report.peak["optimizer"] >= 2 * FP32 * n_adapter  # present from the warm-up step on
    assert report.final["gradients"] == report.final["activations"] == 0


@pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning")
def test_lora_mode_honours_gradient_checkpointing_and_the_peak_shows_it():
    """The fine-tune's LoRA setup with checkpointing keeps one layer's activations, not all six."""
    from qlora_lab.finetune.adapters import attach_lora
    from qlora_lab.finetune.config import FinetuneConfig

    peaks = {}
    for checkpointing in (False, True):
        config = FinetuneConfig(mode="lora", gradient_checkpointing=checkpointing, lora_dropout=0.0)
        model = attach_lora(tiny_bf16_llama(layers=6), config)
        assert model.base_model.model.is_gradient_checkpointing == checkpointing
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])
        peaks[checkpointing] = step_memory(model, optimizer, torch.randint(0, 500, (1, 64))).peak["activations"]
    assert peaks[True] < peaks[False] / 2


def test_an_unknown_category_is_a_clear_error():
    with pytest.raises(ValueError, match="category='buffers'"):
        TensorMemoryTracker().track(torch.ones(2), "buffers")
