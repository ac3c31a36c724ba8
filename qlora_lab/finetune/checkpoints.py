"""Checkpoints of the trainable state: written atomically, verified by SHA-256, restored for `--resume`.

Only what training changes is saved (the adapters in lora/qlora, every weight in full
mode), with the optimizer, the scheduler and the RNG state, so that a resumed run sees
exactly the batches and updates it would have seen. Each `checkpoints/step-N/` holds
`state.pt` and, written last, `sha256.json` (the digest of every file): a checkpoint
truncated, deleted or with flipped bits is detected, and resume takes the previous one.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import signal
import threading
from contextlib import contextmanager
from pathlib import Path

import torch

from qlora_lab.finetune.atomic import atomic_dir, write_bytes, write_text
from qlora_lab.finetune.rundir import CHECKPOINT_DIGESTS, CHECKPOINT_STATE, checkpoint_dir, checkpoints

CHUNK = 1 << 20  # bytes hashed at a time


def trainable_state(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}


def rng_state() -> dict:
    """Every random generator a step may draw from (dropout: torch's; CUDA's on a GPU)."""
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def save_checkpoint(output_dir: Path, step: int, model, optimizer, scheduler, extra: dict, keep: int = 0) -> Path:
    """Write checkpoints/step-N: state.pt, then its digests, then one rename; keep the newest `keep`.

    The state is serialised in memory first, so that a full disk shows up as an OSError of
    our own write (ENOSPC) rather than a torch zip-writer error.
    """
    buffer = io.BytesIO()
    torch.save({"step": step, "trainable": trainable_state(model), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "rng": rng_state(), "extra": extra}, buffer)
    final = checkpoint_dir(output_dir, step)
    with atomic_dir(final) as tmp:
        write_bytes(tmp / CHECKPOINT_STATE, buffer.getvalue())
        digests = {f.name: sha256(f) for f in sorted(tmp.iterdir())}
        write_text(tmp / CHECKPOINT_DIGESTS, json.dumps(digests, indent=2))
    if keep:
        prune_checkpoints(output_dir, keep)
    return final


def prune_checkpoints(output_dir: Path, keep: int) -> None:
    """Delete all but the newest `keep` checkpoints."""
    for old in checkpoints(output_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def checkpoint_problem(path: Path) -> str | None:
    """Why a checkpoint cannot be trusted (a file missing, unreadable or changed), or None."""
    try:
        digests = json.loads((path / CHECKPOINT_DIGESTS).read_text())
    except FileNotFoundError:
        return f"{CHECKPOINT_DIGESTS} missing (the save did not finish)"
    except (OSError, ValueError) as error:
        return f"{CHECKPOINT_DIGESTS} unreadable ({error})"
    for name, expected in digests.items():
        try:
            if sha256(path / name) != expected:
                return f"{name} does not match its SHA-256 (damaged)"
        except OSError as error:
            return f"{name} unreadable ({error.strerror or error})"
    return None


def newest_valid_checkpoint(output_dir: Path) -> tuple[Path | None, list[tuple[Path, str]]]:
    """(the newest checkpoint that passes its digests, [(each newer one skipped, why)])."""
    skipped = []
    for path in reversed(checkpoints(output_dir)):
        problem = checkpoint_problem(path)
        if problem is None:
            return path, skipped
        skipped.append((path, problem))
    return None, skipped


def restore_checkpoint(path: Path, model, optimizer, scheduler) -> tuple[int, dict]:
    """Load a (verified) checkpoint into the run; returns (step, extra values saved with it)."""
    state = torch.load(path / CHECKPOINT_STATE, weights_only=False)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in state["trainable"].items():
            params[name].copy_(value)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"]["torch"])
    if state["rng"]["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng"]["cuda"])
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
