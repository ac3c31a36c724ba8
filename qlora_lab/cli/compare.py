"""`qlora-lab compare`: full fine-tuning vs LoRA vs QLoRA, measured on the same data and steps.

    qlora-lab compare --max-steps 20 --output-dir runs/compare            # embedded model
    qlora-lab compare --shape codellama-7b --random-init --output-dir runs/7b   # GPU scale
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from qlora_lab.finetune.compare import SHAPES, compare_modes, compare_shapes, markdown_table
from qlora_lab.finetune.config import MODES


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--max-steps", type=int, default=20)
    parser.add_argument("--data", default="domain")
    parser.add_argument("--output-dir", default="runs/compare")
    parser.add_argument("--shape", choices=sorted(SHAPES), default=None, help="with --random-init: a model shape")
    parser.add_argument("--random-init", action="store_true", help="random weights of --shape, one timed step")
    parser.add_argument("--seq-len", type=int, default=512, help="with --random-init")


def run(args: argparse.Namespace) -> int:
    if args.random_init or args.shape:
        if not (args.random_init and args.shape):
            print("qlora-lab compare: --shape and --random-init go together", file=sys.stderr)
            return 2
        rows = compare_shapes(args.shape, tuple(args.modes), args.seq_len, args.output_dir)
    else:
        rows = compare_modes(tuple(args.modes), args.max_steps, args.output_dir, data=args.data)
    print(markdown_table(rows))
    print(f"\nwritten: {Path(args.output_dir) / 'compare.md'} and compare.json")
    return 0


