"""Read the measured results saved under benchmarks/results/, and tell GPU runs from CPU runs.

Benchmarks are scripts (their timings depend on the machine); what they measured is kept
as JSON so that a notebook running on a laptop can still show what a GPU did. Files share
a loose layout: an `environment` (or `device`) description and a list of `rows`.

    from qlora_lab.course.benchmark_results import load_results, gpu_results
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from qlora_lab.paths import BENCHMARK_RESULTS_DIR

GPU_MARKERS = ("cuda", "nvidia", "h100", "h200", "a100", "rtx", "+cu1")


def load_results(results_dir: str | Path | None = None) -> dict[str, Any]:
    """Every *.json under `results_dir` (default: benchmarks/results), by file name; {} if none.

    A file that is not valid JSON is reported under its name as {"error": ...}, not skipped.
    """
    results_dir = Path(results_dir) if results_dir is not None else BENCHMARK_RESULTS_DIR
    if not results_dir.is_dir():
        return {}
    results = {}
    for path in sorted(results_dir.glob("*.json")):
        try:
            results[path.name] = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            results[path.name] = {"error": f"JSON illisible : {exc}"}
    return results


def describes_gpu_run(data: Any) -> bool:
    """True when the file's description of where it ran names a GPU (CUDA, NVIDIA, H100…).

    Looks at the `environment` / `device` / `hardware` entries when there are some (a CPU
    run's torch version ends in "+cpu", a CUDA build's in "+cu128"), else at the whole file.
    """
    if not isinstance(data, dict):
        return False
    context = {k: v for k, v in data.items() if k in ("environment", "device", "hardware")}
    text = json.dumps(context or data).lower()
    return any(marker in text for marker in GPU_MARKERS)


def gpu_results(results_dir: str | Path | None = None) -> dict[str, Any]:
    """Only the result files measured on a GPU."""
    return {name: data for name, data in load_results(results_dir).items() if describes_gpu_run(data)}


def rows_of(data: Any) -> list[dict[str, Any]]:
    """The table of a result file: its `rows`, or a list at top level, or [] (then show it raw)."""
    if isinstance(data, list):
        return [r for r in data if isinstance(r, dict)]
    if isinstance(data, dict) and isinstance(data.get("rows"), list):
        return [r for r in data["rows"] if isinstance(r, dict)]
    return []


def format_rows(rows: list[dict[str, Any]]) -> str:
    """A plain-text table of dict rows (union of their keys, numbers to 4 significant digits)."""
    if not rows:
        return "(aucune ligne)"
    keys = list(dict.fromkeys(k for r in rows for k in r))

    def cell(v: Any) -> str:
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    widths = {k: max(len(k), *(len(cell(r.get(k, ""))) for r in rows)) for k in keys}
    lines = ["  ".join(k.ljust(widths[k]) for k in keys)]
    lines += ["  ".join(cell(r.get(k, "")).ljust(widths[k]) for k in keys) for r in rows]
    return "\n".join(lines)
