"""Export a Llama model to GGUF, llama.cpp's file format: q4_0 or q8_0 weights, metadata, tokenizer.

A GGUF file is one header of key/value metadata (architecture, sizes, tokenizer), then the
tensors, each with its ggml type. We write what llama.cpp's `convert_hf_to_gguf.py`
(`LlamaModel`, `TextModel.set_gguf_parameters`, `_set_vocab_gpt2`) writes for a Llama with a
byte-level BPE tokenizer, with gguf-py's `GGUFWriter` and quantizers:

- tensor names `token_embd`, `blk.N.attn_q|attn_k|attn_v|attn_output|ffn_gate|ffn_up|ffn_down`,
  `attn_norm`, `ffn_norm`, `output_norm`, `output` (absent with tied embeddings: llama.cpp
  then reuses `token_embd`);
- q_proj and k_proj rows permuted (`LlamaModel.permute`): Hugging Face rotates the two halves
  of each head (`rotate_half`), ggml rotates interleaved pairs;
- 2-D weights in q4_0 (4.5 bits/weight) or q8_0 (8.5), 1-D norms in F32.

    export_gguf(model, tokenizer, "mini.q4_0.gguf", "q4_0")
    llama-cli -m mini.q4_0.gguf -p "def parse_header(" -n 48    # with llama.cpp installed
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

GGUF_TYPES = ("q4_0", "q8_0")
HF_TO_GGUF = {  # per block: Hugging Face module -> llama.cpp tensor (gguf-py's TensorNameMap)
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
}
TOP_LEVEL = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}


def gguf_name(hf_name: str) -> str:
    """llama.cpp's name of a Hugging Face Llama tensor, e.g. model.layers.3.mlp.up_proj.weight -> blk.3.ffn_up.weight."""
    if hf_name in TOP_LEVEL:
        return TOP_LEVEL[hf_name]
    parts = hf_name.split(".")
    if parts[:2] == ["model", "layers"] and ".".join(parts[3:-1]) in HF_TO_GGUF:
        return f"blk.{parts[2]}.{HF_TO_GGUF['.'.join(parts[3:-1])]}.{parts[-1]}"
    raise ValueError(f"{hf_name} is not a tensor of a Llama model")


def permute_for_ggml(weight: torch.Tensor, n_head: int) -> torch.Tensor:
    """Rows of each head from the (first half, second half) RoPE layout to interleaved pairs.

    llama.cpp's `LlamaModel.permute`; for k_proj pass the number of key/value heads.
    """
    return weight.reshape(n_head, 2, weight.shape[0] // n_head // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def export_gguf(model, tokenizer, path: str | Path, tensor_type: str = "q4_0", name: str = "mini-codellama") -> Path:
    """Write `model` (a transformers Llama, 16-bit) and its tokenizer to a GGUF file.

    Raises:
        ValueError: an unknown `tensor_type`, or a model that is not a Llama.
    """
    import gguf

    if tensor_type not in GGUF_TYPES:
        raise ValueError(f"tensor_type={tensor_type!r}: choose one of {GGUF_TYPES}")
    if model.config.model_type != "llama":
        raise ValueError(f"model_type={model.config.model_type!r}: only Llama models are exported")
    qtype = gguf.GGMLQuantizationType[tensor_type.upper()]
    path = Path(path)
    writer = gguf.GGUFWriter(str(path), "llama")
    write_metadata(writer, model.config, name, tensor_type)
    write_tokenizer(writer, tokenizer, model.config.vocab_size)
    for hf_name, array in llama_cpp_tensors(model):
        if array.ndim == 2:
            writer.add_tensor(hf_name, gguf.quants.quantize(array, qtype), raw_dtype=qtype)
        else:
            writer.add_tensor(hf_name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def llama_cpp_tensors(model):
    """(llama.cpp name, float32 array) of every tensor to write; q/k rows permuted, tied head skipped."""
    cfg = model.config
    tied = bool(getattr(cfg, "tie_word_embeddings", False))
    for hf_name, tensor in model.state_dict().items():
        if hf_name == "lm_head.weight" and tied:
            continue
        w = tensor.detach().float().cpu()
        if hf_name.endswith("q_proj.weight"):
            w = permute_for_ggml(w, cfg.num_attention_heads)
        elif hf_name.endswith("k_proj.weight"):
            w = permute_for_ggml(w, cfg.num_key_value_heads)
        yield gguf_name(hf_name), w.numpy()


def write_metadata(writer, config, name: str, tensor_type: str) -> None:
    """The llama.* keys `TextModel.set_gguf_parameters` and `LlamaModel.set_gguf_parameters` write."""
    import gguf

    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    rope = getattr(config, "rope_parameters", None) or {}
    writer.add_name(name)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_freq_base(float(rope.get("rope_theta", getattr(config, "rope_theta", 10000.0))))
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_file_type(gguf.LlamaFileType[f"MOSTLY_{tensor_type.upper()}"])
    writer.add_vocab_size(config.vocab_size)
    writer.add_rope_dimension_count(head_dim)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


def write_tokenizer(writer, tokenizer, vocab_size: int) -> None:
    """A byte-level BPE vocabulary as `_set_vocab_gpt2` writes it: tokens, types, merges, special ids.

    The pre-tokenizer is GPT-2's regex (ours: `ByteLevel(use_regex=True)`), llama.cpp's "gpt-2".
    """
    import gguf

    tokens = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    special = set(tokenizer.all_special_ids)
    types = [gguf.TokenType.CONTROL if i in special else gguf.TokenType.NORMAL for i in range(len(tokens))]
    tokens += [f"[PAD{i}]" for i in range(len(tokens), vocab_size)]  # ids the tokenizer never makes
    types += [gguf.TokenType.USER_DEFINED] * (vocab_size - len(types))
    merges = json.loads(tokenizer.backend_tokenizer.to_str())["model"]["merges"]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in merges])
    for key, token_id in (("bos", tokenizer.bos_token_id), ("eos", tokenizer.eos_token_id),
                          ("unk", tokenizer.unk_token_id), ("pad", tokenizer.pad_token_id)):
        if token_id is not None:
            getattr(writer, f"add_{key}_token_id")(token_id)
    adds_bos = tokenizer("x").input_ids[:1] == [tokenizer.bos_token_id]
    writer.add_add_bos_token(adds_bos)
    writer.add_add_eos_token(False)


@dataclass
class GGUFTensor:
    """One tensor read back: ggml type name, shape in PyTorch order, values dequantized to float32."""

    type_name: str
    shape: tuple[int, ...]
    values: np.ndarray
    n_bytes: int


def read_gguf(path: str | Path) -> tuple[dict, dict[str, GGUFTensor]]:
    """(metadata, tensors) of a GGUF file, read with gguf-py's `GGUFReader` (an independent parser)."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    metadata = {key: field.contents() for key, field in reader.fields.items() if not key.startswith("GGUF.")}
    tensors = {}
    for t in reader.tensors:
        shape = tuple(int(n) for n in reversed(t.shape))  # ggml lists ne0 (the row length) first
        values = gguf.quants.dequantize(t.data, t.tensor_type).reshape(shape)
        tensors[t.name] = GGUFTensor(t.tensor_type.name, shape, values, int(t.n_bytes))
    return metadata, tensors
