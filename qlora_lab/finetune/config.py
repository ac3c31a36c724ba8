"""`FinetuneConfig`: every setting of a fine-tune, with its help text and its checks.

    config = FinetuneConfig(mode="qlora", max_steps=40)      # a bad value raises ValueError here
    config.to_argv()                                          # ["--mode", "qlora", ...]
    FinetuneConfig.from_argv(config.to_argv()) == config      # True, for every field

Each field carries its help in `metadata["help"]`, as PEFT's `LoraConfig` and TRL's
`SFTConfig` do: the `qlora-lab finetune` options are generated from the fields, and the
same fields turn a config back into options for the processes of a launch.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from dataclasses import dataclass, field

from qlora_lab.model.llama_shapes import LLAMA_ALL_LINEAR

MODES = ("full", "lora", "qlora")
MODE_LABELS = {"full": "complet", "lora": "LoRA bf16", "qlora": "QLoRA"}  # what a student reads
PAGED_OPTIMIZERS = {"paged_adamw_8bit": "PagedAdamW8bit", "paged_adamw_32bit": "PagedAdamW32bit"}  # bnb.optim
OPTIMIZERS = ("adamw", *PAGED_OPTIMIZERS)
SCHEDULES = ("cosine", "linear", "constant")
QUANT_TYPES = ("nf4", "fp4")
QUANT_STORAGE = ("uint8", "bf16", "fp16", "fp32")  # torch dtypes in qlora_lab.finetune.prepare
DEFAULT_TIMEOUT_S = 600  # a collective waiting longer than this means another process is stuck
# A data source's own settings (chapter 8's run for 'functions'), used where the user sets
# nothing else: `FinetuneConfig.for_data(data)` and `qlora-lab finetune --data NAME`.
# 'functions', measured on the embedded model: validation loss 4.76 -> 0.15 and held-out pass@1
# 0 -> 0.81 (39/48) with lr 5e-3 (lr 5e-3 after 60 steps: 0.17); 227 s of CPU on one thread.
DATA_RECIPES: dict[str, dict] = {
    "functions": {"max_steps": 300, "batch_size": 16, "seq_len": 96, "learning_rate": 5e-3, "lora_r": 16,
                  "lora_alpha": 32, "warmup_steps": 10, "eval_every": 50, "save_every": 100},
}


def _help(text: str, **metadata) -> dict:
    return {"help": text, **metadata}


@dataclass
class FinetuneConfig:
    """Everything a run needs; defaults fine-tune the embedded model in ~1 minute on 2 cores."""

    mode: str = field(default="qlora", metadata=_help("what is trained", choices=MODES))
    model: str | None = field(default=None, metadata=_help(
        "base model: a local Hugging Face directory or hub id; unset: the embedded mini CodeLlama"))
    data: str = field(default="domain", metadata=_help(
        "'domain' (held-out stdlib package), 'instructions', or a .jsonl file of "
        "{instruction, response} or {text} lines"))
    # LoRA (Hu et al. 2021): W + (alpha / r) * B @ A, with A: (r, d_in), B: (d_out, r)
    lora_r: int = field(default=8, metadata=_help("LoRA rank r"))
    lora_alpha: int = field(default=16, metadata=_help("LoRA alpha: the update is scaled by alpha / r"))
    lora_dropout: float = field(default=0.05, metadata=_help("dropout on the LoRA input, in [0, 1)"))
    target_modules: tuple[str, ...] = field(
        default=LLAMA_ALL_LINEAR,
        metadata=_help("layers that get adapters; all the linear layers of a Llama block by default, "
                       "which the QLoRA paper (§4) needs to match full fine-tuning"))
    quant_type: str = field(default="nf4", metadata=_help("qlora only: 4-bit data type", choices=QUANT_TYPES))
    double_quant: bool = field(default=True, metadata=_help(
        "qlora only: quantize the absmax constants too (QLoRA §3)"))
    quant_storage: str = field(default="uint8", metadata=_help(
        "qlora only: container dtype of the 4-bit codes; FSDP needs bf16", choices=QUANT_STORAGE))
    # optimisation
    learning_rate: float = field(default=2e-3, metadata=_help(
        "peak learning rate (LoRA on a small model; use ~2e-4 for a 7B model)"))
    lr_schedule: str = field(default="cosine", metadata=_help("learning-rate schedule", choices=SCHEDULES))
    warmup_steps: int = field(default=4, metadata=_help("linear warm-up steps"))
    max_steps: int = field(default=40, metadata=_help("optimizer steps; 0 means 'use --epochs'"))
    epochs: float = field(default=0.0, metadata=_help("passes over the training examples (when max_steps is 0)"))
    batch_size: int = field(default=8, metadata=_help(
        "examples per process: global batch = batch_size x processes x gradient_accumulation"))
    gradient_accumulation: int = field(default=1, metadata=_help("micro-batches per optimizer step"))
    seq_len: int = field(default=128, metadata=_help("tokens per example (at most the model's context)"))
    gradient_checkpointing: bool = field(default=False, metadata=_help(
        "recompute activations in backward: less memory, more compute"))
    optimizer: str = field(default="adamw", metadata=_help(
        "adamw, or a bitsandbytes paged AdamW (needs CUDA unified memory)", choices=OPTIMIZERS))
    weight_decay: float = field(default=0.0, metadata=_help("AdamW weight decay"))
    max_grad_norm: float = field(default=1.0, metadata=_help("gradient clipping norm"))
    seed: int = field(default=0, metadata=_help("seed of the adapters' init and of the batch order"))
    # evaluation and saving
    eval_every: int = field(default=0, metadata=_help("validation loss every N steps; 0: only before and after"))
    eval_examples: int = field(default=32, metadata=_help("validation examples used for the loss (a fixed subset)"))
    save_every: int = field(default=10, metadata=_help(
        "checkpoint every N steps, so that --resume continues after a crash (0: only at the end "
        "and on Ctrl-C); a LoRA checkpoint of the embedded model takes milliseconds"))
    keep_checkpoints: int = field(default=2, metadata=_help(
        "checkpoints kept (the newest); two let --resume fall back when the last one is damaged"))
    output_dir: str = field(default="runs/finetune", metadata=_help(
        "where run.json, metrics.jsonl, summary.json, checkpoints/ and the adapter go"))
    resume: bool = field(default=False, metadata=_help(
        "continue from the newest valid checkpoint in output_dir (settings checked against its run.json)"))
    overwrite: bool = field(default=False, metadata=_help(
        "start afresh in an output_dir that holds an earlier run, deleting that run's files"))
    dist_timeout_s: int = field(default=DEFAULT_TIMEOUT_S, metadata=_help(
        "multi-process: fail when another process is silent this many seconds"))

    def __post_init__(self) -> None:
        self.target_modules = tuple(self.target_modules)
        self.validate()

    def validate(self) -> None:
        """Raise one clear ValueError for the first bad setting (fields may change after init)."""
        for message in self.problems():
            raise ValueError(message)

    def problems(self) -> list[str]:
        """Every bad setting, one clear sentence each (empty when the config is valid)."""
        checks = [(getattr(self, f.name) in f.metadata["choices"],
                   f"{f.name}={getattr(self, f.name)!r}: choose one of {f.metadata['choices']}")
                  for f in dataclasses.fields(self) if "choices" in f.metadata]
        checks += [
            (self.lora_r > 0, f"lora_r={self.lora_r} must be a positive integer"),
            (self.lora_alpha > 0, f"lora_alpha={self.lora_alpha} must be positive"),
            (0 <= self.lora_dropout < 1, f"lora_dropout={self.lora_dropout} must be in [0, 1)"),
            (self.max_steps > 0 or self.epochs > 0, f"max_steps={self.max_steps} and epochs={self.epochs}: one must be positive"),
            (self.max_steps >= 0 and self.epochs >= 0, "max_steps and epochs cannot be negative"),
            (self.batch_size > 0, f"batch_size={self.batch_size} must be positive"),
            (self.gradient_accumulation > 0, f"gradient_accumulation={self.gradient_accumulation} must be positive"),
            (self.seq_len >= 8, f"seq_len={self.seq_len} must be at least 8"),
            (self.learning_rate > 0, f"learning_rate={self.learning_rate} must be positive"),
            (len(self.target_modules) > 0, "target_modules is empty: LoRA needs at least one layer"),
            (self.eval_examples > 0, f"eval_examples={self.eval_examples} must be positive"),
            (self.dist_timeout_s > 0, f"dist_timeout_s={self.dist_timeout_s} must be positive"),
            (self.warmup_steps >= 0, f"warmup_steps={self.warmup_steps} cannot be negative"),
            (self.eval_every >= 0, f"eval_every={self.eval_every} cannot be negative (0: only before and after)"),
            (self.save_every >= 0, f"save_every={self.save_every} cannot be negative (0: only at the end)"),
            (self.keep_checkpoints >= 1, f"keep_checkpoints={self.keep_checkpoints} must be at least 1"),
            # a negative norm flips the gradient (training goes uphill), zero scales it to nothing
            (self.max_grad_norm > 0, f"max_grad_norm={self.max_grad_norm} must be positive"),
            (self.weight_decay >= 0, f"weight_decay={self.weight_decay} cannot be negative"),
            (self.seed >= 0, f"seed={self.seed} cannot be negative"),
            (bool(self.output_dir), "output_dir is empty"),
        ]
        return [message for ok, message in checks if not ok]

    @classmethod
    def for_data(cls, data: str, **changes) -> FinetuneConfig:
        """A config for `data`: its recipe (DATA_RECIPES, if any), then `changes` on top."""
        return cls(data=data, **(DATA_RECIPES.get(data, {}) | changes))

    # --- command line -------------------------------------------------------------------------

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """One option per field (`lora_r` -> `--lora-r`), typed and documented from the field."""
        for f, kind in _fields_with_types(cls):
            flag, default, help_text = _flag(f.name), f.default, f.metadata["help"]
            if "choices" in f.metadata:  # listed in the help; checked by validate(), with its clear message
                help_text += f" ({' | '.join(f.metadata['choices'])})"
            if kind is bool:  # `--resume` alone means true; `--double-quant false` also works
                parser.add_argument(flag, type=_bool, nargs="?", const=True, default=default, metavar="BOOL",
                                    help=f"{help_text} (default: {str(default).lower()})")
            elif kind is tuple:
                parser.add_argument(flag, nargs="+", default=list(default), help=f"{help_text} (default: {' '.join(default)})")
            else:
                shown = "" if default is None else f" (default: {default})"
                parser.add_argument(flag, type=kind, default=default, help=help_text + shown)

    @classmethod
    def from_namespace(cls, args: argparse.Namespace) -> FinetuneConfig:
        return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})

    @classmethod
    def from_argv(cls, argv: list[str]) -> FinetuneConfig:
        parser = argparse.ArgumentParser(prog="qlora-lab finetune", exit_on_error=False)
        cls.add_arguments(parser)
        return cls.from_namespace(parser.parse_args(argv))

    def to_argv(self) -> list[str]:
        """The options that rebuild this config (for the processes of a launch, or a subprocess)."""
        argv: list[str] = []
        for f, kind in _fields_with_types(type(self)):
            value = getattr(self, f.name)
            if value is None:
                continue
            if kind is tuple:
                argv += [_flag(f.name), *value]
            elif kind is float:
                argv += [_flag(f.name), repr(float(value))]  # repr: the shortest text that reads back exactly
            else:
                argv += [_flag(f.name), str(value).lower() if kind is bool else str(value)]
        return argv


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def _fields_with_types(cls) -> list[tuple[dataclasses.Field, type]]:
    """(field, its plain type): `str | None` -> str, `tuple[str, ...]` -> tuple."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        origin = typing.get_origin(hint)
        kind = origin if origin is tuple else (args[0] if args else hint)
        out.append((f, kind))
    return out
