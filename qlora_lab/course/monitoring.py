"""Watch a training run step by step, raise the alarm early, and write down what happened.

The guide's best practices ("monitoring continu", "documentation des résultats") as code:

    monitor = TrainingMonitor()
    for step, batch in enumerate(batches):
        loss = model(**batch).loss; loss.backward()
        monitor.record(step, loss.item(), model)       # loss, gradient norm, time, memory
        optimizer.step(); optimizer.zero_grad()
    monitor.alerts()                                    # [] when nothing went wrong
    write_run_report("runs/x", config, monitor.summary())
"""

from __future__ import annotations

import json
import math
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from qlora_lab.french import nombre, scientifique
from qlora_lab.hardware.measured_memory import current_memory_mb


@dataclass
class StepRecord:
    """What one optimisation step looked like."""

    step: int
    loss: float
    grad_norm: float  # L2 norm of all trainable gradients, before clipping
    seconds: float  # wall time since the previous record
    memory_mb: float  # peak CUDA memory, or the process RSS on CPU


def gradient_norm(model: nn.Module) -> float:
    """Global L2 norm of the gradients of the trainable parameters (0 when there are none)."""
    norms = [p.grad.detach().float().norm() for p in model.parameters() if p.requires_grad and p.grad is not None]
    return float(torch.stack(norms).norm()) if norms else 0.0


@dataclass
class TrainingMonitor:
    """Records every step and flags the classic failures.

    Args:
        spike_factor: a loss above spike_factor × the best loss so far is a divergence
            (language-model losses are logarithms: +25 % is already a lot).
        max_grad_norm: a gradient norm above this is an explosion.
    """

    spike_factor: float = 1.25
    max_grad_norm: float = 100.0
    records: list[StepRecord] = field(default_factory=list)
    _last: float = field(default_factory=time.perf_counter, repr=False)

    def __post_init__(self) -> None:
        if self.spike_factor <= 1:
            raise ValueError(f"spike_factor must be > 1, got {self.spike_factor}")
        if self.max_grad_norm <= 0:
            raise ValueError(f"max_grad_norm must be positive, got {self.max_grad_norm}")

    def record(self, step: int, loss: float, model: nn.Module | None = None) -> StepRecord:
        """Log one step (call after backward, before optimizer.zero_grad)."""
        now = time.perf_counter()
        rec = StepRecord(step, float(loss), gradient_norm(model) if model is not None else float("nan"),
                         now - self._last, current_memory_mb())
        self._last = now
        self.records.append(rec)
        return rec

    def alerts(self) -> list[str]:
        """Human-readable problems, in French (empty list: all good)."""
        problems = []
        best = math.inf
        for r in self.records:
            if not math.isfinite(r.loss):
                problems.append(f"pas {r.step} : perte non finie ({'NaN' if math.isnan(r.loss) else nombre(r.loss)})")
                continue
            if best < math.inf and r.loss > self.spike_factor * best:
                problems.append(f"pas {r.step} : la perte ({nombre(r.loss)}) dépasse {nombre(self.spike_factor)} × la meilleure ({nombre(best)})")
            if r.grad_norm > self.max_grad_norm:
                problems.append(f"pas {r.step} : norme du gradient {scientifique(r.grad_norm)} > {nombre(self.max_grad_norm)}")
            best = min(best, r.loss)
        return problems

    def summary(self) -> dict[str, Any]:
        """First/last/best loss, mean step time and peak memory: the numbers a report needs."""
        if not self.records:
            return {"steps": 0}
        losses = [r.loss for r in self.records]
        return {
            "steps": len(self.records),
            "first_loss": losses[0],
            "last_loss": losses[-1],
            "best_loss": min(losses),
            "seconds_per_step": sum(r.seconds for r in self.records[1:]) / max(len(self.records) - 1, 1),
            "peak_memory_mb": max(r.memory_mb for r in self.records),
            "alerts": self.alerts(),
        }

    def plot(self):
        """Loss and gradient norm against the step, side by side."""
        import matplotlib.pyplot as plt

        steps = [r.step for r in self.records]
        fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.5))
        a.plot(steps, [r.loss for r in self.records], marker="o")
        a.set_xlabel("pas")
        a.set_ylabel("perte")
        a.set_title("Perte d'entraînement")
        b.plot(steps, [r.grad_norm for r in self.records], marker="o", color="tab:red")
        b.set_xlabel("pas")
        b.set_ylabel("norme du gradient")
        b.set_yscale("log")
        b.set_title("Norme du gradient")
        for ax in (a, b):
            ax.grid(True, alpha=0.3)
        fig.tight_layout()
        return fig


def monitored_steps(model: nn.Module, batches: list[torch.Tensor], lr: float,
                    monitor: TrainingMonitor | None = None) -> TrainingMonitor:
    """A minimal causal-LM training loop (AdamW on the trainable parameters), monitored.

    One step per batch; the loss is the model's own shifted cross-entropy.
    """
    if lr <= 0:
        raise ValueError(f"lr must be positive, got {lr}")
    monitor = monitor or TrainingMonitor()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    for step, batch in enumerate(batches):
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        monitor.record(step, loss.item(), model)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    model.eval()
    return monitor


def environment() -> dict[str, str]:
    """Versions and hardware: what anyone needs to reproduce a number."""
    import importlib.metadata as md

    env = {"python": platform.python_version(), "platform": platform.platform()}
    for package in ("torch", "transformers", "peft", "bitsandbytes", "qlora-lab"):
        try:
            env[package] = md.version(package)
        except md.PackageNotFoundError:
            env[package] = "absent"
    env["device"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else platform.processor() or "cpu"
    return env


def write_run_report(output_dir: str | Path, config: dict[str, Any], results: dict[str, Any]) -> Path:
    """Write report.json (config, results, environment) and a short README.md; return the JSON path."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    report = {"config": config, "results": results, "environment": environment(),
              "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    path = output_dir / "report.json"
    path.write_text(json.dumps(report, indent=2, ensure_ascii=False, default=str) + "\n", encoding="utf-8")
    lines = [f"# Rapport d'entraînement ({report['date_utc']})", "", "## Configuration", ""]
    lines += [f"- {k} : {v}" for k, v in config.items()]
    lines += ["", "## Résultats", ""] + [f"- {k} : {v}" for k, v in results.items()]
    lines += ["", "## Environnement", ""] + [f"- {k} : {v}" for k, v in report["environment"].items()]
    (output_dir / "README.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def read_run_report(output_dir: str | Path) -> dict[str, Any]:
    """Load a report written by write_run_report."""
    return json.loads((Path(output_dir) / "report.json").read_text(encoding="utf-8"))


def as_dict(record: StepRecord) -> dict[str, float]:
    """A StepRecord as a plain dict (for JSON)."""
    return asdict(record)
