"""Checkpoints of the trainable state, written atomically, and restored for `--resume`.

Only what training changes is saved (the adapters in lora/qlora, every weight in full
mode), with the optimizer, the scheduler and the RNG state, so that a resumed run sees
exactly the batches and updates it would have seen.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path

import torch

from qlora_lab.finetune.rundir import CHECKPOINT_STATE, checkpoint_dir


def trainable_state(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}


def save_checkpoint(output_dir: Path, step: int, model, optimizer, scheduler, extra: dict) -> Path:
    """Write checkpoints/step-N atomically: a temporary folder renamed once complete."""
    final = checkpoint_dir(output_dir, step)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=".tmp-"))
    torch.save({"step": step, "trainable": trainable_state(model), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "rng": torch.get_rng_state(), "extra": extra},
               tmp / CHECKPOINT_STATE)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    return final


def restore_checkpoint(path: Path, model, optimizer, scheduler) -> tuple[int, dict]:
    """Load a checkpoint into the run; returns (step, extra values saved with it)."""
    state = torch.load(path / CHECKPOINT_STATE, weights_only=False)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in state["trainable"].items():
            params[name].copy_(value)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"])
    return state["step"], state["extra"]


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
