"""Sandbox primitives: run a command in bubblewrap (`bwrap`) with resource limits.

Shared by the lab grader (`qlora_lab.grading.sandbox`, a student's notebook) and the skill
benchmark (`qlora_lab.finetune.code_runner`, code a model wrote): both run untrusted code.

What the command sees: a read-only system (/usr, /etc), the read-only Python and venv,
the read-only `qlora_lab` package, a fresh empty working folder and a private /tmp (both
in memory, of bounded size: nothing is written to the host's disk), no network (own
network namespace, loopback only), its own PID namespace (the whole process tree dies
with the sandbox), and no folder of the course: not labs/, not the repository, not its
.git. Run as root, the sandbox drops to the `nobody` user with no capability; otherwise
bwrap makes a user namespace. Limits (setrlimit, inherited by every process of the
sandbox): CPU seconds, address space, file size, number of processes. The wall clock is
watched from outside.
"""

from __future__ import annotations

import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

NOBODY = 65534
SANDBOX_HOME = "/tmp/copie"  # the working folder, as seen inside
PACKAGE_DIR = Path(__file__).resolve().parent  # qlora_lab/, bound read-only


class SandboxUnavailable(RuntimeError):
    """bwrap is missing or cannot create its namespaces here."""


@dataclass(frozen=True)
class Limits:
    """What one sandboxed command may use. wall_s is enforced from outside the sandbox."""

    wall_s: float
    cpu_s: int
    memory_bytes: int = 12 * 2**30
    processes: int = 256
    file_bytes: int = 256 * 2**20
    folder_bytes: int = 512 * 2**20  # size of the working folder and of /tmp (memory-backed)
    # Compute threads (OpenMP/MKL, so torch's): sandboxes running side by side share the cores;
    # more threads than cores makes torch's kernels spin against each other (several times slower).
    threads: int | None = None


def readonly_paths() -> list[str]:
    """Folders bound read-only: the interpreter, the venv, and the package alone."""
    paths = {Path(sys.prefix).resolve(), Path(sys.base_prefix).resolve(), PACKAGE_DIR}
    return [str(p) for p in sorted(paths) if p.exists()]


def namespace_args() -> list[str]:
    """Root drops to nobody (setpriv, after bwrap); others get a user namespace."""
    if os.geteuid() == 0:
        return ["--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
    return ["--unshare-user", "--uid", str(NOBODY), "--gid", str(NOBODY)]


def drop_privileges() -> list[str]:
    """The setpriv prefix that makes root `nobody` inside the sandbox (nothing otherwise)."""
    if os.geteuid() != 0:
        return []
    return ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--"]


def bwrap_command(limits: Limits, hidden: list[Path], argv: list[str]) -> list[str]:
    """The bwrap command line running `argv` in a fresh memory-backed SANDBOX_HOME."""
    bwrap = shutil.which("bwrap") or "bwrap"
    command = [bwrap, "--ro-bind", "/usr", "/usr", "--ro-bind", "/etc", "/etc"]
    for link in ("bin", "lib", "lib64", "sbin"):
        if os.path.islink(f"/{link}"):
            command += ["--symlink", os.readlink(f"/{link}"), f"/{link}"]
    size = str(limits.folder_bytes)
    # /tmp first: the read-only binds come after it, so a venv or a checkout under /tmp stays visible
    command += ["--proc", "/proc", "--dev", "/dev", "--perms", "1777", "--size", size, "--tmpfs", "/tmp"]
    for path in readonly_paths():
        parents = [p for p in reversed(Path(path).parents) if str(p) not in ("/", "/tmp")]
        for parent in parents:
            command += ["--perms", "0755", "--dir", str(parent)]
        command += ["--ro-bind", path, path]
    for path in hidden:  # in case a labs folder lies under a bound path
        command += ["--tmpfs", str(path)]
    env = {"HOME": SANDBOX_HOME, "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "LANG": "C.UTF-8",
           "JUPYTER_RUNTIME_DIR": f"{SANDBOX_HOME}/.jupyter", "MPLCONFIGDIR": f"{SANDBOX_HOME}/.mpl",
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "XDG_CACHE_HOME": f"{SANDBOX_HOME}/.cache",
           "PYTHONDONTWRITEBYTECODE": "1"}
    if limits.threads is not None:
        env |= {"OMP_NUM_THREADS": str(limits.threads), "MKL_NUM_THREADS": str(limits.threads)}
    command += ["--perms", "1777", "--size", size, "--tmpfs", SANDBOX_HOME, "--chdir", SANDBOX_HOME,
                "--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts",
                "--unshare-cgroup-try", "--die-with-parent", "--new-session", "--clearenv",
                *namespace_args()]
    for key, value in env.items():
        command += ["--setenv", key, value]
    return command + ["--", *drop_privileges(), *argv]


def set_limits(limits: Limits):
    """A preexec_fn applying the rlimits every process of the sandbox inherits."""

    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_s, limits.cpu_s + 5))
        resource.setrlimit(resource.RLIMIT_AS, (limits.memory_bytes, limits.memory_bytes))
        resource.setrlimit(resource.RLIMIT_FSIZE, (limits.file_bytes, limits.file_bytes))
        resource.setrlimit(resource.RLIMIT_NPROC, (limits.processes, limits.processes))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    return apply


def kill_tree(process: subprocess.Popen) -> None:
    """Kill the process group (with bwrap, its PID namespace dies with it)."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()


def run_limited(command: list[str], stdin: bytes, limits: Limits, cwd: str | None = None,
                env: dict[str, str] | None = None) -> tuple[int | None, bytes, bytes, float]:
    """Run `command` under `limits` in its own session; (returncode or None on wall timeout, stdout, stderr, seconds).

    Output goes to files (not pipes), so a process that floods its output cannot block us.
    """
    with tempfile.TemporaryDirectory(prefix="qlora-lab-sandbox-") as tmp:  # outside the sandbox
        out_path, err_path = Path(tmp) / "out", Path(tmp) / "err"
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            start = time.monotonic()
            process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=out, stderr=err, cwd=cwd, env=env,
                                       start_new_session=True, preexec_fn=set_limits(limits))
            try:
                process.communicate(stdin, timeout=limits.wall_s)
                returncode = process.returncode
            except subprocess.TimeoutExpired:
                returncode = None
            finally:
                kill_tree(process)
            seconds = time.monotonic() - start
        return returncode, out_path.read_bytes()[: limits.file_bytes], err_path.read_bytes()[-4000:], seconds


def run_in_sandbox(argv: list[str], stdin: bytes, limits: Limits, hidden: list[Path]) -> tuple[int | None, bytes, bytes, float]:
    """Run `argv` sandboxed in a fresh empty folder; (returncode or None on wall timeout, stdout, stderr, seconds)."""
    return run_limited(bwrap_command(limits, hidden, argv), stdin, limits)


def check_sandbox(hidden: list[Path] | None = None) -> None:
    """Raise SandboxUnavailable (one line) unless a sandboxed Python starts and sees no hidden file."""
    if shutil.which("bwrap") is None:
        raise SandboxUnavailable("bubblewrap (bwrap) is not installed: run `make sandbox` "
                                 "(or `sudo apt-get install bubblewrap`); grading refuses to run unsandboxed")
    hidden = hidden or []
    probe = f"import os, sys; sys.exit(any(os.listdir(p) for p in {[str(p) for p in hidden]!r} if os.path.isdir(p)))"
    try:
        code, _, err, _ = run_in_sandbox([sys.executable, "-c", probe], b"", Limits(wall_s=60, cpu_s=60), hidden)
    except OSError as error:
        raise SandboxUnavailable(f"the sandbox (bwrap) cannot start: {error}; grading refuses to run unsandboxed") from None
    if code != 0:
        last = (err.decode(errors="replace").strip().splitlines() or ["no message"])[-1]
        raise SandboxUnavailable(f"the sandbox (bwrap) cannot start here: {last}; grading refuses to run unsandboxed")
