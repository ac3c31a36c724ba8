"""Validation loss of a model, with or without an adapter.

    qlora-lab eval --split domain_validation --adapter runs/finetune/adapter
"""

from __future__ import annotations

import argparse
import json


def evaluate_loss(model, tokenizer, split: str = "domain_validation", max_files: int | None = None,
                  seq_len: int | None = None) -> dict:
    """Loss on a corpus split: nats/token, bits/byte and perplexity (`qlora_lab.validation`)."""
    from qlora_lab.validation import evaluate_split

    return evaluate_split(model, tokenizer, split, max_files=max_files, seq_len=seq_len).as_dict()


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None, help="model dir or hub id (default: embedded model)")
    parser.add_argument("--adapter", default=None, help="PEFT adapter directory")
    parser.add_argument("--quantization", default="nf4", choices=("nf4", "fp4", "none"))
    parser.add_argument("--split", default="domain_validation",
                        choices=("train", "validation", "domain_train", "domain_validation"))
    parser.add_argument("--max-files", type=int, default=None, help="only the split's first files")
    parser.add_argument("--seq-len", type=int, default=None)


def run(args: argparse.Namespace) -> int:
    from qlora_lab.generation import load_with_adapter

    model, tokenizer = load_with_adapter(args.model, args.adapter, args.quantization)
    print(json.dumps(evaluate_loss(model, tokenizer, args.split, args.max_files, args.seq_len), indent=2))
    return 0
