"""Run code a model wrote, with its tests, in a throwaway sandbox: `run_candidate(code, tests)`.

Each candidate gets its own Python process (`python -I -S`, no site-packages), a time
limit, a memory limit (RLIMIT_AS), no network and an empty folder that vanishes after it.
With bubblewrap (`bwrap`, as for the lab grader) it also sees no file of the repository:
`qlora_lab.sandboxing` builds that sandbox. Without bwrap (a laptop), the fallback is a
plain subprocess with the same rlimits in a temporary folder, inside `unshare -n` (no
network) when the kernel allows it: it can still *read* the user's files, which
`sandbox_kind()` says.

    outcome = run_candidate("def f(x):\\n    return x + 1\\n", "assert f(1) == 2\\n")
    outcome.passed, outcome.status     # True, 'passed'
"""

from __future__ import annotations

import functools
import math
import secrets
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass

from qlora_lab.sandboxing import Limits, run_in_sandbox, run_limited

DEFAULT_TIMEOUT_S = 5.0  # a correct body of the benchmark runs in milliseconds
DEFAULT_MEMORY_BYTES = 512 * 2**20  # address space: Python itself needs ~30 MiB
STATUSES = ("passed", "failed", "error", "timeout", "memory")

# The harness: reads `nonce` then the program on stdin, runs it, and prints the nonce only if
# every assert passed (so a program that exits early with status 0 does not pass).
HARNESS = r"""
import sys
nonce, source = sys.stdin.read().split("\n", 1)
try:
    exec(compile(source, "candidate.py", "exec"), {"__name__": "__candidate__"})
except AssertionError:
    sys.exit(3)
except MemoryError:
    sys.exit(4)
except BaseException as error:
    print(type(error).__name__, error, file=sys.stderr)
    sys.exit(5)
print(nonce)
"""
EXIT_STATUS = {3: "failed", 4: "memory", 5: "error"}


@dataclass(frozen=True)
class Outcome:
    """How a candidate ended: status in STATUSES, a short detail, wall seconds."""

    status: str
    detail: str = ""
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return self.status == "passed"


@functools.lru_cache(maxsize=1)
def sandbox_kind() -> str:
    """'bwrap' (isolated files and network), 'unshare' (no network only) or 'rlimits' (limits only)."""
    if shutil.which("bwrap"):
        code, _, _, _ = run_in_sandbox([sys.executable, "-I", "-S", "-c", "pass"], b"", _limits(10.0), [])
        if code == 0:
            return "bwrap"
    for prefix in (["unshare", "-n"], ["unshare", "-r", "-n"]):
        if shutil.which("unshare"):
            done = subprocess.run([*prefix, sys.executable, "-I", "-S", "-c", "pass"], capture_output=True)
            if done.returncode == 0:
                return "unshare" if prefix == ["unshare", "-n"] else "unshare-user"
    return "rlimits"


def _limits(timeout_s: float, memory_bytes: int = DEFAULT_MEMORY_BYTES) -> Limits:
    return Limits(wall_s=timeout_s, cpu_s=max(1, math.ceil(timeout_s)), memory_bytes=memory_bytes, processes=64,
                  file_bytes=2**20, folder_bytes=16 * 2**20)


def _run(stdin: bytes, limits: Limits) -> tuple[int | None, bytes, bytes, float]:
    """The harness in the best sandbox this machine offers."""
    argv = [sys.executable, "-I", "-S", "-c", HARNESS]
    kind = sandbox_kind()
    if kind == "bwrap":
        return run_in_sandbox(argv, stdin, limits, [])
    prefix = {"unshare": ["unshare", "-n"], "unshare-user": ["unshare", "-r", "-n"]}.get(kind, [])
    with tempfile.TemporaryDirectory(prefix="qlora-lab-candidate-") as folder:
        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": folder, "PYTHONDONTWRITEBYTECODE": "1"}
        return run_limited([*prefix, *argv], stdin, limits, cwd=folder, env=env)


def run_candidate(code: str, tests: str, timeout_s: float = DEFAULT_TIMEOUT_S,
                  memory_bytes: int = DEFAULT_MEMORY_BYTES) -> Outcome:
    """Run `code` then the `tests` asserts in a fresh sandboxed process; never raises for bad code.

    Args:
        code: the candidate (e.g. prompt + completion), Python source.
        tests: assert statements run after it, in the same namespace.
        timeout_s: wall-clock limit (the CPU limit is the same, rounded up).
        memory_bytes: address-space limit of the process.
    """
    nonce = secrets.token_hex(16)
    stdin = f"{nonce}\n{code}\n\n{tests}\n".encode()
    returncode, out, err, seconds = _run(stdin, _limits(timeout_s, memory_bytes))
    message = err.decode(errors="replace").strip().splitlines()
    detail = message[-1][:200] if message else ""
    if returncode is None:
        return Outcome("timeout", f"killed after {timeout_s:g} s", seconds)
    if returncode == 0 and nonce in out.decode(errors="replace"):
        return Outcome("passed", "", seconds)
    if returncode in EXIT_STATUS:
        return Outcome(EXIT_STATUS[returncode], detail, seconds)
    if returncode < 0:  # a signal: SIGXCPU for the CPU limit, SIGKILL...
        return Outcome("timeout" if -returncode in (9, 24) else "error", f"signal {-returncode}", seconds)
    return Outcome("error", detail or f"exit code {returncode} without the tests' end", seconds)
