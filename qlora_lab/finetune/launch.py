"""Start `qlora-lab finetune` in other processes: argv in, exit code (or the run's files) out.

    launch(["--mode", "qlora", "--max-steps", "40"], num_processes=2)      # DDP, prints as it goes
    finetune_in_subprocess(FinetuneConfig(max_steps=10), num_processes=2)  # from a notebook

The one way a fine-tune is started in a subprocess: used by the CLI's `--num-processes`,
by `compare` (one process per mode, so each peak memory is its own) and by the tests.
Like TRL's `accelerate_launcher`, it knows a module and its argv, nothing of the trainer:
the trainer's results are read back from the run directory (`qlora_lab.finetune.rundir`).
"""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

from qlora_lab.finetune.config import FinetuneConfig
from qlora_lab.finetune.rundir import last_checkpoint, read_metrics, read_summary
from qlora_lab.paths import REPO_DIR

ACCELERATE_CONFIGS = REPO_DIR / "configs" / "accelerate"
CLI_MODULE = "qlora_lab.cli"


def free_port() -> int:
    """A TCP port nobody listens on, for the processes' rendezvous (two runs can coexist)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_command(num_processes: int | None, finetune_args: list[str], config_file: str | Path | None = None,
                   port: int | None = None) -> list[str]:
    """The command that runs `qlora-lab finetune finetune_args`.

    One process without a config file: plain `python -m qlora_lab.cli finetune`. Otherwise
    `accelerate launch` on `num_processes` processes; without a config file they do plain
    DDP (multi-GPU, or multi-CPU on gloo); `num_processes=None` takes the config file's count.
    """
    if num_processes is not None and num_processes < 1:
        raise ValueError(f"num_processes={num_processes} must be at least 1")
    finetune = ["-m", CLI_MODULE, "finetune", *finetune_args]
    if config_file is None and (num_processes or 1) == 1:
        return [sys.executable, *finetune]
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_machines", "1",
           "--main_process_port", str(port or free_port())]
    if num_processes is not None:
        cmd += ["--num_processes", str(num_processes)]
    if config_file is not None:
        if not Path(config_file).is_file():
            raise ValueError(f"accelerate config {str(config_file)!r} does not exist "
                             f"(examples: {', '.join(p.name for p in sorted(ACCELERATE_CONFIGS.glob('*.yaml')))} "
                             f"in {ACCELERATE_CONFIGS})")
        cmd += ["--config_file", str(config_file)]
    else:
        cmd += ["--mixed_precision", "no", "--dynamo_backend", "no", "--multi_gpu"]
        # --multi_gpu is a torchrun-style launch; without CUDA our Accelerator picks gloo
    return cmd + finetune


def launch_env(num_processes: int | None) -> dict[str, str]:
    """The environment of the launched processes."""
    env = dict(os.environ)
    if not torch.cuda.is_available() and (num_processes or 1) > 1:
        # each CPU process gets its share of the cores instead of all of them fighting over every core
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // num_processes)))
    return env


def launch(finetune_args: list[str], num_processes: int | None = None, config_file: str | Path | None = None,
           output_dir: str | Path | None = None) -> int:
    """Run the fine-tune in the foreground (its output goes to ours); on failure, say where to look."""
    cmd = launch_command(num_processes, finetune_args, config_file)
    print("launching:", shlex.join(cmd), flush=True)
    process = subprocess.Popen(cmd, env=launch_env(num_processes))
    code, interrupted = wait_noting_ctrl_c(process)
    saved = last_checkpoint(output_dir) if output_dir else None
    where = f" The last checkpoint is {saved}: continue with --resume." if saved else ""
    if interrupted:
        print(f"qlora-lab finetune: interrupted.{where}", file=sys.stderr)
        return 130
    if code != 0:
        print(f"qlora-lab finetune: the multi-process run failed ({describe_exit(code)}). The 'Root Cause' "
              f"above names the process (rank) that failed first; the others were stopped. (A 'Timed out' "
              f"error there means another process stopped answering.){where}", file=sys.stderr)
    return code


def wait_noting_ctrl_c(process: subprocess.Popen) -> tuple[int, bool]:
    """Wait for the launcher; (exit code, whether Ctrl-C came meanwhile).

    The processes get the Ctrl-C too (the main one saves a checkpoint), and the launcher then
    exits with its own code (1 from torchrun's SignalException), so the Ctrl-C is noted here by
    a handler rather than read from that code or from a KeyboardInterrupt that may land elsewhere.
    """
    seen: list[int] = []
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, lambda signum, frame: seen.append(signum)) if in_main_thread else None
    try:
        code = process.wait()
    except KeyboardInterrupt:  # a handler installed by the caller took over: same meaning
        seen.append(signal.SIGINT)
        code = process.wait()
    finally:
        if in_main_thread:
            signal.signal(signal.SIGINT, previous)
    return code, bool(seen)


def describe_exit(code: int) -> str:
    if code < 0:
        return f"killed by signal {signal.Signals(-code).name}"
    return f"exit code {code}"


def run_captured(cmd: list[str], env: dict[str, str] | None = None, timeout: float | None = None) -> str:
    """Run `cmd` to the end; its stdout, or a RuntimeError that ends with its stderr."""
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{shlex.join(cmd[1:])} failed ({describe_exit(proc.returncode)}):\n{proc.stderr[-3000:]}")
    return proc.stdout


def finetune_in_subprocess(config: FinetuneConfig, num_processes: int | None = None,
                           config_file: str | Path | None = None) -> dict:
    """`qlora-lab finetune` for `config` in its own process tree; its summary, metrics and wall time.

    With `num_processes` > 1 (or a config file) the run goes through `accelerate launch`:
    the way to try data parallelism from a notebook, whose own process cannot be the launcher.

    Raises:
        RuntimeError: the run failed (the end of its output says why).
    """
    cmd = launch_command(num_processes, config.to_argv(), config_file)
    started = time.perf_counter()
    run_captured(cmd, env=launch_env(num_processes))
    return {"summary": read_summary(config.output_dir), "metrics": read_metrics(config.output_dir),
            "wall_s": time.perf_counter() - started}
