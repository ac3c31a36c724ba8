"""Merging a LoRA adapter: into bf16 (equal to the adapter model) and into NF4 (re-quantized, as bitsandbytes would)."""

import pytest
import torch

from qlora_lab.backends import import_bnb
from qlora_lab.finetune.merge import merge_into_bf16, merge_into_nf4, requantize_nf4
from qlora_lab.model.llama_shapes import ModelShape
from qlora_lab.sizing.decoding import random_llama

TINY = ModelShape("tiny", hidden=128, intermediate=256, n_layers=2, n_heads=4, n_kv_heads=2, vocab=256)


def with_random_adapter(model, seed: int = 0):
    """PEFT LoRA on every block linear with random A *and* B (init_lora_weights=False): a non-zero update."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False)
    adapted = get_peft_model(model, config)
    for name, p in adapted.named_parameters():
        if "lora_" in name:
            p.data = p.data.to(torch.bfloat16)
    return adapted.eval()


def test_merged_bf16_computes_what_the_adapter_model_computes():
    ids = torch.randint(4, TINY.vocab, (2, 12), generator=torch.Generator().manual_seed(1))
    adapted = with_random_adapter(random_llama(TINY))
    with torch.no_grad():
        unmerged = adapted(ids).logits.float()
        with adapted.disable_adapter():
            without = adapted(ids).logits.float()
        plain = merge_into_bf16(adapted)
        merged = plain(ids).logits.float()
    update = (unmerged - without).abs().max()
    assert update > 0.01  # the adapter changes the logits...
    assert (merged - unmerged).abs().max() < 0.1 * update  # ...and the merged model reproduces it (bf16 rounding)
    assert not any("lora_" in n for n, _ in plain.named_parameters())


def test_peft_merge_into_nf4_is_bitsandbytes_quantize_of_the_dequantized_sum():
    F = import_bnb().functional
    adapted = with_random_adapter(random_llama(TINY, "nf4"))
    layer = adapted.base_model.model.model.layers[0].self_attn.q_proj
    weight = layer.base_layer.weight
    expected_sum = F.dequantize_4bit(weight.data, weight.quant_state).float() + layer.get_delta_weight("default").float()
    merged, warned = merge_into_nf4(adapted)
    assert warned == ["Merge lora module to 4-bit linear may get different generations due to rounding errors."]
    new = merged.model.layers[0].self_attn.q_proj.weight
    ref_packed, ref_state = F.quantize_4bit(expected_sum.to(torch.bfloat16), blocksize=64, quant_type="nf4",
                                            compress_statistics=True)
    assert torch.equal(F.dequantize_4bit(new.data, new.quant_state), F.dequantize_4bit(ref_packed, ref_state))
    # the rounding PEFT warns about: the merged NF4 weight is not the exact sum
    rounding = (F.dequantize_4bit(new.data, new.quant_state).float() - expected_sum).abs()
    assert (rounding > 1e-4).float().mean() > 0.5


def test_requantized_bf16_merge_equals_bitsandbytes_quantize_of_the_merged_weight():
    F = import_bnb().functional
    merged = merge_into_bf16(with_random_adapter(random_llama(TINY)))
    w = merged.model.layers[1].mlp.down_proj.weight.detach().clone()
    requantize_nf4(merged)
    q = merged.model.layers[1].mlp.down_proj.weight
    ref_packed, ref_state = F.quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=True)
    assert torch.equal(F.dequantize_4bit(q.data, q.quant_state), F.dequantize_4bit(ref_packed, ref_state))


def test_unknown_variant_is_a_clear_error():
    from qlora_lab.finetune.merge import build_variant

    with pytest.raises(ValueError, match="variant"):
        build_variant("merged fp8", "nowhere")
