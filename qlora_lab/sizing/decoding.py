"""Decoding speed: is a 4-bit model faster at generating text? Measured, and explained.

Each new token runs the whole network on one position per sequence: every weight is read
from memory once per step, whatever the batch. At batch 1 that is ~2 FLOPs per weight read,
so the step lasts about (bytes of weights) / (memory bandwidth): decoding is memory-bound,

    tokens/s (batch 1)  <=  bandwidth / bytes of weights read per token

and storing weights in 4 bits instead of 16 can only help if the kernel that multiplies by
them is as fast as the plain bf16 matmul. At batch 32 the same bytes serve 32 tokens: the
step becomes compute-bound and the 4-bit path pays for unpacking its codes.

    from qlora_lab.sizing.decoding import decode_speed, weight_bytes_per_token
"""

from __future__ import annotations

import time

import torch

from qlora_lab.finetune.compare import build_random_model
from qlora_lab.model.llama_shapes import ModelShape

# A ~1B Llama: TinyLlama-1.1B's shape (hidden 2048, 22 layers, GQA 32/4 heads, vocab 32000).
LLAMA_1B = ModelShape("llama-1.1b", hidden=2048, intermediate=5632, n_layers=22, n_heads=32, n_kv_heads=4,
                      vocab=32000)
PROMPT_TOKENS = 8  # the prompt each sequence starts from: short, decoding is what we time


def random_llama(shape: ModelShape, quantization: str = "none", seed: int = 0):
    """A Llama of `shape` with random bf16 weights (no download); 'nf4': block linears in NF4 + DQ.

    Random weights decode exactly as fast as trained ones: the same bytes and FLOPs per token.
    """
    if quantization not in ("none", "nf4"):
        raise ValueError(f"quantization={quantization!r}: choose 'none' (bf16) or 'nf4'")
    model = build_random_model(shape, "qlora" if quantization == "nf4" else "lora", "cpu", seed=seed)
    if quantization == "nf4":
        model.is_loaded_in_4bit = True  # as transformers marks it: PEFT then wraps Linear4bit with its bnb layer
    return model.eval()


def weight_bytes_per_token(model: torch.nn.Module) -> int:
    """Bytes of weights one decoding step reads: every parameter once, except the embedding
    table, of which a step reads one row per sequence (the tied lm_head still reads it all).

    A 4-bit layer counts its packed codes plus its absmax constants (and under double
    quantization the second-level ones). Call it before the first forward: on CPU
    bitsandbytes repacks 4-bit weights at the first inference.
    """
    seen: set[int] = set()
    total = 0
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    head_ids = {id(head.weight)} if head is not None else set()
    for p in model.parameters():
        if id(p) in seen or (id(p) in embeddings and id(p) not in head_ids):
            continue
        seen.add(id(p))
        total += p.numel() * p.element_size() + _quant_state_bytes(getattr(p, "quant_state", None))
    return total


def _quant_state_bytes(state) -> int:
    """absmax per block (and its own absmax under DQ); the 16- and 256-entry code tables stay in cache."""
    if state is None:
        return 0
    n = state.absmax.numel() * state.absmax.element_size()
    return n + (_quant_state_bytes(state.state2) if getattr(state, "nested", False) else 0)


def time_generate(model, input_ids: torch.Tensor, new_tokens: int) -> float:
    """Seconds for a greedy `generate` of exactly `new_tokens` tokens after `input_ids`."""
    attention = torch.ones_like(input_ids)
    start = time.perf_counter()
    with torch.no_grad():
        model.generate(input_ids=input_ids, attention_mask=attention, max_new_tokens=new_tokens,
                       min_new_tokens=new_tokens, do_sample=False, pad_token_id=0, top_p=None, top_k=None)
    return time.perf_counter() - start


def decode_speed(model, batch_size: int, new_tokens: int = 16, repeats: int = 3, seed: int = 0) -> dict:
    """Decoding tokens/s of greedy generation at `batch_size`, prefill excluded.

    t(n) - t(1) is the time of n - 1 decoding steps (the prompt's forward is in both); each
    is the best of `repeats` runs, t(1) and t(n) interleaved, so a busy neighbour on a shared
    machine slows both alike rather than one. Tokens/s counts every sequence of the batch.
    """
    if new_tokens < 2:
        raise ValueError(f"new_tokens={new_tokens}: at least 2 (one prefill, one decoding step)")
    vocab = model.config.vocab_size
    ids = torch.randint(4, vocab, (batch_size, PROMPT_TOKENS), generator=torch.Generator().manual_seed(seed))
    time_generate(model, ids, 2)  # warm-up: on CPU bitsandbytes repacks its 4-bit weights here
    t1, tn = float("inf"), float("inf")
    for _ in range(repeats):
        t1 = min(t1, time_generate(model, ids, 1))
        tn = min(tn, time_generate(model, ids, new_tokens))
    step_s = max(tn - t1, 1e-9) / (new_tokens - 1)
    return {"batch_size": batch_size, "new_tokens": new_tokens, "s_per_step": step_s,
            "tokens_per_s": batch_size / step_s, "prefill_s": t1}


def bandwidth_bound_tokens_per_s(bytes_per_token: float, bandwidth: float) -> float:
    """The memory-bound ceiling at batch 1: bandwidth (bytes/s) / bytes read per step."""
    if bytes_per_token <= 0:
        raise ValueError("bytes_per_token must be positive")
    return bandwidth / bytes_per_token
