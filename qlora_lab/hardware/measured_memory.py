"""Memory of the running process, measured the way each device allows (estimates: `qlora_lab.sizing.memory`).

GPU: `torch.cuda.max_memory_allocated` (tensors only, resettable). CPU: the process's peak
resident set size (`ru_maxrss`), which also counts Python and the libraries and cannot be
reset: compare modes in separate processes (`qlora_lab.finetune.compare` does).
"""

import resource
import sys

import torch

MB = 2**20


def reset_peak_memory(device: torch.device) -> None:
    """Start a new peak on GPU; a no-op on CPU, where the peak lasts the process' lifetime."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory in MiB: CUDA max allocated on GPU, process peak RSS on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / MB
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return peak / MB if sys.platform == "darwin" else peak / 1024


def current_memory_mb() -> float:
    """Peak allocated CUDA memory when a GPU is used, else the resident memory of this process now."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / MB
    import psutil

    return psutil.Process().memory_info().rss / MB


def available_memory_bytes(device=None) -> int:
    """Free memory where training would run: free CUDA memory on a GPU, available RAM on CPU."""
    from qlora_lab.hardware.device import default_device

    device = torch.device(device) if device is not None else default_device()
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    import psutil

    return int(psutil.virtual_memory().available)


def saved_activation_bytes(model: torch.nn.Module, input_ids) -> int:
    """Bytes of the tensors autograd saves for backward in one forward pass (weights excluded).

    Each storage is counted once, however many ops save it.
    """
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in params:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        model(input_ids, labels=input_ids)
    return sum(saved.values())
