"""GGUF export round trip: names, shapes, types, values and metadata read back, and the file loaded by transformers."""

import numpy as np
import pytest
import torch

from qlora_lab.model.gguf_export import export_gguf, gguf_name, read_gguf
from qlora_lab.model.models import load_model
from qlora_lab.quant.gguf import dequantize_q4_0, quantize_q4_0


@pytest.fixture(scope="module")
def bf16_model():
    return load_model(quantization="none")


def test_names_are_those_of_gguf_py_tensor_map(bf16_model):
    import gguf

    model, _ = bf16_model
    mapping = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, model.config.num_hidden_layers)
    for hf_name in model.state_dict():
        assert gguf_name(hf_name) == mapping.get_name(hf_name, try_suffixes=(".weight",))
    with pytest.raises(ValueError, match="not a tensor"):
        gguf_name("model.vision_tower.weight")


def test_q4_0_round_trip_tensors_and_metadata(bf16_model, tmp_path):
    model, tokenizer = bf16_model
    cfg = model.config
    metadata, tensors = read_gguf(export_gguf(model, tokenizer, tmp_path / "m.gguf", "q4_0"))
    state = model.state_dict()
    assert len(tensors) == len(state) - 1  # the tied lm_head is not written: llama.cpp reuses token_embd
    for hf_name, w in state.items():
        if hf_name == "lm_head.weight":
            continue
        t = tensors[gguf_name(hf_name)]
        assert t.shape == tuple(w.shape)
        if w.ndim == 1:
            assert t.type_name == "F32" and np.array_equal(t.values, w.float().numpy())
        elif "q_proj" not in hf_name and "k_proj" not in hf_name:  # q/k rows are permuted (RoPE layout)
            assert t.type_name == "Q4_0"
            codes, scales = quantize_q4_0(w.float())  # our own q4_0, checked byte-for-byte in test_gguf.py
            assert np.array_equal(t.values, dequantize_q4_0(codes, scales, w.shape).numpy())
    assert metadata["general.architecture"] == "llama" and metadata["general.file_type"] == 2  # MOSTLY_Q4_0
    assert (metadata["llama.block_count"], metadata["llama.embedding_length"], metadata["llama.feed_forward_length"],
            metadata["llama.attention.head_count"], metadata["llama.context_length"]) == (
        cfg.num_hidden_layers, cfg.hidden_size, cfg.intermediate_size, cfg.num_attention_heads, cfg.max_position_embeddings)
    assert metadata["tokenizer.ggml.tokens"][:4] == tokenizer.convert_ids_to_tokens([0, 1, 2, 3])
    assert metadata["tokenizer.ggml.bos_token_id"] == tokenizer.bos_token_id


def test_q8_0_file_loads_in_transformers_with_the_same_predictions(bf16_model, tmp_path):
    """transformers' own GGUF loader (its own un-permutation and tokenizer conversion) as the reference."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, tokenizer = bf16_model
    export_gguf(model, tokenizer, tmp_path / "m.gguf", "q8_0")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="m.gguf", dtype=torch.float32)
    text = "def parse_header(line):\n    return line.split(':')"
    assert AutoTokenizer.from_pretrained(tmp_path, gguf_file="m.gguf")(text).input_ids == tokenizer(text).input_ids
    ids = tokenizer(text, return_tensors="pt").input_ids
    with torch.no_grad():
        ours, theirs = model(ids).logits.float(), loaded(ids).logits.float()
    assert torch.equal(ours.argmax(-1), theirs.argmax(-1))
    assert (ours - theirs).abs().max() < 0.05 * ours.abs().max()


def test_unknown_type_is_a_clear_error(bf16_model, tmp_path):
    with pytest.raises(ValueError, match="tensor_type"):
        export_gguf(*bf16_model, tmp_path / "m.gguf", "q2_k")


def test_cli_export_writes_a_readable_file_and_refuses_a_bad_name(tmp_path, capsys):
    from qlora_lab.cli import main

    assert main(["export", "--gguf", str(tmp_path / "m.gguf"), "--type", "q8_0"]) == 0
    metadata, tensors = read_gguf(tmp_path / "m.gguf")
    assert metadata["general.file_type"] == 7 and tensors["blk.0.ffn_up.weight"].type_name == "Q8_0"  # MOSTLY_Q8_0
    assert "llama-cli -m" in capsys.readouterr().out
    assert main(["export", "--gguf", str(tmp_path / "m.bin")]) == 2
    assert ".gguf" in capsys.readouterr().err
