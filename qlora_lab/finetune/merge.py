"""Merging a LoRA adapter into its base: one plain model to ship, and what it costs in quality.

After training, W' = W + (alpha / r)·B·A can replace W: no adapter left, no extra latency.
Three ways to do it, measured side by side by `merge_losses`:

- `merge_into_bf16`: the base reloaded in bf16, plus the update. Only bf16 rounding of the sum;
  but the adapter was trained against the *NF4* weights, so the merged model sees W, not NF4(W).
- `merge_into_nf4`: PEFT's merge on the NF4 base (`peft/tuners/lora/bnb.py`, `Linear4bit.merge`):
  dequantize NF4(W), add the update, quantize the sum again to NF4. PEFT warns "Merge lora module
  to 4-bit linear may get different generations due to rounding errors.": the update, often
  smaller than half an NF4 step, is partly rounded away.
- `requantize_nf4`: the bf16 merge, then quantized to NF4 + DQ, to ship a 4-bit model.

    from qlora_lab.finetune.merge import merge_losses
    merge_losses("runs/x/adapter")   # {'adapter': 2.31, 'merged bf16': 2.33, ...} nats/token
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from qlora_lab.finetune.adapters import load_with_adapter
from qlora_lab.finetune.compare import quantize_block_linears
from qlora_lab.finetune.data import domain_examples
from qlora_lab.finetune.evaluation import validation_loss

MERGE_VARIANTS = ("adapter", "merged bf16", "merged nf4 (peft)", "merged bf16 -> nf4")


def merge_into_bf16(adapted):
    """`merge_and_unload` of a PEFT model whose base is bf16: a plain transformers model."""
    return adapted.merge_and_unload()


def merge_into_nf4(adapted) -> tuple[torch.nn.Module, list[str]]:
    """PEFT's merge on a 4-bit base (dequantize, add, re-quantize); returns (model, PEFT's warnings).

    Merge before any inference forward: on CPU bitsandbytes repacks the 4-bit weights at the
    first eval forward, and PEFT's dequantize expects the unpacked layout.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        merged = adapted.merge_and_unload()
    return merged, sorted({str(w.message) for w in caught if "rounding" in str(w.message)})


def requantize_nf4(model):
    """Every linear layer of the blocks to NF4 + DQ (bitsandbytes), in place: a merged model made 4-bit."""
    quantize_block_linears(model, next(model.parameters()).device)
    model.is_loaded_in_4bit = True  # as transformers marks a 4-bit load (PEFT reads it)
    return model


def merge_losses(adapter_dir: str | Path, base: str | None = None, seq_len: int = 128,
                 n_examples: int = 32) -> dict[str, float]:
    """Domain validation loss (nats/token) of the adapter model and of each merged model.

    'adapter' is the model as trained: NF4 base + unmerged adapter. One model in memory at a time.
    """
    losses = {}
    for variant in MERGE_VARIANTS:
        model, tokenizer = build_variant(variant, adapter_dir, base)
        if variant == MERGE_VARIANTS[0]:
            examples = domain_examples(tokenizer, "domain_validation", seq_len)[:n_examples]
        losses[variant] = validation_loss(model, examples, tokenizer.pad_token_id)
        del model
    return losses


def build_variant(variant: str, adapter_dir: str | Path, base: str | None = None):
    """(model, tokenizer) for one of `MERGE_VARIANTS`."""
    if variant not in MERGE_VARIANTS:
        raise ValueError(f"variant={variant!r}: choose among {MERGE_VARIANTS}")
    quantization = "none" if "bf16" in variant else "nf4"
    adapted, tokenizer = load_with_adapter(base, adapter_dir, quantization=quantization)
    if variant == "adapter":
        return adapted, tokenizer
    if variant == "merged nf4 (peft)":
        return merge_into_nf4(adapted)[0], tokenizer
    merged = merge_into_bf16(adapted)
    return (requantize_nf4(merged) if variant.endswith("nf4") else merged), tokenizer
