"""`qlora-lab finetune`: every FinetuneConfig field is an option of the same name.

    qlora-lab finetune --mode qlora --max-steps 40 --output-dir runs/qlora
    qlora-lab finetune --output-dir runs/qlora --resume      # after Ctrl-C or a crash
    qlora-lab finetune --data my_pairs.jsonl --lora-r 16
    qlora-lab finetune --num-processes 2 --batch-size 4      # DDP through `accelerate launch`
"""

from __future__ import annotations

import argparse
import dataclasses
import os
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
    parser.add_argument("--num-processes", type=int, default=None,
                        help="data-parallel processes (one per GPU; on CPU they share the cores): "
                             "re-launches this command with `accelerate launch`")
    parser.add_argument("--accelerate-config", default=None,
                        help="an Accelerate config file for that launch, e.g. configs/accelerate/fsdp_qlora.yaml")


def config_from_args(args: argparse.Namespace) -> FinetuneConfig:
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(FinetuneConfig)}
    values["target_modules"] = tuple(values["target_modules"])
    return FinetuneConfig(**values)


def args_from_config(config: FinetuneConfig, merge_to: str | None = None) -> list[str]:
    """The command-line options that rebuild `config` (for the processes of a launch)."""
    argv = []
    for f in dataclasses.fields(FinetuneConfig):
        value, flag = getattr(config, f.name), "--" + f.name.replace("_", "-")
        if f.name == "resume":
            argv += [flag] if value else []
        elif f.name == "target_modules":
            argv += [flag, *value]
        elif value is not None:
            argv += [flag, str(value)]
    return argv + (["--merge-to", merge_to] if merge_to else [])


def inside_launch() -> bool:
    """True in a process started by `accelerate launch`/torchrun (it must not launch again)."""
    return "LOCAL_RANK" in os.environ


def run(args: argparse.Namespace) -> int:
    from qlora_lab.data import DataError
    from qlora_lab.finetune import ADAPTER_DIR, finetune, merge_adapter

    config = config_from_args(args)
    if ((args.num_processes or 1) > 1 or args.accelerate_config) and not inside_launch():
        from qlora_lab.distributed import launch

        try:
            config.validate()
            return launch(args.num_processes, args_from_config(config, args.merge_to), args.accelerate_config,
                          config.output_dir)
        except ValueError as error:
            print(f"qlora-lab finetune: error: {error}", file=sys.stderr)
            return 2
    try:
        result = finetune(config)
    except (ValueError, FileNotFoundError) as error:  # DataError is a ValueError
        kind = "data error" if isinstance(error, DataError) else "error"
        print(f"qlora-lab finetune: {kind}: {error}", file=sys.stderr)
        return 2
    finally:
        end_process_group()
    s = result.summary
    if _is_main():
        after = f"{s['val_loss_after']:.4f}" if s["val_loss_after"] is not None else "(not measured)"
        print(f"validation loss {s['val_loss_before']:.4f} -> {after} nats/token; {s['s_per_step'] or 0:.3f} s/step; "
              f"peak memory {s['peak_memory_mb']:.0f} MiB; results in {result.output_dir}")
    if s["interrupted"]:
        return 130
    if args.merge_to and config.mode != "full" and _is_main():
        print(f"merged model saved to {merge_adapter(result.output_dir / ADAPTER_DIR, args.merge_to, config.model)}")
    return 0


def _is_main() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def end_process_group() -> None:
    """Leave the process group cleanly (torch warns at exit otherwise)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
