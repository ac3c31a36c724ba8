"""Classifying models by their modules."""

import pytest
from torch import nn

from qlora_lab.course.architecture import (CNN, MLP, OTHER, TRANSFORMER, classify_architecture, linear_weight_fraction,
                                    module_census, small_cnn, small_mlp)
from qlora_lab.sizing.flops import resnet50


def tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    return LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=2, num_key_value_heads=2))


@pytest.mark.parametrize(
    "build, kind",
    [
        (tiny_llama, TRANSFORMER),
        (lambda: nn.TransformerEncoder(nn.TransformerEncoderLayer(16, 2, batch_first=True), 2), TRANSFORMER),
        (resnet50, CNN),
        (small_cnn, CNN),
        (small_mlp, MLP),
        (lambda: nn.Sequential(nn.ReLU()), OTHER),
    ],
    ids=["llama", "torch-encoder", "resnet50", "small-cnn", "mlp", "no-weights"],
)
def test_classify(build, kind):
    assert classify_architecture(build()).kind == kind


def test_census_counts_layers():
    census = module_census(small_mlp())
    assert census["Linear"] == 2 and census["ReLU"] == 1


def test_linear_fraction_tells_where_qlora_applies():
    mlp = small_mlp()  # 784x256 + 256x10 weights, 256 + 10 biases
    assert linear_weight_fraction(mlp) == pytest.approx((784 * 256 + 256 * 10) / (784 * 256 + 256 * 10 + 266))
    import torch

    for device in ("cpu", "meta"):
        with torch.device(device):
            resnet = resnet50()
        # only the 2048 x 1000 classifier: 2.05 M of 25.6 M
        assert linear_weight_fraction(resnet) == pytest.approx(2048 * 1000 / 25_557_032)
    llama = tiny_llama()  # tied embeddings: the lm_head is skipped, the table counted once
    n_embed = llama.config.vocab_size * llama.config.hidden_size
    total = sum(p.numel() for p in llama.parameters())
    norms = (2 * llama.config.num_hidden_layers + 1) * llama.config.hidden_size
    assert linear_weight_fraction(llama) == pytest.approx((total - n_embed * (1 + (not llama.config.tie_word_embeddings)) - norms) / total)
    assert linear_weight_fraction(nn.Sequential(nn.ReLU())) == 0.0
