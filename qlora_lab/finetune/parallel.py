"""Data parallelism inside one fine-tune, with Hugging Face Accelerate: DDP, and FSDP with a 4-bit base.

Each process trains on its own slice of every global batch; DDP averages the adapter
gradients with one all-reduce per step, so every process holds the same adapters. FSDP
also shards the (4-bit) weights, gradients and optimizer states across the processes.
On a machine without GPU the processes talk through gloo (Accelerate's multi-CPU mode).
Starting the processes is the launcher's job (`qlora_lab.finetune.launch`).
"""

from __future__ import annotations

import hashlib
import os
from datetime import timedelta

import torch

from qlora_lab.finetune.config import DEFAULT_TIMEOUT_S


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


def inside_launch() -> bool:
    """True in a process started by `accelerate launch`/torchrun (it must not launch again)."""
    return "LOCAL_RANK" in os.environ


def is_main_process() -> bool:
    """Rank 0, or the only process: the one that prints and writes."""
    return int(os.environ.get("RANK", "0")) == 0


def end_process_group() -> None:
    """Leave the process group cleanly (torch warns at exit otherwise)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


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


def gather_ranks(accelerator, model, step: int, examples: list[int], loss: float, tokens: int) -> dict:
    """Every process's examples, loss and adapter digest for this step, gathered on all of them.

    The step's loss is the processes' mean, as DDP averages their gradients. Under DDP the
    digests must be equal: if not, the replicas diverged and the run stops.
    """
    from accelerate.utils import gather_object

    digest = None if is_fsdp(accelerator) else parameters_digest(model)
    ranks = gather_object([{"rank": accelerator.process_index, "examples": examples, "loss": loss,
                            "tokens": tokens, "digest": digest}])
    if digest is not None and len({r["digest"] for r in ranks}) > 1:
        raise RuntimeError(f"step {step}: the processes' adapters differ ({[r['digest'][:8] for r in ranks]}); "
                           "gradients were not averaged the same way everywhere")
    return {"loss": sum(r["loss"] for r in ranks) / len(ranks), "tokens": sum(r["tokens"] for r in ranks), "ranks": ranks}
