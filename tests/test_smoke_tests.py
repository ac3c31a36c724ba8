"""The progressive-test ladder passes on a healthy LoRA model and catches a broken one."""

import pytest
import torch

from qlora_lab.course import smoke_tests


def tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=2, num_key_value_heads=2, bos_token_id=1,
                                        eos_token_id=2, pad_token_id=0)).eval()


def with_lora(model):
    from peft import LoraConfig, get_peft_model

    return get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "up_proj"]))


@pytest.fixture
def batch():
    torch.manual_seed(1)
    return torch.randint(3, 64, (2, 16))


def test_healthy_lora_model_overfits_and_round_trips(batch):
    model = with_lora(tiny_llama())
    overfit = smoke_tests.check_overfits_one_batch(model, batch, steps=20, lr=5e-2)
    assert overfit.passed, overfit.detail
    round_trip = smoke_tests.check_adapter_round_trip(model, batch, tiny_llama)
    assert round_trip.passed, round_trip.detail


def test_frozen_model_fails_the_overfit_rung(batch):
    model = tiny_llama()
    model.requires_grad_(False)
    result = smoke_tests.check_overfits_one_batch(model, batch)
    assert not result.passed and "aucun" in result.detail


def test_untrained_model_is_not_better_than_chance(batch):
    result = smoke_tests.check_loss_is_sane(tiny_llama(), batch)
    assert not result.passed  # a random init predicts ~uniformly: loss ≈ ln(V), not below it by margin


def test_ladder_stops_at_first_failure():
    calls = []

    def rung(ok):
        def check():
            calls.append(ok)
            return smoke_tests.CheckResult("x", ok, "")
        return check

    results = smoke_tests.run_ladder([rung(True), rung(False), rung(True)])
    assert [r.passed for r in results] == [True, False] and calls == [True, False]
    assert smoke_tests.format_results(results).count("\n") == 1
