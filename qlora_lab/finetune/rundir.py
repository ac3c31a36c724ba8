"""The layout of a run directory, and the functions that read it: the one place that knows it.

    runs/qlora/
        run.json               the run manifest: resolved config, base model, data, library versions
        metrics.jsonl          one JSON line per optimizer step (written as training goes)
        summary.json           the run's result: losses, speed, memory, config
        checkpoints/step-N/    state.pt (adapters, optimizer, scheduler, RNG) and sha256.json,
                               its digests, written last; the folder is renamed into place
        adapter/               the PEFT adapter (lora, qlora), or model/ for full fine-tuning
        .lock, .lock.owner     held by the one process that writes here (`finetune.locking`)

The trainer writes it; `compare`, the launcher, the notebooks and the tests read it here.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from qlora_lab.finetune.atomic import write_text

METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
CHECKPOINTS_DIR = "checkpoints"
ADAPTER_DIR = "adapter"
FULL_MODEL_DIR = "model"
CHECKPOINT_STATE = "state.pt"
CHECKPOINT_DIGESTS = "sha256.json"  # written last: a checkpoint without it is incomplete
RUN_MANIFEST = "run.json"
LOCK_FILE = ".lock"
LOCK_OWNER = ".lock.owner"
RUN_ENTRIES = (RUN_MANIFEST, METRICS_FILE, SUMMARY_FILE, CHECKPOINTS_DIR, ADAPTER_DIR, FULL_MODEL_DIR)


def metrics_path(output_dir: str | Path) -> Path:
    return Path(output_dir) / METRICS_FILE


def summary_path(output_dir: str | Path) -> Path:
    return Path(output_dir) / SUMMARY_FILE


def result_dir(output_dir: str | Path, mode: str) -> Path:
    """Where the trained result goes: the whole model (full) or the PEFT adapter."""
    return Path(output_dir) / (FULL_MODEL_DIR if mode == "full" else ADAPTER_DIR)


def checkpoint_dir(output_dir: str | Path, step: int) -> Path:
    return Path(output_dir) / CHECKPOINTS_DIR / f"step-{step:06d}"


def manifest_path(output_dir: str | Path) -> Path:
    return Path(output_dir) / RUN_MANIFEST


def checkpoints(output_dir: str | Path) -> list[Path]:
    """Every checkpoint folder, oldest first (temporary folders of an unfinished save start with '.')."""
    root = Path(output_dir) / CHECKPOINTS_DIR
    return sorted(root.glob("step-*")) if root.is_dir() else []


def checkpoint_step(path: Path) -> int:
    return int(path.name.removeprefix("step-"))


def last_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest complete checkpoint: the one whose digests were written (not yet verified)."""
    done = [c for c in checkpoints(output_dir) if (c / CHECKPOINT_DIGESTS).is_file()]
    return done[-1] if done else None


def run_entries(output_dir: str | Path) -> list[str]:
    """What an earlier run left in `output_dir` (empty for a fresh folder)."""
    return [name for name in RUN_ENTRIES if (Path(output_dir) / name).exists()]


def clear_run(output_dir: str | Path) -> None:
    """Remove an earlier run's files (`--overwrite`); other files in the folder are left alone."""
    for name in run_entries(output_dir):
        path = Path(output_dir) / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()


def read_metrics(output_dir: str | Path, up_to_step: int | None = None) -> list[dict]:
    """The metrics rows of a run, oldest first (empty when it has not logged a step yet)."""
    path = metrics_path(output_dir)
    if not path.is_file():
        return []
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    rows = []
    for i, line in enumerate(lines):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if i < len(lines) - 1:
                raise
            # the last line of a process killed while writing it: that step is redone on resume
    return [r for r in rows if up_to_step is None or r["step"] <= up_to_step]


def truncate_metrics(output_dir: str | Path, up_to_step: int) -> list[dict]:
    """Keep the rows up to `up_to_step` (a resume redoes the steps after its checkpoint)."""
    kept = read_metrics(output_dir, up_to_step)
    write_text(metrics_path(output_dir), "".join(json.dumps(r) + "\n" for r in kept))
    return kept


def read_summary(output_dir: str | Path) -> dict:
    path = summary_path(output_dir)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: the run did not finish")
    return json.loads(path.read_text())


def write_summary(output_dir: str | Path, summary: dict) -> Path:
    return write_text(summary_path(output_dir), json.dumps(summary, indent=2, default=str))


class MetricsLog:
    """Appends one JSON line per step and flushes it, so a crash loses at most the current step.

    `enabled=False` (the other processes of a launch) makes every call a no-op.
    """

    def __init__(self, output_dir: str | Path, enabled: bool = True) -> None:
        self.file = metrics_path(output_dir).open("a") if enabled else None

    def write(self, row: dict) -> None:
        if self.file is not None:
            self.file.write(json.dumps(row) + "\n")
            self.file.flush()

    def __enter__(self) -> MetricsLog:
        return self

    def __exit__(self, *exc) -> None:
        if self.file is not None:
            self.file.close()
