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
    trainable, total, fraction = lora.trainable_fraction(layer)
    assert trainable == 4 * (16 + 16) and total == trainable + 16 * 16 + 16
    assert fraction == 128 / 400
    assert lora.trainable_fraction(nn.Linear(1, 1, bias=False)) == (1, 1, 1.0)  # every parameter trains
    assert lora.trainable_fraction(nn.Sequential()) == (0, 0, 0.0)  # no parameters: 0, not a division by 0


def test_bad_rank_and_target_are_clear_errors():
    with pytest.raises(ValueError, match="r="):
        lora.lora_params_per_linear(8, 8, 0)
    with pytest.raises(ValueError, match="lm_head"):
        lora.lora_params_for_shape(64, 160, 2, 4, target_modules=["lm_head"])


# --- our own alpha / r, checked before anything is copied from PEFT --------------------------

def check_lora_layer_follows_the_paper(layer_cls) -> None:
    """y = W x + b + (alpha/r)·B·A·x on a case small enough to compute by hand.

    Shared with tests/test_planted_mutants.py: `layer_cls` is a LoRALinear class.
    """
    base = nn.Linear(2, 2)
    with torch.no_grad():
        base.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
        base.bias.copy_(torch.tensor([0.5, -0.5]))
    layer = layer_cls(base, r=2, alpha=6.0)
    assert layer.scaling == 3.0  # alpha / r = 6 / 2
    with torch.no_grad():
        layer.lora_A.copy_(torch.tensor([[1.0, 1.0], [0.0, 2.0]]))  # (r, d_in)
        layer.lora_B.copy_(torch.tensor([[1.0, 0.0], [1.0, -1.0]]))  # (d_out, r)
    x = torch.tensor([[1.0, 2.0]])
    # A x = (3, 4); B A x = (3, -1); times alpha/r = (9, -3); plus W x + b = (1.5, 1.5)
    torch.testing.assert_close(layer(x), torch.tensor([[10.5, -1.5]]))
    # merged: W + 3·B·A = I + 3·[[1, 1], [1, -1]]
    torch.testing.assert_close(layer.merged_weight(), torch.tensor([[4.0, 3.0], [3.0, -2.0]]))


def test_lora_layer_computes_w_x_plus_alpha_over_r_b_a_x_by_hand():
    check_lora_layer_follows_the_paper(lora.LoRALinear)


@pytest.mark.parametrize("r, alpha", [(1, 1.0), (2, 4.0), (8, 16.0), (16, 8.0), (64, 128.0)])
def test_our_scaling_is_alpha_over_r_like_peft_without_copying_it(r, alpha):
    """Only A and B come from PEFT; the scaling is our own, compared with PEFT's afterwards."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    peft_model = get_peft_model(nn.Sequential(nn.Linear(32, 24)), LoraConfig(r=r, lora_alpha=alpha, target_modules=["0"]))
    peft_layer = peft_model.base_model.model[0]
    with torch.no_grad():
        peft_layer.lora_B["default"].weight.normal_()
    ours = lora.LoRALinear(nn.Linear(32, 24), r=r, alpha=alpha)
    assert ours.scaling == alpha / r == peft_layer.scaling["default"]
    ours.base.load_state_dict(peft_layer.base_layer.state_dict())
    with torch.no_grad():
        ours.lora_A.copy_(peft_layer.lora_A["default"].weight)
        ours.lora_B.copy_(peft_layer.lora_B["default"].weight)
    x = torch.randn(5, 32)
    torch.testing.assert_close(ours(x), peft_model(x))
    explicit = x @ ours.base.weight.T + ours.base.bias + (alpha / r) * (x @ ours.lora_A.T @ ours.lora_B.T)
    torch.testing.assert_close(ours(x), explicit)


def test_defaults_are_the_fine_tune_defaults():
    from qlora_lab.finetune.config import FinetuneConfig

    config = FinetuneConfig()
    layer = lora.LoRALinear(nn.Linear(8, 8))
    assert (layer.r, layer.scaling) == (config.lora_r, config.lora_alpha / config.lora_r)


@pytest.mark.parametrize("r", [1, 4, 64])
def test_a_is_initialised_like_nn_linear_and_b_is_zero(r):
    """kaiming_uniform_(a=√5), nn.Linear's own init (as PEFT does): same draws from the same seed."""
    torch.manual_seed(r)
    reference = nn.Linear(256, r, bias=False).weight.detach()  # (r, d_in), bound 1/√256
    base = nn.Linear(256, 32)
    torch.manual_seed(r)
    layer = lora.LoRALinear(base, r=r, alpha=8.0)
    assert layer.r == r and layer.lora_A.shape == (r, 256) and layer.lora_B.shape == (32, r)
    assert torch.equal(layer.lora_A.detach(), reference)
    assert layer.lora_A.abs().max() <= 1 / 16 and not layer.lora_B.any()


@pytest.mark.parametrize("r", [0, -2])
def test_layer_rejects_a_rank_below_one(r):
    with pytest.raises(ValueError, match=f"r={r}"):
        lora.LoRALinear(nn.Linear(4, 4), r=r)


def test_default_rank_and_targets_count_like_peft_at_rank_16_on_every_linear():
    # The defaults the memory estimator and the calculators rely on: r = 16 on the seven Llama linears.
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    trainable, _ = get_peft_model(tiny_llama(2), config).get_nb_trainable_parameters()
    assert lora.lora_params_for_shape(64, 160, 2, 4, 2) == trainable
