"""What a fine-tune needs before its first step: checks, the base model as the mode wants it,
the trainable parameters, and the optimizer."""

from __future__ import annotations

import random
import tempfile
import warnings
from pathlib import Path

import torch

from qlora_lab.finetune.adapters import attach_lora
from qlora_lab.finetune.config import PAGED_OPTIMIZERS, FinetuneConfig
from qlora_lab.finetune.parallel import is_fsdp

QUANT_STORAGE_DTYPES = {"uint8": torch.uint8, "bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def check_writable(output_dir: Path) -> None:
    """Fail before any training if results could not be saved."""
    if output_dir.exists() and not output_dir.is_dir():
        raise ValueError(f"output_dir={str(output_dir)!r} is a file, not a folder")
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=output_dir):
            pass
    except OSError as error:
        raise ValueError(f"output_dir={str(output_dir)!r} is not writable: {error.strerror or error}") from None


def check_distributed(config: FinetuneConfig, accelerator) -> None:
    """Settings the multi-process run cannot honour, refused before any work."""
    if not is_fsdp(accelerator):
        return
    if config.mode == "qlora" and config.quant_storage == "uint8":
        raise ValueError("FSDP shards only floating-point tensors: with a 4-bit base pass "
                         "quant_storage='bf16' (CLI: --quant-storage bf16)")
    if config.resume:
        raise ValueError("resume is not supported under FSDP (sharded optimizer states, so no checkpoints "
                         "are written): train with DDP to get checkpoints")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def load_for_mode(config: FinetuneConfig, device: torch.device | None = None):
    """Base model as each mode needs it: NF4/FP4 for qlora, bf16 for lora, fp32 for full."""
    from qlora_lab.model.models import load_model

    if config.mode == "qlora":
        return load_model(config.model, quantization=config.quant_type, double_quant=config.double_quant,
                          device=device, quant_storage=QUANT_STORAGE_DTYPES[config.quant_storage])
    # full fine-tuning keeps fp32 master weights (bf16 autocast computes); LoRA freezes a bf16 base
    dtype = torch.float32 if config.mode == "full" else None
    return load_model(config.model, quantization="none", compute_dtype=dtype, device=device)


def make_trainable(model, config: FinetuneConfig, sharded: bool):
    """Every weight trainable (full), or a frozen base with LoRA adapters (lora, qlora)."""
    if config.mode != "full":
        return attach_lora(model, config, sharded=sharded)
    for p in model.parameters():
        p.requires_grad_(True)
    if config.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model


def count_parameters(model) -> tuple[int, int]:
    """(trainable, total); 4-bit weights count as their number of values, not bytes."""
    trainable = total = 0
    for p in model.parameters():
        n = p.numel() * (2 if p.dtype == torch.uint8 else 1)  # two 4-bit codes per byte
        total += n
        trainable += n if p.requires_grad else 0
    return trainable, total


def make_optimizer(params, config: FinetuneConfig, device: torch.device):
    """AdamW, or a bitsandbytes paged AdamW on CUDA (CPU falls back, with a warning)."""
    if config.optimizer.startswith("paged_") and device.type != "cuda":
        warnings.warn(f"optimizer={config.optimizer!r} pages optimizer states through CUDA unified "
                      "memory and needs a GPU: using 'adamw' on this CPU.", stacklevel=2)
    elif config.optimizer in PAGED_OPTIMIZERS:
        from qlora_lab.backends import import_bnb

        paged = getattr(import_bnb().optim, PAGED_OPTIMIZERS[config.optimizer])
        return paged(params, lr=config.learning_rate, weight_decay=config.weight_decay)
    return torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)
