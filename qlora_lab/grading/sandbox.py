"""One sandbox per submission: a student's notebook run by `qlora_lab.sandboxing` (bubblewrap).

The primitives (Limits, bwrap_command, run_in_sandbox, check_sandbox) live in the base
layer, `qlora_lab.sandboxing`, shared with the skill benchmark's code runner; this module
adds what is grading's own: running a prepared notebook and reading its report.

When bwrap cannot start, `check_sandbox` raises SandboxUnavailable with one line: grading
never runs a student's notebook unsandboxed.
"""

from __future__ import annotations

import json
import os
import shutil  # noqa: F401  (tests patch sandbox.shutil.which to simulate a machine without bwrap)
import sys
from dataclasses import dataclass, field
from pathlib import Path

from qlora_lab.sandboxing import (NOBODY, SANDBOX_HOME, Limits, SandboxUnavailable, bwrap_command,  # noqa: F401
                                  check_sandbox, run_in_sandbox)


@dataclass
class SandboxRun:
    """What came back: the runner's report lines (untrusted data) and how it ended."""

    records: list[dict] = field(default_factory=list)
    status: str = "ok"  # ok | timeout | dead_kernel | error | killed | wall_timeout
    seconds: float = 0.0
    detail: str = ""


def run_notebook(notebook: dict, timeouts: list[float], hidden: list[Path], threads: int | None = None) -> SandboxRun:
    """Execute a prepared notebook in the sandbox (qlora_lab.grading.runner) and parse its report.

    `threads`: compute threads of the kernel (its share of the cores when copies are graded side by side).
    """
    wall = sum(t for t, c in zip(timeouts, notebook["cells"]) if c["cell_type"] == "code") + 60
    limits = Limits(wall_s=wall, cpu_s=int(wall * (os.cpu_count() or 1)), threads=threads)
    job = json.dumps({"notebook": notebook, "timeouts": timeouts}).encode()
    argv = [sys.executable, "-m", "qlora_lab.grading.runner"]
    code, out, err, seconds = run_in_sandbox(argv, job, limits, hidden)
    run = SandboxRun(seconds=seconds)
    for line in out.decode(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and isinstance(record.get("index"), int):
            run.records.append(record)
        elif isinstance(record, dict) and isinstance(record.get("status"), str):
            run.status, run.detail = record["status"], str(record.get("detail", ""))[:500]
    if code is None:
        run.status = "wall_timeout"
    elif code < 0 or (code != 0 and run.status == "ok"):
        run.status, run.detail = "killed", f"exit code {code}: " + err.decode(errors="replace")[-300:]
    return run
