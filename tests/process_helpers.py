"""Helpers of the tests that run `qlora-lab finetune` as a separate process (not a test module)."""

import time
from pathlib import Path

TIMEOUT_S = 600


def wait_for_steps(metrics: Path, n: int, timeout_s: float = TIMEOUT_S) -> None:
    """Block until the run's metrics.jsonl holds `n` steps (the run is then past step n)."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= n:
            return
        time.sleep(0.2)
    raise TimeoutError(f"{metrics} never reached {n} steps")
