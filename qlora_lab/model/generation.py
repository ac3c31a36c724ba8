"""Generate text with and without a LoRA adapter, for before/after comparisons."""

from __future__ import annotations

import contextlib

import torch


def generate(model, tokenizer, prompt: str, max_new_tokens: int = 48, use_adapter: bool = True,
             temperature: float = 0.0, seed: int = 0) -> str:
    """The continuation of `prompt` (greedy when temperature is 0).

    use_adapter=False runs a PEFT model with its adapters switched off: the base model's answer.
    """
    if not prompt:
        raise ValueError("prompt is empty")
    device = next(model.parameters()).device
    inputs = tokenizer(prompt, return_tensors="pt").to(device)
    off = model.disable_adapter() if (not use_adapter and hasattr(model, "disable_adapter")) else contextlib.nullcontext()
    torch.manual_seed(seed)
    was_training = model.training
    model.eval()
    try:
        with off, torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=temperature > 0,
                                 temperature=temperature if temperature > 0 else None, top_p=None, top_k=None,
                                 pad_token_id=tokenizer.pad_token_id)
    finally:
        model.train(was_training)
    return tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
