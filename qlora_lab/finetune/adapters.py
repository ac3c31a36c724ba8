"""LoRA adapters with PEFT: attach them to a base, save, reload (checked against the base), merge.

An adapter directory is PEFT's (adapter_config.json, adapter_model.safetensors) plus
`qlora_lab_base.json`, the shape of the base it was trained on, so that loading it on
another model fails with a clear message instead of a tensor-size error.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch

from qlora_lab.finetune.atomic import atomic_dir, write_text
from qlora_lab.finetune.config import FinetuneConfig
from qlora_lab.finetune.rundir import result_dir

BASE_FINGERPRINT = "qlora_lab_base.json"  # written beside adapter_config.json
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")  # PEFT's file names


def attach_lora(model, config: FinetuneConfig, sharded: bool = False):
    """Wrap `model` with PEFT LoRA adapters on `config.target_modules`; the base is frozen.

    `sharded` (FSDP): the frozen base keeps one dtype, the 4-bit storage dtype. PEFT's
    `prepare_model_for_kbit_training` would upcast norms and embeddings to fp32, and FSDP
    cannot flatten a layer whose tensors mix dtypes (TRL skips it for sharded QLoRA too).
    """
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = sorted(set(config.target_modules) - present)
    if missing:
        raise ValueError(f"target_modules {missing} are not layers of this model")
    # non-reentrant checkpointing: the reentrant kind breaks DDP's gradient hooks
    checkpointing = {"gradient_checkpointing_kwargs": {"use_reentrant": False}}
    if config.mode == "qlora" and not sharded:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=config.gradient_checkpointing,
                                                **checkpointing)
    elif config.gradient_checkpointing:  # sharded QLoRA, or 16-bit LoRA
        model.enable_input_require_grads()
        model.gradient_checkpointing_enable(**checkpointing)
    lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                      target_modules=list(config.target_modules), task_type="CAUSAL_LM")
    with warnings.catch_warnings():  # PEFT reads a property transformers deprecated: noise for students
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        return get_peft_model(model, lora)


def base_fingerprint(model) -> dict:
    """What identifies a base model for its adapters: name and shape of the network."""
    cfg = model.config
    return {
        "name_or_path": str(getattr(cfg, "_name_or_path", "")),
        "model_type": cfg.model_type,
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "num_hidden_layers": cfg.num_hidden_layers,
        "intermediate_size": getattr(cfg, "intermediate_size", None),
    }


def save_trained(model, tokenizer, config: FinetuneConfig, output_dir: Path, state_dict: dict | None = None) -> Path:
    """PEFT adapter (lora/qlora) or the whole model (full), with the tokenizer.

    Written in a temporary folder renamed once complete: a failed save (full disk) leaves
    no half adapter, and an adapter saved earlier stays whole until the new one is.
    """
    target = result_dir(output_dir, config.mode)
    with atomic_dir(target) as tmp:
        model.save_pretrained(tmp, **({"state_dict": state_dict} if state_dict is not None else {}))
        tokenizer.save_pretrained(tmp)
        if config.mode != "full":
            write_text(tmp / BASE_FINGERPRINT, json.dumps(base_fingerprint(model.get_base_model()), indent=2))
    return target


def check_adapter_dir(adapter_dir: Path) -> None:
    """FileNotFoundError for a folder without an adapter's config or weights (before loading any model)."""
    if not (adapter_dir / "adapter_config.json").is_file():
        raise FileNotFoundError(f"{adapter_dir} holds no PEFT adapter (adapter_config.json missing)")
    if not any((adapter_dir / name).is_file() for name in ADAPTER_WEIGHTS):
        # without this check PEFT would look for the weights on the Hugging Face Hub
        raise FileNotFoundError(f"{adapter_dir} holds no adapter weights ({' or '.join(ADAPTER_WEIGHTS)} missing): "
                                "the adapter is incomplete")


def load_adapter(model, adapter_dir: str | Path, is_trainable: bool = False):
    """Put a saved adapter on `model`, refusing one that was trained on another base model."""
    from peft import PeftModel

    adapter_dir = Path(adapter_dir)
    check_adapter_dir(adapter_dir)
    fingerprint_file = adapter_dir / BASE_FINGERPRINT
    if fingerprint_file.is_file():
        saved = json.loads(fingerprint_file.read_text())
        ours = base_fingerprint(model)
        shape_keys = [k for k in saved if k != "name_or_path"]
        if any(saved[k] != ours.get(k) for k in shape_keys):
            raise ValueError(f"the adapter in {adapter_dir} was made for another base model "
                             f"({saved}), not for this one ({ours})")
    try:
        return PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=is_trainable)
    except Exception as error:  # safetensors, JSON or tensor-shape errors of a damaged adapter
        raise ValueError(f"cannot load the adapter in {adapter_dir} (damaged?): {error}") from error


def load_with_adapter(model_name: str | None, adapter: str | Path | None, quantization: str = "nf4"):
    """Base model (embedded by default), with the adapter at `adapter` if given."""
    from qlora_lab.model.models import load_model

    if adapter:
        check_adapter_dir(Path(adapter))  # before the model loads: a wrong path fails in a blink
    model, tokenizer = load_model(model_name, quantization=quantization)
    if adapter:
        model = load_adapter(model, adapter)
    return model, tokenizer


def merge_adapter(adapter_dir: str | Path, output_dir: str | Path, base: str | None = None) -> Path:
    """Merge a LoRA adapter into a 16-bit copy of its base and save a plain model.

    The base is reloaded unquantized (bf16): merging into NF4 weights would round the sum.
    """
    model, tokenizer = load_with_adapter(base, adapter_dir, quantization="none")
    merged = model.merge_and_unload()
    output_dir = Path(output_dir)
    merged.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    return output_dir


def lora_update_distance(adapter_a: str | Path, adapter_b: str | Path) -> float:
    """||B_a - B_b|| / ||B_b|| over every LoRA B matrix of two saved adapters.

    B starts at zero (A is random), so B is the update training learned: 0 means the same
    update, 1 means an error as large as the update itself.
    """
    from safetensors.torch import load_file

    def lora_b(adapter_dir) -> torch.Tensor:
        weights = load_file(Path(adapter_dir) / "adapter_model.safetensors")
        return torch.cat([w.flatten().float() for name, w in sorted(weights.items()) if "lora_B" in name])

    a, b = lora_b(adapter_a), lora_b(adapter_b)
    return float((a - b).norm() / b.norm())
