"""Data-parallel fine-tuning with Hugging Face Accelerate: DDP, and FSDP with a 4-bit base.

    qlora-lab finetune --num-processes 2 ...                     # re-launches itself (below)
    accelerate launch --config_file configs/accelerate/ddp.yaml -m qlora_lab.cli finetune ...

Each process trains on its own slice of every global batch; DDP averages the adapter
gradients with one all-reduce per step, so every process holds the same adapters. FSDP
also shards the (4-bit) weights, gradients and optimizer states across the processes.
On a machine without GPU the processes talk through gloo (Accelerate's multi-CPU mode).
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import torch

from qlora_lab.paths import REPO_DIR

ACCELERATE_CONFIGS = REPO_DIR / "configs" / "accelerate"
DEFAULT_TIMEOUT_S = 600  # a collective waiting longer than this means another process is stuck


def make_accelerator(timeout_s: int = DEFAULT_TIMEOUT_S):
    """The run's `Accelerator`: one process, or one of N started by `accelerate launch`.

    Without CUDA, Accelerate only goes multi-process when told the run is on CPU (then
    it uses gloo). Mixed precision stays ours (bf16 autocast) and so does device placement
    (`load_model` puts 4-bit weights where they belong). The process-group timeout turns a
    stuck or dead peer into an error instead of an endless wait.

    Raises:
        ValueError: an FSDP launch on a machine without CUDA.
    """
    from accelerate import Accelerator
    from accelerate.utils import InitProcessGroupKwargs

    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true" and not torch.cuda.is_available():
        raise ValueError("FSDP needs GPUs (Accelerate's FSDP plugin refuses the CPU): on this machine train "
                         "with DDP (--num-processes N without --accelerate-config, or configs/accelerate/ddp.yaml)")
    handlers = [InitProcessGroupKwargs(timeout=timedelta(seconds=timeout_s))]
    return Accelerator(cpu=not torch.cuda.is_available(), device_placement=False, kwargs_handlers=handlers)


def is_fsdp(accelerator) -> bool:
    from accelerate.utils import DistributedType

    return accelerator.distributed_type == DistributedType.FSDP


def rank_slice(global_batch: list[int], rank: int, world_size: int) -> list[int]:
    """This process's contiguous share of a global batch (which must divide evenly)."""
    if len(global_batch) % world_size:
        raise ValueError(f"a global batch of {len(global_batch)} examples cannot be split over {world_size} processes")
    share = len(global_batch) // world_size
    return global_batch[rank * share : (rank + 1) * share]


def evenly_sharded(items: list, rank: int, world_size: int) -> list:
    """Every process gets the same number of items.

    Each forward of a DDP model broadcasts its buffers and each FSDP forward gathers the
    weights: both are collective, so every process must run as many forwards.
    """
    usable = len(items) - len(items) % world_size
    if usable == 0:
        raise ValueError(f"{len(items)} validation examples cannot be shared by {world_size} processes")
    return items[:usable][rank::world_size]


def parameters_digest(model) -> str:
    """SHA-1 of every trainable parameter: equal digests mean bit-identical replicas.

    A parameter sharded by FSDP2 (a DTensor) is gathered whole first: that is a collective,
    so then every process must call this.
    """
    digest = hashlib.sha1()
    for name, p in model.named_parameters():
        if p.requires_grad:
            whole = p.full_tensor() if hasattr(p, "full_tensor") else p
            digest.update(name.removeprefix("module.").encode())
            digest.update(whole.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()


# --- launching ------------------------------------------------------------------------------

def free_port() -> int:
    """A TCP port nobody listens on, for the processes' rendezvous (two runs can coexist)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_command(num_processes: int | None, finetune_args: list[str], config_file: str | Path | None = None,
                   port: int | None = None) -> list[str]:
    """`accelerate launch` of `qlora_lab.cli finetune` on `num_processes` processes.

    Without a config file the processes do plain DDP (multi-GPU, or multi-CPU on gloo);
    `num_processes=None` takes the config file's count.
    """
    if num_processes is None and config_file is None:
        raise ValueError("give the number of processes, an Accelerate config file, or both")
    if num_processes is not None and num_processes < 1:
        raise ValueError(f"num_processes={num_processes} must be at least 1")
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
        cmd += ["--mixed_precision", "no", "--dynamo_backend", "no"]
        if num_processes > 1:
            cmd += ["--multi_gpu"]  # torchrun-style launch; without CUDA our Accelerator picks gloo
    return cmd + ["-m", "qlora_lab.cli", "finetune", *finetune_args]


def launch(num_processes: int | None, finetune_args: list[str], config_file: str | Path | None = None,
           output_dir: str | Path | None = None) -> int:
    """Run the launch command; on failure, say which way to look and how to resume."""
    cmd = launch_command(num_processes, finetune_args, config_file)
    env = dict(os.environ)
    if not torch.cuda.is_available():
        # each CPU process gets its share of the cores instead of all of them fighting over every core
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // (num_processes or 2))))
    print("launching:", shlex.join(cmd), flush=True)
    process = subprocess.Popen(cmd, env=env)
    interrupted = False
    try:
        code = process.wait()
    except KeyboardInterrupt:  # the processes got the Ctrl-C too: the main one saves a checkpoint
        interrupted = True
        code = process.wait()
    from qlora_lab.finetune import last_checkpoint  # finetune imports this module: import late

    saved = last_checkpoint(Path(output_dir)) if output_dir else None
    where = f" The last checkpoint is {saved}: continue with --resume." if saved else ""
    if interrupted:
        print(f"qlora-lab finetune: interrupted.{where}", file=sys.stderr)
        return 130
    if code != 0:
        print(f"qlora-lab finetune: the multi-process run failed ({describe_exit(code)}). The 'Root Cause' "
              f"above names the process (rank) that failed first; the others were stopped. (A 'Timed out' "
              f"error there means another process stopped answering.){where}", file=sys.stderr)
    return code


def describe_exit(code: int) -> str:
    if code < 0:
        return f"killed by signal {signal.Signals(-code).name}"
    return f"exit code {code}"


def finetune_in_subprocess(config, num_processes: int | None = None, config_file: str | Path | None = None) -> dict:
    """`qlora-lab finetune` for `config` in its own process tree; its summary, metrics and wall time.

    With `num_processes` > 1 (or a config file) the run goes through `accelerate launch`:
    the way to try data parallelism from a notebook, whose own process cannot be the launcher.

    Raises:
        RuntimeError: the run failed (the end of its output says why).
    """
    from qlora_lab.finetune_cli import args_from_config

    cmd = [sys.executable, "-m", "qlora_lab.cli", "finetune", *args_from_config(config)]
    if num_processes is not None:
        cmd += ["--num-processes", str(num_processes)]
    if config_file is not None:
        cmd += ["--accelerate-config", str(config_file)]
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"the fine-tune failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    output_dir = Path(config.output_dir)
    metrics = [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return {"summary": json.loads((output_dir / "summary.json").read_text()), "metrics": metrics,
            "wall_s": time.perf_counter() - started}
