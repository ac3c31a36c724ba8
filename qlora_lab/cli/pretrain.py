"""`qlora-lab pretrain`: (re)train the embedded mini CodeLlama from scratch on the stdlib.

Every `PretrainConfig` field is an option of the same name (`--hidden-size 320`).
"""

from __future__ import annotations

import argparse
from dataclasses import asdict
from pathlib import Path

from qlora_lab.model.model_card import write_model_card
from qlora_lab.model.pretrain import PretrainConfig, pretrain


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Options of `qlora-lab pretrain` (defaults: the shipped model's settings)."""
    defaults = PretrainConfig()
    parser.add_argument("--output-dir", type=Path, default=Path("runs/mini-codellama"))
    parser.add_argument("--tokenizer", type=Path, default=None, help="reuse a saved tokenizer instead of training one")
    parser.add_argument("--init-from", type=Path, default=None,
                        help="start from a saved model directory (a second phase; fresh optimizer and schedule)")
    for name, value in asdict(defaults).items():
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=value)
        elif name == "max_minutes":
            parser.add_argument(flag, type=float, default=None, help="stop (and anneal) on the clock")
        else:
            parser.add_argument(flag, type=type(value), default=value)


def run(args: argparse.Namespace) -> int:
    """Entry point of `qlora-lab pretrain`."""
    fields = PretrainConfig.__dataclass_fields__
    cfg = PretrainConfig(**{name: getattr(args, name) for name in fields})
    summary = pretrain(cfg, args.output_dir, args.tokenizer, args.init_from)
    write_model_card(args.output_dir)
    print(f"{summary['parameters']:,} parameters, {summary['steps']} steps in {summary['train_seconds']:.0f} s: "
          f"validation {summary['final_val_bits_per_byte']:.3f} bits/byte -> {args.output_dir}")
    return 0
