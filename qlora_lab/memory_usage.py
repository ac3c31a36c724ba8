"""Peak memory of the running process, measured the way each device allows.

GPU: `torch.cuda.max_memory_allocated` (tensors only, resettable). CPU: the process's peak
resident set size (`ru_maxrss`), which also counts Python and the libraries and cannot be
reset: compare modes in separate processes (`qlora_lab.compare` does).
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
