"""Chapter 9's study, read back: full / LoRA bf16 / QLoRA on the `functions` skill, summarised.

    study = load_study()                      # benchmarks/results/functions_study_cpu.json
    mode_summary(study)                       # one row per mode: mean and spread over seeds
    paired_ratio(study, "qlora", "lora")      # QLoRA pass@1 / LoRA pass@1, seed by seed

The runs come from `benchmarks/functions_study.py`; the spread is the sample standard
deviation over seeds (n - 1), so that "± spread" says how much a new seed may move.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from qlora_lab.course.calculators import METHOD_LABELS as MODE_NAMES  # complet, LoRA bf16, QLoRA
from qlora_lab.paths import BENCHMARK_RESULTS_DIR

STUDY_FILE = "functions_study_cpu.json"


def load_study(path: str | Path | None = None) -> dict[str, Any]:
    """The committed study (a dict with `runs`, `memory`, `kept_learning_rate`...)."""
    path = Path(path) if path is not None else BENCHMARK_RESULTS_DIR / STUDY_FILE
    return json.loads(path.read_text(encoding="utf-8"))


def mean_and_spread(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    if not values:
        raise ValueError("no value to summarise")
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def kept_runs(study: dict[str, Any], mode: str) -> list[dict[str, Any]]:
    """The runs of `mode` at its kept learning rate (the sweep's seed included), by seed."""
    rate = study.get("kept_learning_rate", {}).get(mode)
    return sorted((r for r in study["runs"] if r["mode"] == mode and r["learning_rate"] == rate),
                  key=lambda r: r["seed"])


def mode_summary(study: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per mode at its kept rate: seeds, pass@1, validation loss, s/step, memory, load."""
    rows = []
    for mode in MODE_NAMES:
        runs = kept_runs(study, mode)
        if not runs:
            continue
        row: dict[str, Any] = {"mode": MODE_NAMES[mode], "learning_rate": runs[0]["learning_rate"], "seeds": len(runs)}
        for key in ("pass_at_1", "val_loss", "s_per_step", "load_avg_1min_before"):
            row[key], row[f"{key}_spread"] = mean_and_spread([r[key] for r in runs])
        row["peak_tensor_bytes"] = runs[0]["peak_tensor_bytes"]
        rows.append(row)
    return rows


def paired_ratio(study: dict[str, Any], numerator: str = "qlora", denominator: str = "lora",
                 key: str = "pass_at_1") -> tuple[float, float, int]:
    """`key` of `numerator` / `key` of `denominator`, seed by seed: (mean, spread, pairs).

    Pairing by seed removes what a seed does to both (the same data order, the same
    adapter initialisation); seeds where the denominator is 0 are left out.

    Raises:
        ValueError: no seed run in both modes with a non-zero denominator.
    """
    den = {r["seed"]: r[key] for r in kept_runs(study, denominator)}
    ratios = [r[key] / den[r["seed"]] for r in kept_runs(study, numerator) if den.get(r["seed"])]
    if not ratios:
        raise ValueError(f"no seed with both {numerator} and a non-zero {denominator} {key}")
    mean, spread = mean_and_spread(ratios)
    return mean, spread, len(ratios)


def sweep_rows(study: dict[str, Any]) -> list[dict[str, Any]]:
    """The learning-rate sweep (every rate tried at the first seed), the kept rate marked."""
    kept = study.get("kept_learning_rate", {})
    seed = min(r["seed"] for r in study["runs"])  # the sweep's seed
    rows = [{"mode": MODE_NAMES[r["mode"]], "learning_rate": r["learning_rate"], "val_loss": r["val_loss"],
             "pass_at_1": r["pass_at_1"], "kept": kept.get(r["mode"]) == r["learning_rate"]}
            for r in study["runs"] if r["seed"] == seed]
    return sorted(rows, key=lambda r: (list(MODE_NAMES.values()).index(r["mode"]), r["learning_rate"]))


def selection_by_criterion(study: dict[str, Any]) -> list[dict[str, Any]]:
    """Per mode, the sweep's best rate by validation loss (the study's rule) and by pass@1.

    The two criteria need not agree: the loss scores every token of the reference body,
    pass@1 only whether the function passes its tests. Choosing on pass@1 would use the
    held-out problems to tune, so the study keeps the loss; this shows what that costs.
    """
    seed = min(r["seed"] for r in study["runs"])
    rows = []
    for mode, name in MODE_NAMES.items():
        runs = [r for r in study["runs"] if r["mode"] == mode and r["seed"] == seed]
        if len(runs) < 2:
            continue
        by_loss = min(runs, key=lambda r: r["val_loss"])
        by_pass = max(runs, key=lambda r: (r["pass_at_1"], -r["val_loss"]))
        rows.append({"mode": name, "rates": len(runs), "by_loss": by_loss["learning_rate"],
                     "pass_by_loss": by_loss["pass_at_1"], "by_pass": by_pass["learning_rate"],
                     "pass_by_pass": by_pass["pass_at_1"], "agree": by_loss is by_pass})
    return rows
