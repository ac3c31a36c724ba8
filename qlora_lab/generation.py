"""Generate text with and without a LoRA adapter, for before/after comparisons.

    qlora-lab generate --prompt "def parse_header(" --adapter runs/finetune/adapter
"""

from __future__ import annotations

import argparse
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


def load_with_adapter(model_name: str | None, adapter: str | None, quantization: str = "nf4"):
    """Base model (embedded by default), with the adapter at `adapter` if given."""
    from qlora_lab.finetune import load_adapter
    from qlora_lab.models import load_model

    model, tokenizer = load_model(model_name, quantization=quantization)
    if adapter:
        model = load_adapter(model, adapter)
    return model, tokenizer


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--prompt", required=True, help="text to continue")
    parser.add_argument("--model", default=None, help="model dir or hub id (default: embedded model)")
    parser.add_argument("--adapter", default=None, help="PEFT adapter directory")
    parser.add_argument("--quantization", default="nf4", choices=("nf4", "fp4", "none"))
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--compare", action="store_true", help="print the base model's answer too")


def run(args: argparse.Namespace) -> int:
    model, tokenizer = load_with_adapter(args.model, args.adapter, args.quantization)
    text = generate(model, tokenizer, args.prompt, args.max_new_tokens, temperature=args.temperature)
    if args.compare and args.adapter:
        base = generate(model, tokenizer, args.prompt, args.max_new_tokens, use_adapter=False, temperature=args.temperature)
        print(f"--- without adapter ---\n{args.prompt}{base}\n--- with adapter ---")
    print(args.prompt + text)
    return 0
