"""Helpers of the tests that run `qlora-lab finetune` as a separate process (not a test module)."""

import json
import time
from pathlib import Path

from qlora_lab.finetune.rundir import read_metrics

TIMEOUT_S = 600


def wait_for_steps(output_dir: Path, n: int, timeout_s: float = TIMEOUT_S) -> None:
    """Block until the run in `output_dir` has logged `n` steps (the run is then past step n)."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        try:
            if len(read_metrics(output_dir)) >= n:
                return
        except json.JSONDecodeError:  # a line being written right now
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{output_dir} never reached {n} steps")
