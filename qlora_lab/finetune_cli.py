"""`qlora-lab finetune`: every FinetuneConfig field is an option of the same name.

    qlora-lab finetune --mode qlora --max-steps 40 --output-dir runs/qlora
    qlora-lab finetune --output-dir runs/qlora --resume      # after Ctrl-C or a crash
    qlora-lab finetune --data my_pairs.jsonl --lora-r 16
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

from qlora_lab.finetune import FinetuneConfig


def _bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def configure_parser(parser: argparse.ArgumentParser) -> None:
    defaults = FinetuneConfig()
    for f in dataclasses.fields(FinetuneConfig):
        flag = "--" + f.name.replace("_", "-")
        default = getattr(defaults, f.name)
        if f.name == "resume":
            parser.add_argument(flag, action="store_true", help="continue from the last checkpoint in --output-dir")
        elif f.name == "target_modules":
            parser.add_argument(flag, nargs="+", default=list(default), help=f"default: {' '.join(default)}")
        elif isinstance(default, bool):
            parser.add_argument(flag, type=_bool, default=default, metavar="BOOL", help=f"default: {default}")
        else:
            kind = type(default) if default is not None else str
            parser.add_argument(flag, type=kind, default=default, help=f"default: {default}")
    parser.add_argument("--merge-to", default=None, help="also merge the adapter into a 16-bit copy of the base, saved here")


def config_from_args(args: argparse.Namespace) -> FinetuneConfig:
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(FinetuneConfig)}
    values["target_modules"] = tuple(values["target_modules"])
    return FinetuneConfig(**values)


def run(args: argparse.Namespace) -> int:
    from qlora_lab.data import DataError
    from qlora_lab.finetune import ADAPTER_DIR, finetune, merge_adapter

    config = config_from_args(args)
    try:
        result = finetune(config)
    except (ValueError, FileNotFoundError) as error:  # DataError is a ValueError
        kind = "data error" if isinstance(error, DataError) else "error"
        print(f"qlora-lab finetune: {kind}: {error}", file=sys.stderr)
        return 2
    s = result.summary
    print(f"validation loss {s['val_loss_before']:.4f} -> {s['val_loss_after']:.4f} nats/token; "
          f"{s['s_per_step'] or 0:.3f} s/step; peak memory {s['peak_memory_mb']:.0f} MiB; results in {result.output_dir}")
    if s["interrupted"]:
        return 130
    if args.merge_to and config.mode != "full":
        print(f"merged model saved to {merge_adapter(result.output_dir / ADAPTER_DIR, args.merge_to, config.model)}")
    return 0
