"""LoRA maths: parameter counts agree with PEFT, and the tiny layer computes what PEFT's does."""

import pytest
import torch
from torch import nn

from qlora_lab.finetune import lora


def tiny_llama(kv_heads: int = 4):
    from transformers import LlamaConfig, LlamaForCausalLM

    return LlamaForCausalLM(LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=kv_heads))


@pytest.mark.parametrize("r", [1, 4, 16])
@pytest.mark.parametrize("targets", [("q_proj", "v_proj"), lora.LLAMA_ALL_LINEAR], ids=["qv", "all-linear"])
@pytest.mark.parametrize("kv_heads", [4, 2], ids=["mha", "gqa"])
def test_counts_match_peft(r, targets, kv_heads):
    from peft import LoraConfig, get_peft_model

    model = tiny_llama(kv_heads)
    by_modules = lora.lora_params_of_model(model, r, targets)
    by_shape = lora.lora_params_for_shape(64, 160, 2, 4, kv_heads, r=r, target_modules=targets)
    peft_model = get_peft_model(model, LoraConfig(r=r, target_modules=list(targets)))
    trainable, _ = peft_model.get_nb_trainable_parameters()
    assert by_modules == by_shape == trainable


@pytest.mark.parametrize("r, alpha", [(2, 4.0), (8, 16.0), (8, 8.0)])
def test_tiny_layer_agrees_with_peft(r, alpha):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    base = nn.Sequential(nn.Linear(32, 24))
    peft_model = get_peft_model(base, LoraConfig(r=r, lora_alpha=alpha, target_modules=["0"]))
    peft_layer = peft_model.base_model.model[0]
    with torch.no_grad():  # B = 0 at init: make it non-zero so the adapter path matters
        peft_layer.lora_B["default"].weight.normal_()
    ours = lora.LoRALinear(nn.Linear(32, 24), r=r, alpha=alpha)
    ours.base.load_state_dict(peft_layer.base_layer.state_dict())
    lora.copy_from_peft(ours, peft_layer)
    x = torch.randn(5, 32)
    torch.testing.assert_close(ours(x), peft_model(x))
    torch.testing.assert_close(x @ ours.merged_weight().T + ours.base.bias, peft_model(x))


def test_fresh_adapter_changes_nothing_and_only_adapters_train():
    base = nn.Linear(16, 16)
    layer = lora.LoRALinear(base, r=4)
    x = torch.randn(3, 16)
    torch.testing.assert_close(layer(x), base(x))
    trainable, total, _ = lora.trainable_fraction(layer)
    assert trainable == 4 * (16 + 16) and total == trainable + 16 * 16 + 16


def test_bad_rank_and_target_are_clear_errors():
    with pytest.raises(ValueError, match="r="):
        lora.lora_params_per_linear(8, 8, 0)
    with pytest.raises(ValueError, match="lm_head"):
        lora.lora_params_for_shape(64, 160, 2, 4, target_modules=["lm_head"])
