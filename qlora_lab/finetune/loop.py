"""Full fine-tuning, LoRA and QLoRA with one training loop, on CPU or GPU.

    from qlora_lab.finetune.config import FinetuneConfig
    from qlora_lab.finetune.loop import finetune
    result = finetune(FinetuneConfig(mode="qlora", max_steps=40))
    result.summary["val_loss_after"] < result.summary["val_loss_before"]

QLoRA = a frozen base quantized to NF4 with double quantization (bitsandbytes, through
transformers' BitsAndBytesConfig) + 16/32-bit LoRA adapters (PEFT) + paged optimizers
(CUDA only). `finetune` reads top to bottom as its phases: prepare, resume, train (one
`train_step` at a time, with evaluation and checkpoints), finish. What it writes in
`output_dir` is described in `qlora_lab.finetune.rundir`.

A run can be trusted after a crash: it holds a lock on its folder (`locking`), records its
settings in run.json (`manifest`, checked by resume), writes every file atomically with
SHA-256-verified checkpoints (`atomic`, `checkpoints`), reports a full disk in one line
(`diskfull`) and stops on Ctrl-C at a step boundary (`interrupts`).
"""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from qlora_lab.finetune.adapters import base_fingerprint, save_trained
from qlora_lab.finetune.atomic import remove_temporaries
from qlora_lab.finetune.batches import micro_batch, total_steps
from qlora_lab.finetune.checkpoints import (newest_valid_checkpoint, restore_checkpoint, save_checkpoint,
                                            sigint_ignored)
from qlora_lab.finetune.config import MODE_LABELS, FinetuneConfig
from qlora_lab.finetune.data import Example, build_examples, check_source
from qlora_lab.finetune.diskfull import disk_full_reported
from qlora_lab.finetune.evaluation import autocast, validation_loss
from qlora_lab.finetune.interrupts import SecondInterrupt, StopRequest
from qlora_lab.finetune.locking import claim_run_dir
from qlora_lab.finetune.manifest import (build_manifest, check_config_resumable, check_resume, data_fingerprint,
                                         write_manifest)
from qlora_lab.finetune.parallel import (evenly_sharded, gather_ranks, is_fsdp, is_main_process,
                                         make_accelerator)
from qlora_lab.finetune.prepare import (check_distributed, check_writable, count_parameters, load_for_mode,
                                        make_optimizer, make_trainable, seed_everything)
from qlora_lab.finetune.rundir import (CHECKPOINTS_DIR, MetricsLog, checkpoint_step, checkpoints, metrics_path,
                                       read_metrics, summary_path, truncate_metrics, write_summary)
from qlora_lab.hardware.measured_memory import peak_memory_mb, reset_peak_memory

Callback = Callable[[dict], None]


@dataclass
class FinetuneResult:
    """What `finetune` returns: the trained model, its summary and per-step metrics."""

    model: torch.nn.Module
    tokenizer: object
    output_dir: Path
    summary: dict
    metrics: list[dict] = field(default_factory=list)


@dataclass
class Run:
    """Everything one fine-tune holds while it trains; built by `prepare`."""

    config: FinetuneConfig
    accelerator: Any
    model: Any  # what the step calls: wrapped by DDP/FSDP when there are several processes
    inner: Any  # the model itself (a PEFT model in lora/qlora), for saving and digests
    tokenizer: Any
    optimizer: Any
    scheduler: Any
    train: list[Example]
    val: list[Example]  # this process's share of the validation examples
    pad_id: int
    steps: int
    trainable: int
    total: int
    manifest: dict  # what run.json records: config, base and data fingerprints, library versions
    stop: StopRequest = field(default_factory=StopRequest)
    step: int = 0
    start_step: int = 0
    val_loss_before: float | None = None
    train_time: float = 0.0
    tokens_seen: int = 0
    rows: list[dict] = field(default_factory=list)  # the metrics rows (main process only)

    @property
    def output_dir(self) -> Path:
        return Path(self.config.output_dir)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def world(self) -> int:
        return self.accelerator.num_processes

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def fsdp(self) -> bool:
        return is_fsdp(self.accelerator)

    @property
    def state_bytes(self) -> int:
        """About the size of a checkpoint: the trainable weights and AdamW's two moments."""
        return 3 * sum(p.numel() * p.element_size() for p in self.inner.parameters() if p.requires_grad)


def finetune(config: FinetuneConfig, model=None, tokenizer=None, callbacks: list[Callback] | None = None) -> FinetuneResult:
    """Run one fine-tune; see the module docstring. Ctrl-C saves a checkpoint first.

    Under `accelerate launch` (N processes) each process trains on its slice of every global
    batch and only the main process writes metrics, checkpoints and the adapter; every
    metrics row then also lists each process's examples, loss and adapter digest.

    Args:
        config: the run's settings (checked again here: a bad value raises ValueError).
        model, tokenizer: an already loaded base (e.g. to reuse it in a notebook); by default
            loaded from `config.model` as the mode needs it.
        callbacks: called with each metrics row (dict) as it is written, e.g.
            `qlora_lab.course.viz.LiveLossPlot()` to draw the loss in a notebook.

    Raises:
        ValueError: a bad setting, an unwritable output_dir, seq_len above the model's
            context, unusable data (`qlora_lab.finetune.data.DataError`), an output_dir
            in use by another run (`RunDirBusyError`) or holding an earlier run (without
            resume or overwrite), or a resume with settings that differ from run.json.
        DiskFullError: the disk filled up; the last good checkpoint is kept.
        RuntimeError: the processes' adapters stopped being identical (DDP).
    """
    with prepare(config, model, tokenizer) as run:
        resume(run)
        interrupted = train(run, callbacks or [])
        return finish(run, interrupted)


# --- phases ------------------------------------------------------------------------------------

@contextmanager
def prepare(config: FinetuneConfig, model=None, tokenizer=None) -> Iterator[Run]:
    """Check the settings, claim output_dir, build the run; its guards hold while the block runs.

    The guards: the lock on output_dir, the one-line report of a full disk, and (one
    process) Ctrl-C waiting for the step boundary. Under a launch every process gets
    Ctrl-C at its own moment, so there the KeyboardInterrupt of `train` stays.
    """
    config.validate()
    output_dir = Path(config.output_dir)
    check_writable(output_dir)
    with claim_run_dir(output_dir, config.resume, config.overwrite, enabled=is_main_process()):
        if config.resume and not checkpoints(output_dir):
            raise ValueError(f"resume=True but {output_dir / CHECKPOINTS_DIR} holds no checkpoint")
        if config.resume:
            check_config_resumable(output_dir, config)
        check_source(config.data)
        run = build_run(config, model, tokenizer)
        with disk_full_reported(run.output_dir, run.state_bytes), run.stop.installed(enabled=run.world == 1):
            yield run


def build_run(config: FinetuneConfig, model=None, tokenizer=None) -> Run:
    """Load the base and the data, make it trainable, build the optimizer and the schedule."""
    from transformers import get_scheduler

    accelerator = make_accelerator(config.dist_timeout_s)
    check_distributed(config, accelerator)
    seed_everything(config.seed)  # the same seed everywhere: every process starts from the same adapters
    if model is None:
        model, tokenizer = load_for_mode(config, accelerator.device)
    train_examples, val_examples = load_examples(config, model, tokenizer, accelerator)
    manifest = build_manifest(config, base_fingerprint(model), data_fingerprint(train_examples, val_examples))
    val_examples = evenly_sharded(val_examples, accelerator.process_index, accelerator.num_processes)
    model = make_trainable(model, config, sharded=is_fsdp(accelerator))
    model.train()
    trainable, total = count_parameters(model)
    steps = total_steps(config, len(train_examples), accelerator.num_processes)
    device = next(model.parameters()).device
    optimizer = make_optimizer([p for p in model.parameters() if p.requires_grad], config, device)
    if is_fsdp(accelerator) and config.mode != "full":
        from peft.utils.other import fsdp_auto_wrap_policy

        # adapters and frozen base in separate FSDP units: only the adapters need gradients
        accelerator.state.fsdp_plugin.auto_wrap_policy = fsdp_auto_wrap_policy(model)
    model, optimizer = accelerator.prepare(model, optimizer)  # DDP/FSDP wrapper; unchanged for 1 process
    scheduler = get_scheduler(config.lr_schedule, optimizer, num_warmup_steps=min(config.warmup_steps, steps),
                              num_training_steps=steps)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return Run(config=config, accelerator=accelerator, model=model, inner=accelerator.unwrap_model(model),
               tokenizer=tokenizer, optimizer=optimizer, scheduler=scheduler, train=train_examples,
               val=val_examples, pad_id=pad_id, steps=steps, trainable=trainable, total=total, manifest=manifest)


def load_examples(config: FinetuneConfig, model, tokenizer, accelerator) -> tuple[list[Example], list[Example]]:
    """Training examples (all of them) and the validation subset (all processes' shares)."""
    context = model.config.max_position_embeddings
    if config.seq_len > context:
        raise ValueError(f"seq_len={config.seq_len} is above the model's context of {context} tokens")
    train, val = build_examples(config.data, tokenizer, config.seq_len)
    world = accelerator.num_processes
    global_batch = config.batch_size * world
    if world > 1 and len(train) < global_batch:
        raise ValueError(f"{len(train)} training examples cannot fill a global batch of {global_batch} "
                         f"({config.batch_size} per process x {world} processes)")
    return train, val[: config.eval_examples]


def resume(run: Run) -> None:
    """Restore the newest valid checkpoint (resume=True) or record a fresh run; measure the loss before."""
    extra: dict = {}
    if run.is_main:
        remove_temporaries(run.output_dir, run.output_dir / CHECKPOINTS_DIR)  # a killed run's unfinished writes
    if run.config.resume:
        path = pick_checkpoint(run)
        record, notes = check_resume(run.output_dir, run.manifest, checkpoint_step(path), run.steps)
        run.start_step, extra = restore_checkpoint(path, run.inner, run.optimizer, run.scheduler)
        if run.is_main:  # steps after the checkpoint were lost with the process: they are redone, logged once
            for note in notes:
                print(note, file=sys.stderr)
            write_manifest(run.output_dir, record)
            truncate_metrics(run.output_dir, run.start_step)
            summary_path(run.output_dir).unlink(missing_ok=True)  # the result of an earlier, shorter run
    elif run.is_main:
        write_manifest(run.output_dir, run.manifest)
        metrics_path(run.output_dir).unlink(missing_ok=True)
    run.step = run.start_step
    run.val_loss_before = extra.get("val_loss_before")
    if run.val_loss_before is None:
        run.val_loss_before = evaluate(run)
    run.rows = read_metrics(run.output_dir) if run.is_main else []


def pick_checkpoint(run: Run) -> Path:
    """The newest checkpoint whose SHA-256 digests match; one warning line per newer one skipped."""
    path, skipped = newest_valid_checkpoint(run.output_dir)
    if path is None:
        reasons = "; ".join(f"{bad.name}: {why}" for bad, why in skipped)
        raise ValueError(f"resume=True but no checkpoint in {run.output_dir / CHECKPOINTS_DIR} can be trusted "
                         f"({reasons}); start afresh with --overwrite")
    if run.is_main:
        for bad, why in skipped:
            print(f"warning: checkpoint {bad} skipped: {why}; resuming from {path.name}", file=sys.stderr)
    return path


def train(run: Run, callbacks: list[Callback]) -> bool:
    """Optimizer steps until the last one; True when Ctrl-C stopped it (a checkpoint is then saved)."""
    from tqdm.auto import tqdm

    reset_peak_memory(run.device)
    # At most one redraw a second: in a notebook each redraw is a widget message, and a flood of
    # them (one per step) overflows the kernel's IOPub queue, which then drops the cell's end.
    bar = tqdm(total=run.steps, initial=run.start_step, desc=f"affinage {MODE_LABELS[run.config.mode]}", unit="pas",
               disable=not run.is_main, mininterval=1.0)
    try:
        with MetricsLog(run.output_dir, enabled=run.is_main) as log:
            while run.step < run.steps and not run.stop.requested:
                row = train_step(run)
                if due(run.config.eval_every, run):
                    row["val_loss"] = evaluate(run)
                log.write(row)
                if run.is_main:
                    run.rows.append(row)
                bar.update(1)
                bar.set_postfix(perte=f"{row['loss']:.3f}", refresh=False)
                for callback in callbacks:
                    callback(row)
                if due(run.config.save_every, run):
                    checkpoint(run)
            if run.step < run.steps:  # Ctrl-C honoured at this step boundary
                save_on_interrupt(run)
                return True
    except SecondInterrupt:
        raise
    except KeyboardInterrupt:  # raised mid-step: several processes, or a callback
        save_on_interrupt(run)
        return True
    finally:
        bar.close()
    return False


def train_step(run: Run) -> dict:
    """One optimizer step over `gradient_accumulation` micro-batches; its metrics row."""
    config, accelerator, model = run.config, run.accelerator, run.model
    t0 = time.perf_counter()
    loss_sum, n_tokens, seen = 0.0, 0, []
    for micro in range(config.gradient_accumulation):
        idx, batch = micro_batch(run.train, config, run.step * config.gradient_accumulation + micro,
                                 accelerator.process_index, run.world, run.pad_id, run.device)
        seen += idx
        last_micro = micro == config.gradient_accumulation - 1
        # DDP all-reduces during backward: only once per optimizer step
        with nullcontext() if last_micro else accelerator.no_sync(model):
            with autocast(run.device):
                loss = model(**batch).loss / config.gradient_accumulation
            accelerator.backward(loss)
        loss_sum += float(loss.detach())
        n_tokens += int(batch["attention_mask"].sum())
    clipped = model.parameters() if run.fsdp else [p for p in model.parameters() if p.requires_grad]
    grad_norm = float(accelerator.clip_grad_norm_(clipped, config.max_grad_norm))
    lr = run.scheduler.get_last_lr()[0]
    run.optimizer.step()
    run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    run.step += 1
    row = {"step": run.step, "loss": loss_sum, "lr": lr, "grad_norm": grad_norm, "tokens": n_tokens}
    if run.world > 1:
        row.update(gather_ranks(accelerator, run.inner, run.step, seen, loss_sum, n_tokens))
    elapsed = time.perf_counter() - t0
    run.train_time += elapsed
    run.tokens_seen += row["tokens"]
    row["step_s"] = round(elapsed, 4)
    return row


def finish(run: Run, interrupted: bool) -> FinetuneResult:
    """Loss after training, summary.json, and the adapter (or model) saved, unless interrupted."""
    if not interrupted and run.step > run.start_step:
        checkpoint(run)  # the trained state is safe on disk before the adapter is written
    # after Ctrl-C the other processes may be gone: no more collective operations then
    val_after = None if interrupted and run.world > 1 else evaluate(run)
    summary = summarize(run, interrupted, val_after)
    if not interrupted:
        # FSDP: every process hands in its shard of the weights (a collective), the main one writes
        state_dict = run.accelerator.get_state_dict(run.model) if run.fsdp else None
        if run.is_main:
            save_trained(run.inner, run.tokenizer, run.config, run.output_dir, state_dict)
    if run.is_main:
        write_summary(run.output_dir, summary)
    if not interrupted:
        run.accelerator.wait_for_everyone()
    return FinetuneResult(model=run.inner, tokenizer=run.tokenizer, output_dir=run.output_dir, summary=summary,
                          metrics=run.rows)


# --- helpers of the phases ---------------------------------------------------------------------

def evaluate(run: Run) -> float:
    return validation_loss(run.model, run.val, run.pad_id, accelerator=run.accelerator)


def due(every: int, run: Run) -> bool:
    """True on every `every`-th step but the last (the last one is evaluated and saved anyway)."""
    return bool(every) and run.step % every == 0 and run.step < run.steps


def checkpoint(run: Run) -> None:
    """checkpoints/step-N, keeping the newest `keep_checkpoints` (none under FSDP: sharded states)."""
    if run.is_main and not run.fsdp:
        save_checkpoint(run.output_dir, run.step, run.inner, run.optimizer, run.scheduler,
                        {"val_loss_before": run.val_loss_before}, keep=run.config.keep_checkpoints)
    run.accelerator.wait_for_everyone()


def save_on_interrupt(run: Run) -> None:
    if run.is_main and not run.fsdp:
        with sigint_ignored():  # a second Ctrl-C (or the launcher passing it on) must not cut the save
            path = save_checkpoint(run.output_dir, run.step, run.inner, run.optimizer, run.scheduler,
                                   {"val_loss_before": run.val_loss_before}, keep=run.config.keep_checkpoints)
        print(f"\nInterrupted: checkpoint saved to {path}. Resume with resume=True (CLI: --resume).")


def summarize(run: Run, interrupted: bool, val_after: float | None) -> dict:
    """The content of summary.json."""
    steps_run = run.step - run.start_step
    device = run.device
    return {
        "mode": run.config.mode, "data": run.config.data, "steps": run.step, "interrupted": interrupted,
        "val_loss_before": run.val_loss_before, "val_loss_after": val_after,
        "s_per_step": run.train_time / steps_run if steps_run else None,
        "tokens_per_s": run.tokens_seen / run.train_time if run.train_time else None,
        "peak_memory_mb": peak_memory_mb(device),
        "memory_kind": "cuda_max_allocated" if device.type == "cuda" else "process_peak_rss",
        "trainable_params": run.trainable, "total_params": run.total, "device": str(device),
        "num_processes": run.world, "distributed": str(run.accelerator.distributed_type).rsplit(".", 1)[-1],
        "global_batch": run.config.batch_size * run.world * run.config.gradient_accumulation,
        "train_examples": len(run.train), "config": asdict(run.config),
    }
