"""`qlora-lab eval`: validation loss of a model, with or without an adapter.

    qlora-lab eval --split domain_validation --adapter runs/finetune/adapter
"""

from __future__ import annotations

import argparse
import json

from qlora_lab.cli.options import add_model_options
from qlora_lab.finetune.adapters import load_with_adapter
from qlora_lab.model.validation import evaluate_split


def configure_parser(parser: argparse.ArgumentParser) -> None:
    add_model_options(parser)
    parser.add_argument("--split", default="domain_validation",
                        choices=("train", "validation", "domain_train", "domain_validation"))
    parser.add_argument("--max-files", type=int, default=None, help="only the split's first files")
    parser.add_argument("--seq-len", type=int, default=None)


def run(args: argparse.Namespace) -> int:
    if args.max_files is not None and args.max_files < 1:
        raise ValueError(f"--max-files {args.max_files}: must be at least 1")
    if args.seq_len is not None and args.seq_len < 2:
        raise ValueError(f"--seq-len {args.seq_len}: must be at least 2 (one token predicts the next)")
    model, tokenizer = load_with_adapter(args.model, args.adapter, args.quantization)
    context = model.config.max_position_embeddings
    if args.seq_len is not None and args.seq_len > context:  # positions past it were never trained
        raise ValueError(f"--seq-len {args.seq_len} is above the model's context of {context} tokens")
    report = evaluate_split(model, tokenizer, args.split, max_files=args.max_files, seq_len=args.seq_len)
    print(json.dumps(report.as_dict(), indent=2))
    return 0
