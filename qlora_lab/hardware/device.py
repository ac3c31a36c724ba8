"""Pick the compute device once, at call time (never at import time)."""

import torch


def default_device() -> torch.device:
    """CUDA when a GPU is visible, else CPU: the same code runs on a laptop and a GPU box."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def default_compute_dtype(device: torch.device | None = None) -> torch.dtype:
    """bfloat16 where it is supported (recent GPUs, and CPUs, where it is emulated fast enough).

    bf16 keeps fp32's exponent range, so training needs no loss scaling (unlike fp16).
    """
    device = device or default_device()
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return torch.float16
    return torch.bfloat16
