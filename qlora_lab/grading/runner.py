"""Runs INSIDE the sandbox: execute one prepared notebook, report each cell's outputs.

    python -m qlora_lab.grading.runner < job.json > results.jsonl

The job (read from stdin, never from a file the student's code could read) is
{"notebook": <nbformat dict>, "timeouts": [seconds per cell]}. Every executed cell is
reported at once as one JSON line {"index", "outputs", "seconds"}, so the cells that ran
before a crash still count; the last line is {"status": "ok" | "timeout" | "dead_kernel" |
"error", "detail"}. The kernel does not inherit this report channel (its stdout is
/dev/null). Nothing here is trusted by the grader: the lines are parsed as untrusted data.
"""

from __future__ import annotations

import json
import os
import sys
import time

# After a timeout, a kernel must answer this probe within PROBE_TIMEOUT_S: a kernel that
# ignored the interrupt is stuck, and the remaining cells cannot be graded.
PROBE_TIMEOUT_S = 5


def _report_channel():
    """A private copy of stdout for the reports; fd 1 becomes /dev/null for the kernel."""
    channel = os.fdopen(os.dup(1), "w", buffering=1)  # os.dup: not inherited by children
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    return channel


def _answers_probe(client, index: int) -> bool:
    """True when the kernel answers a trivial cell (it is not stuck after a timeout)."""
    import nbformat

    probe = nbformat.v4.new_code_cell("pass")
    client.timeout_func = None
    client.timeout = PROBE_TIMEOUT_S
    start = time.monotonic()
    try:
        client.execute_cell(probe, index)
    except Exception:  # noqa: BLE001 - a dead or stuck kernel, whatever nbclient raises
        return False
    return time.monotonic() - start < PROBE_TIMEOUT_S


def execute(job: dict, report) -> str:
    """Execute the job's cells one by one, writing a report line after each one."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import DeadKernelError

    nb = nbformat.from_dict(job["notebook"])
    timeouts = job["timeouts"]
    error = {"ename": "CellTimeoutError", "evalue": "délai dépassé", "traceback": []}
    client = NotebookClient(nb, kernel_name="python3", allow_errors=True, interrupt_on_timeout=True,
                            error_on_timeout=error, record_timing=False, shutdown_kernel="immediate")
    with client.setup_kernel():
        for index, cell in enumerate(nb.cells):
            if cell.cell_type != "code":
                continue
            client.timeout = timeouts[index]
            start = time.monotonic()
            try:
                client.execute_cell(cell, index)
            except DeadKernelError:
                return "dead_kernel"
            seconds = time.monotonic() - start
            report.write(json.dumps({"index": index, "outputs": cell.outputs, "seconds": seconds}) + "\n")
            if seconds >= timeouts[index] and not _answers_probe(client, index):
                return "timeout"
    return "ok"


def main() -> int:
    report = _report_channel()
    job = json.loads(sys.stdin.read())
    try:
        status = execute(job, report)
    except Exception as error:  # noqa: BLE001 - reported to the grader, which flags the run
        report.write(json.dumps({"status": "error", "detail": f"{type(error).__name__}: {error}"[:500]}) + "\n")
        return 1
    report.write(json.dumps({"status": status}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
