"""`qlora-lab finetune`: every FinetuneConfig field is an option of the same name.

    qlora-lab finetune --mode qlora --max-steps 40 --output-dir runs/qlora
    qlora-lab finetune --output-dir runs/qlora --resume      # after Ctrl-C or a crash
    qlora-lab finetune --data my_pairs.jsonl --lora-r 16
    qlora-lab finetune --data functions                       # chapter 8's run (its recipe, DATA_RECIPES)
    qlora-lab finetune --num-processes 2 --batch-size 4      # DDP through `accelerate launch`
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from qlora_lab.finetune.adapters import merge_adapter
from qlora_lab.finetune.config import DATA_RECIPES, FinetuneConfig
from qlora_lab.finetune.launch import launch
from qlora_lab.finetune.loop import finetune
from qlora_lab.finetune.parallel import end_process_group, inside_launch, is_main_process
from qlora_lab.finetune.prepare import check_writable
from qlora_lab.finetune.rundir import result_dir


def configure_parser(parser: argparse.ArgumentParser) -> None:
    FinetuneConfig.add_arguments(parser)
    recipes = [(data, name, value) for data, recipe in DATA_RECIPES.items() for name, value in recipe.items()]
    for action in parser._actions:
        changed = [f"--data {data}: {value}" for data, name, value in recipes if name == action.dest]
        if changed:  # unset stays absent, so that the data source's recipe can fill it in
            action.help += f"; {', '.join(changed)}"
            action.default = argparse.SUPPRESS
    parser.add_argument("--merge-to", default=None, help="also merge the adapter into a 16-bit copy of the base, saved here")
    parser.add_argument("--num-processes", type=int, default=None,
                        help="data-parallel processes (one per GPU; on CPU they share the cores): "
                             "re-launches this command with `accelerate launch`")
    parser.add_argument("--accelerate-config", default=None,
                        help="an Accelerate config file for that launch, e.g. configs/accelerate/fsdp_qlora.yaml")


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    check_cli_options(args, config)
    if ((args.num_processes or 1) > 1 or args.accelerate_config) and not inside_launch():
        argv = config.to_argv() + (["--merge-to", args.merge_to] if args.merge_to else [])
        return launch(argv, args.num_processes, args.accelerate_config, config.output_dir)
    try:
        result = finetune(config)
    finally:
        end_process_group()
    s = result.summary
    if is_main_process():
        after = f"{s['val_loss_after']:.4f}" if s["val_loss_after"] is not None else "(not measured)"
        print(f"validation loss {s['val_loss_before']:.4f} -> {after} nats/token; {s['s_per_step'] or 0:.3f} s/step; "
              f"peak memory {s['peak_memory_mb']:.0f} MiB; results in {result.output_dir}")
    if s["interrupted"]:
        return 130
    if args.merge_to and is_main_process():
        merged = merge_adapter(result_dir(result.output_dir, config.mode), args.merge_to, config.model)
        print(f"merged model saved to {merged}")
    return 0


def config_from_args(args: argparse.Namespace) -> FinetuneConfig:
    """The options given, on top of the data source's recipe, on top of the defaults."""
    names = {f.name for f in dataclasses.fields(FinetuneConfig)} - {"data"}
    return FinetuneConfig.for_data(args.data, **{k: v for k, v in vars(args).items() if k in names})


def check_cli_options(args: argparse.Namespace, config: FinetuneConfig) -> None:
    """The options that are not FinetuneConfig fields, checked before any work (ValueError)."""
    if args.num_processes is not None and args.num_processes < 1:
        raise ValueError(f"--num-processes {args.num_processes}: must be at least 1")
    if args.merge_to:
        if config.mode == "full":
            raise ValueError("--merge-to merges a LoRA adapter: full fine-tuning already saves a whole model")
        check_writable(Path(args.merge_to))  # before training, not after it
