"""Full fine-tuning, LoRA and QLoRA with one training loop, on CPU or GPU.

    from qlora_lab.finetune import FinetuneConfig, finetune
    result = finetune(FinetuneConfig(mode="qlora", max_steps=40))
    result.summary["val_loss_after"] < result.summary["val_loss_before"]

QLoRA = a frozen base quantized to NF4 with double quantization (bitsandbytes, through
transformers' BitsAndBytesConfig) + 16/32-bit LoRA adapters (PEFT) + paged optimizers
(CUDA only). Outputs in `output_dir`: metrics.jsonl (one line per step), summary.json,
checkpoints/step-N (atomic), adapter/ (PEFT format) or model/ (full mode).
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import signal
import tempfile
import threading
import time
import warnings
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch

from qlora_lab.data import Example, build_examples, collate
from qlora_lab.distributed import (DEFAULT_TIMEOUT_S, evenly_sharded, is_fsdp, make_accelerator,
                                   parameters_digest, rank_slice)
from qlora_lab.memory_usage import peak_memory_mb, reset_peak_memory

MODES = ("full", "lora", "qlora")
PAGED_OPTIMIZERS = {"paged_adamw_8bit": "PagedAdamW8bit", "paged_adamw_32bit": "PagedAdamW32bit"}  # bnb.optim
OPTIMIZERS = ("adamw", *PAGED_OPTIMIZERS)
SCHEDULES = ("cosine", "linear", "constant")
QUANT_STORAGE = {"uint8": torch.uint8, "bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
# Every linear layer of a Llama block: the QLoRA paper (§4) needs all of them to match full fine-tuning.
LLAMA_LINEAR_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
CHECKPOINTS = "checkpoints"
ADAPTER_DIR = "adapter"
BASE_FINGERPRINT = "qlora_lab_base.json"  # written beside adapter_config.json


@dataclass
class FinetuneConfig:
    """Everything a run needs; defaults fine-tune the embedded model in ~1 minute on 2 cores."""

    mode: str = "qlora"  # "full" | "lora" | "qlora"
    model: str | None = None  # None = embedded mini CodeLlama; or a local dir / hub id
    data: str = "domain"  # "domain" (held-out stdlib package) | "instructions" | path.jsonl
    # LoRA (Hu et al. 2021): W + (alpha / r) * B @ A, with A: (r, d_in), B: (d_out, r)
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    target_modules: tuple[str, ...] = LLAMA_LINEAR_MODULES
    quant_type: str = "nf4"  # qlora only: "nf4" | "fp4"
    double_quant: bool = True  # qlora only: quantize the absmax constants too (QLoRA §3)
    quant_storage: str = "uint8"  # qlora only: container of the 4-bit codes; FSDP needs "bf16"
    # optimisation
    learning_rate: float = 2e-3  # LoRA on a small model; use ~2e-4 for a 7B model
    lr_schedule: str = "cosine"
    warmup_steps: int = 4
    max_steps: int = 40  # optimizer steps; 0 means "use epochs"
    epochs: float = 0.0
    batch_size: int = 8  # per process: global batch = batch_size x processes x gradient_accumulation
    gradient_accumulation: int = 1
    seq_len: int = 128
    gradient_checkpointing: bool = False  # trade compute for activation memory
    optimizer: str = "adamw"  # paged_* need CUDA (NVIDIA unified memory)
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    seed: int = 0
    # evaluation and saving
    eval_every: int = 0  # 0: only before and after training
    eval_examples: int = 32  # validation examples used for the loss (fixed subset)
    save_every: int = 0  # 0: no intermediate checkpoint
    output_dir: str = "runs/finetune"
    resume: bool = False
    dist_timeout_s: int = DEFAULT_TIMEOUT_S  # multi-process: fail when a peer is silent this long

    def validate(self) -> None:
        """Raise one clear ValueError for the first bad setting."""
        checks = [
            (self.mode in MODES, f"mode={self.mode!r}: choose one of {MODES}"),
            (self.lora_r > 0, f"lora_r={self.lora_r} must be a positive integer"),
            (self.lora_alpha > 0, f"lora_alpha={self.lora_alpha} must be positive"),
            (0 <= self.lora_dropout < 1, f"lora_dropout={self.lora_dropout} must be in [0, 1)"),
            (self.max_steps > 0 or self.epochs > 0, f"max_steps={self.max_steps} and epochs={self.epochs}: one must be positive"),
            (self.max_steps >= 0 and self.epochs >= 0, "max_steps and epochs cannot be negative"),
            (self.batch_size > 0, f"batch_size={self.batch_size} must be positive"),
            (self.gradient_accumulation > 0, f"gradient_accumulation={self.gradient_accumulation} must be positive"),
            (self.seq_len >= 8, f"seq_len={self.seq_len} must be at least 8"),
            (self.learning_rate > 0, f"learning_rate={self.learning_rate} must be positive"),
            (self.lr_schedule in SCHEDULES, f"lr_schedule={self.lr_schedule!r}: choose one of {SCHEDULES}"),
            (self.optimizer in OPTIMIZERS, f"optimizer={self.optimizer!r}: choose one of {OPTIMIZERS}"),
            (self.quant_type in ("nf4", "fp4"), f"quant_type={self.quant_type!r}: choose 'nf4' or 'fp4'"),
            (len(self.target_modules) > 0, "target_modules is empty: LoRA needs at least one layer"),
            (self.eval_examples > 0, f"eval_examples={self.eval_examples} must be positive"),
            (self.quant_storage in QUANT_STORAGE, f"quant_storage={self.quant_storage!r}: choose one of {tuple(QUANT_STORAGE)}"),
            (self.dist_timeout_s > 0, f"dist_timeout_s={self.dist_timeout_s} must be positive"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)


@dataclass
class FinetuneResult:
    """What `finetune` returns: the trained model, its summary and per-step metrics."""

    model: torch.nn.Module
    tokenizer: object
    output_dir: Path
    summary: dict
    metrics: list[dict] = field(default_factory=list)


# --- set-up ---------------------------------------------------------------------------------

def check_writable(output_dir: Path) -> None:
    """Fail before any training if results could not be saved."""
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=output_dir):
            pass
    except OSError as error:
        raise ValueError(f"output_dir={str(output_dir)!r} is not writable: {error.strerror or error}") from None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def load_for_mode(config: FinetuneConfig, device: torch.device | None = None):
    """Base model as each mode needs it: NF4/FP4 for qlora, bf16 for lora, fp32 for full."""
    from qlora_lab.models import load_model

    if config.mode == "qlora":
        return load_model(config.model, quantization=config.quant_type, double_quant=config.double_quant,
                          device=device, quant_storage=QUANT_STORAGE[config.quant_storage])
    # full fine-tuning keeps fp32 master weights (bf16 autocast computes); LoRA freezes a bf16 base
    dtype = torch.float32 if config.mode == "full" else None
    return load_model(config.model, quantization="none", compute_dtype=dtype, device=device)


def check_distributed(config: FinetuneConfig, accelerator) -> None:
    """Settings the multi-process run cannot honour, refused before any work."""
    if not is_fsdp(accelerator):
        return
    if config.mode == "qlora" and config.quant_storage == "uint8":
        raise ValueError("FSDP shards only floating-point tensors: with a 4-bit base pass "
                         "quant_storage='bf16' (CLI: --quant-storage bf16)")
    if config.save_every or config.resume:
        raise ValueError("intermediate checkpoints and resume are not supported under FSDP "
                         "(sharded optimizer states): set save_every=0, or train with DDP")


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
    elif config.mode == "qlora" and config.gradient_checkpointing:
        model.enable_input_require_grads()
        model.gradient_checkpointing_enable(**checkpointing)
    lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                      target_modules=list(config.target_modules), task_type="CAUSAL_LM")
    return get_peft_model(model, lora)


def load_adapter(model, adapter_dir: str | Path, is_trainable: bool = False):
    """Put a saved adapter on `model`, refusing one that was trained on another base model."""
    from peft import PeftModel

    adapter_dir = Path(adapter_dir)
    if not (adapter_dir / "adapter_config.json").is_file():
        raise FileNotFoundError(f"{adapter_dir} holds no PEFT adapter (adapter_config.json missing)")
    fingerprint_file = adapter_dir / BASE_FINGERPRINT
    if fingerprint_file.is_file():
        saved = json.loads(fingerprint_file.read_text())
        ours = base_fingerprint(model)
        shape_keys = [k for k in saved if k != "name_or_path"]
        if any(saved[k] != ours.get(k) for k in shape_keys):
            raise ValueError(f"the adapter in {adapter_dir} was made for another base model "
                             f"({saved}), not for this one ({ours})")
    return PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=is_trainable)


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


def make_optimizer(params, config: FinetuneConfig, device: torch.device):
    """AdamW, or a bitsandbytes paged AdamW on CUDA (CPU falls back, with a warning)."""
    if config.optimizer.startswith("paged_") and device.type != "cuda":
        warnings.warn(f"optimizer={config.optimizer!r} pages optimizer states through CUDA unified "
                      "memory and needs a GPU: using 'adamw' on this CPU.", stacklevel=2)
    elif config.optimizer in PAGED_OPTIMIZERS:
        from qlora_lab._bnb import import_bnb

        paged = getattr(import_bnb().optim, PAGED_OPTIMIZERS[config.optimizer])
        return paged(params, lr=config.learning_rate, weight_decay=config.weight_decay)
    return torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)


def total_steps(config: FinetuneConfig, n_train: int, world_size: int = 1) -> int:
    """Optimizer steps of the run: `max_steps`, or `epochs` over the training examples."""
    if config.max_steps > 0:
        return config.max_steps
    per_step = config.batch_size * world_size * config.gradient_accumulation
    return max(1, math.ceil(config.epochs * n_train / per_step))


def batch_indices(n_train: int, batch_size: int, micro_step: int, seed: int) -> list[int]:
    """Examples of micro-batch `micro_step`: a fresh seeded shuffle each epoch.

    A pure function of the step, so a resumed run sees exactly the batches it would have.
    """
    per_epoch = max(1, n_train // batch_size)
    epoch, index = divmod(micro_step, per_epoch)
    order = torch.randperm(n_train, generator=torch.Generator().manual_seed(seed + epoch))
    return order[index * batch_size : (index + 1) * batch_size].tolist()


# --- evaluation --------------------------------------------------------------------------

def validation_loss(model, examples: list[Example], pad_id: int, batch_size: int = 8, accelerator=None) -> float:
    """Mean loss (nats per target token) on `examples`, in eval mode, without gradients.

    With an `accelerator` of N processes, `examples` is this process's shard: the token-weighted
    sums are added over the processes, so every process returns the loss of all the shards.
    """
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        with torch.no_grad(), autocast(device):
            for start in range(0, len(examples), batch_size):
                batch = {k: v.to(device) for k, v in collate(examples[start : start + batch_size], pad_id).items()}
                n = int((batch["labels"][:, 1:] != -100).sum())
                total += float(model(**batch).loss) * n
                count += n
    finally:
        model.train(was_training)
    if accelerator is not None and accelerator.num_processes > 1:
        total, count = accelerator.reduce(torch.tensor([total, float(count)], dtype=torch.float64, device=device),
                                          reduction="sum").tolist()
    return total / count


def autocast(device: torch.device):
    """bf16 autocast (CPU and recent GPUs): the dtype QLoRA's compute runs in."""
    from qlora_lab.device import default_compute_dtype

    return torch.autocast(device.type, dtype=default_compute_dtype(device))


# --- checkpoints -----------------------------------------------------------------------------

def trainable_state(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}


def save_checkpoint(output_dir: Path, step: int, model, optimizer, scheduler, extra: dict) -> Path:
    """Write checkpoints/step-N atomically: a temporary folder renamed once complete."""
    root = output_dir / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:06d}"
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=".tmp-"))
    torch.save({"step": step, "trainable": trainable_state(model), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "rng": torch.get_rng_state(), "extra": extra},
               tmp / "state.pt")
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    return final


@contextmanager
def sigint_ignored():
    """Ignore Ctrl-C for the duration (only the main thread can change signal handlers)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def last_checkpoint(output_dir: Path) -> Path | None:
    done = sorted((output_dir / CHECKPOINTS).glob("step-*")) if (output_dir / CHECKPOINTS).is_dir() else []
    return done[-1] if done else None


def restore_checkpoint(path: Path, model, optimizer, scheduler) -> tuple[int, dict]:
    state = torch.load(path / "state.pt", weights_only=False)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in state["trainable"].items():
            params[name].copy_(value)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"])
    return state["step"], state["extra"]


def read_metrics(path: Path, up_to_step: int | None = None) -> list[dict]:
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if up_to_step is None or r["step"] <= up_to_step]


# --- the loop ------------------------------------------------------------------------------

def count_parameters(model) -> tuple[int, int]:
    """(trainable, total); 4-bit weights count as their number of values, not bytes."""
    trainable = total = 0
    for p in model.parameters():
        n = p.numel() * (2 if p.dtype == torch.uint8 else 1)  # two 4-bit codes per byte
        total += n
        trainable += n if p.requires_grad else 0
    return trainable, total


def finetune(config: FinetuneConfig, model=None, tokenizer=None,
             callbacks: list[Callable[[dict], None]] | None = None, live_plot: bool = False) -> FinetuneResult:
    """Run one fine-tune; see the module docstring. Ctrl-C saves a checkpoint first.

    Under `accelerate launch` (N processes) each process trains on its slice of every global
    batch and only the main process writes metrics, checkpoints and the adapter; every
    metrics row then also lists each process's examples, loss and adapter digest.

    Args:
        config: the run's settings (validated first: a bad value raises ValueError).
        model, tokenizer: an already loaded base (e.g. to reuse it in a notebook); by default
            loaded from `config.model` as the mode needs it.
        callbacks: called with each metrics row (dict) as it is written.
        live_plot: draw the loss curve in the notebook as training goes.

    Raises:
        ValueError: a bad setting, an unwritable output_dir, seq_len above the model's
            context, or unusable data (`qlora_lab.data.DataError`).
        RuntimeError: the processes' adapters stopped being identical (DDP).
    """
    from tqdm.auto import tqdm
    from transformers import get_scheduler

    config.validate()
    accelerator = make_accelerator(config.dist_timeout_s)
    check_distributed(config, accelerator)
    rank, world, is_main = accelerator.process_index, accelerator.num_processes, accelerator.is_main_process
    fsdp = is_fsdp(accelerator)
    output_dir = Path(config.output_dir)
    check_writable(output_dir)
    resume_from = last_checkpoint(output_dir) if config.resume else None
    if config.resume and resume_from is None:
        raise ValueError(f"resume=True but {output_dir / CHECKPOINTS} holds no checkpoint")
    seed_everything(config.seed)  # the same seed everywhere: every process starts from the same adapters
    if model is None:
        model, tokenizer = load_for_mode(config, accelerator.device)
    context = model.config.max_position_embeddings
    if config.seq_len > context:
        raise ValueError(f"seq_len={config.seq_len} is above the model's context of {context} tokens")
    train, val = build_examples(config.data, tokenizer, config.seq_len)
    global_batch = config.batch_size * world
    if world > 1 and len(train) < global_batch:
        raise ValueError(f"{len(train)} training examples cannot fill a global batch of {global_batch} "
                         f"({config.batch_size} per process x {world} processes)")
    val = evenly_sharded(val[: config.eval_examples], rank, world)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    if config.mode == "full":
        for p in model.parameters():
            p.requires_grad_(True)
        if config.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    else:
        model = attach_lora(model, config, sharded=fsdp)
    device = next(model.parameters()).device
    model.train()
    trainable, total = count_parameters(model)
    steps = total_steps(config, len(train), world)
    optimizer = make_optimizer([p for p in model.parameters() if p.requires_grad], config, device)
    if fsdp and config.mode != "full":
        from peft.utils.other import fsdp_auto_wrap_policy

        # adapters and frozen base in separate FSDP units: only the adapters need gradients
        accelerator.state.fsdp_plugin.auto_wrap_policy = fsdp_auto_wrap_policy(model)
    model, optimizer = accelerator.prepare(model, optimizer)  # DDP/FSDP wrapper; unchanged for 1 process
    inner = accelerator.unwrap_model(model)
    scheduler = get_scheduler(config.lr_schedule, optimizer, num_warmup_steps=min(config.warmup_steps, steps),
                              num_training_steps=steps)

    metrics_path = output_dir / "metrics.jsonl"
    start_step, extra = 0, {}
    if resume_from is not None:
        start_step, extra = restore_checkpoint(resume_from, inner, optimizer, scheduler)
        if is_main:  # steps after the checkpoint were lost with the process: they are redone, logged once
            kept = read_metrics(metrics_path, up_to_step=start_step)
            metrics_path.write_text("".join(json.dumps(r) + "\n" for r in kept))
    elif is_main and metrics_path.exists():
        metrics_path.unlink()
    val_before = extra.get("val_loss_before")
    if val_before is None:
        val_before = validation_loss(model, val, pad_id, accelerator=accelerator)
    extra = {"val_loss_before": val_before}

    plot = None
    if live_plot and is_main:
        from qlora_lab.plotting import LiveLossPlot

        plot = LiveLossPlot()
    rows = read_metrics(metrics_path) if is_main else []
    reset_peak_memory(device)
    train_time, tokens_seen, interrupted = 0.0, 0, False
    step = start_step
    bar = tqdm(total=steps, initial=start_step, desc=f"{config.mode} fine-tune", unit="step", disable=not is_main)
    log = metrics_path.open("a") if is_main else None
    try:
        while step < steps:
            t0 = time.perf_counter()
            loss_sum, n_tokens, seen = 0.0, 0, []
            for micro in range(config.gradient_accumulation):
                everyone = batch_indices(len(train), global_batch, step * config.gradient_accumulation + micro, config.seed)
                idx = rank_slice(everyone, rank, world)
                seen += idx
                batch = {k: v.to(device) for k, v in collate([train[i] for i in idx], pad_id).items()}
                last_micro = micro == config.gradient_accumulation - 1
                # DDP all-reduces during backward: only once per optimizer step
                with nullcontext() if last_micro else accelerator.no_sync(model):
                    with autocast(device):
                        loss = model(**batch).loss / config.gradient_accumulation
                    accelerator.backward(loss)
                loss_sum += float(loss.detach())
                n_tokens += int(batch["attention_mask"].sum())
            clipped = model.parameters() if fsdp else [p for p in model.parameters() if p.requires_grad]
            grad_norm = float(accelerator.clip_grad_norm_(clipped, config.max_grad_norm))
            lr = scheduler.get_last_lr()[0]
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            row = {"step": step, "loss": loss_sum, "lr": lr, "grad_norm": grad_norm, "tokens": n_tokens}
            if world > 1:
                row.update(gather_ranks(accelerator, inner, step, seen, loss_sum, n_tokens))
            elapsed = time.perf_counter() - t0
            train_time += elapsed
            tokens_seen += row["tokens"]
            row["step_s"] = round(elapsed, 4)
            if config.eval_every and step % config.eval_every == 0 and step < steps:
                row["val_loss"] = validation_loss(model, val, pad_id, accelerator=accelerator)
            if is_main:
                log.write(json.dumps(row) + "\n")
                log.flush()
                rows.append(row)
            bar.update(1)
            bar.set_postfix(loss=f"{row['loss']:.3f}")
            for callback in callbacks or []:
                callback(row)
            if plot is not None:
                plot.update(rows)
            if config.save_every and step % config.save_every == 0 and step < steps:
                if is_main:
                    save_checkpoint(output_dir, step, inner, optimizer, scheduler, extra)
                accelerator.wait_for_everyone()
    except KeyboardInterrupt:
        interrupted = True
        if is_main and not fsdp:
            with sigint_ignored():  # a second Ctrl-C (or the launcher passing it on) must not cut the save
                path = save_checkpoint(output_dir, step, inner, optimizer, scheduler, extra)
            print(f"\nInterrupted: checkpoint saved to {path}. Resume with resume=True (CLI: --resume).")
    finally:
        bar.close()
        if log is not None:
            log.close()

    # after Ctrl-C the other processes may be gone: no more collective operations then
    val_after = None if interrupted and world > 1 else validation_loss(model, val, pad_id, accelerator=accelerator)
    steps_run = step - start_step
    summary = {
        "mode": config.mode, "data": config.data, "steps": step, "interrupted": interrupted,
        "val_loss_before": val_before, "val_loss_after": val_after,
        "s_per_step": train_time / steps_run if steps_run else None,
        "tokens_per_s": tokens_seen / train_time if train_time else None,
        "peak_memory_mb": peak_memory_mb(device), "memory_kind": "cuda_max_allocated" if device.type == "cuda" else "process_peak_rss",
        "trainable_params": trainable, "total_params": total, "device": str(device),
        "num_processes": world, "distributed": str(accelerator.distributed_type).rsplit(".", 1)[-1],
        "global_batch": global_batch * config.gradient_accumulation, "train_examples": len(train),
        "config": asdict(config),
    }
    if not interrupted:
        # FSDP: every process hands in its shard of the weights (a collective), the main one writes
        state_dict = accelerator.get_state_dict(model) if fsdp else None
        if is_main:
            save_result(inner, tokenizer, config, output_dir, state_dict)
    if is_main:
        (output_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    if not interrupted:
        accelerator.wait_for_everyone()
    return FinetuneResult(model=inner, tokenizer=tokenizer, output_dir=output_dir, summary=summary, metrics=rows)


def gather_ranks(accelerator, model, step: int, examples: list[int], loss: float, tokens: int) -> dict:
    """Every process's examples, loss and adapter digest for this step, gathered on all of them.

    The step's loss is the processes' mean, as DDP averages their gradients. Under DDP the
    digests must be equal: if not, the replicas diverged and the run stops.
    """
    from accelerate.utils import gather_object

    digest = None if is_fsdp(accelerator) else parameters_digest(model)
    ranks = gather_object([{"rank": accelerator.process_index, "examples": examples, "loss": loss,
                            "tokens": tokens, "digest": digest}])
    if digest is not None and len({r["digest"] for r in ranks}) > 1:
        raise RuntimeError(f"step {step}: the processes' adapters differ ({[r['digest'][:8] for r in ranks]}); "
                           "gradients were not averaged the same way everywhere")
    return {"loss": sum(r["loss"] for r in ranks) / len(ranks), "tokens": sum(r["tokens"] for r in ranks), "ranks": ranks}


def save_result(model, tokenizer, config: FinetuneConfig, output_dir: Path, state_dict: dict | None = None) -> Path:
    """PEFT adapter (lora/qlora) or the whole model (full), with the tokenizer."""
    target = output_dir / ("model" if config.mode == "full" else ADAPTER_DIR)
    model.save_pretrained(target, **({"state_dict": state_dict} if state_dict is not None else {}))
    tokenizer.save_pretrained(target)
    if config.mode != "full":
        (target / BASE_FINGERPRINT).write_text(json.dumps(base_fingerprint(model.get_base_model()), indent=2))
    return target


def merge_adapter(adapter_dir: str | Path, output_dir: str | Path, base: str | None = None) -> Path:
    """Merge a LoRA adapter into a 16-bit copy of its base and save a plain model.

    The base is reloaded unquantized (bf16): merging into NF4 weights would round the sum.
    """
    from qlora_lab.models import load_model

    model, tokenizer = load_model(base, quantization="none")
    merged = load_adapter(model, adapter_dir).merge_and_unload()
    output_dir = Path(output_dir)
    merged.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    return output_dir
