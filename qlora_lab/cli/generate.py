"""`qlora-lab generate`: text from the base model, with or without an adapter.

    qlora-lab generate --prompt "def parse_header(" --adapter runs/finetune/adapter --compare
"""

from __future__ import annotations

import argparse

from qlora_lab.cli.options import add_model_options
from qlora_lab.finetune.adapters import load_with_adapter
from qlora_lab.model.generation import generate


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--prompt", required=True, help="text to continue")
    add_model_options(parser)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--compare", action="store_true", help="print the base model's answer too")


def run(args: argparse.Namespace) -> int:
    if not args.prompt.strip():
        raise ValueError("--prompt is empty: give the text to continue, e.g. --prompt 'def parse_header('")
    if args.max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens {args.max_new_tokens}: must be at least 1")
    if args.temperature < 0:
        raise ValueError(f"--temperature {args.temperature}: cannot be negative (0: always the likeliest token)")
    model, tokenizer = load_with_adapter(args.model, args.adapter, args.quantization)
    text = generate(model, tokenizer, args.prompt, args.max_new_tokens, temperature=args.temperature)
    if args.compare and args.adapter:
        base = generate(model, tokenizer, args.prompt, args.max_new_tokens, use_adapter=False, temperature=args.temperature)
        print(f"--- without adapter ---\n{args.prompt}{base}\n--- with adapter ---")
    print(args.prompt + text)
    return 0
