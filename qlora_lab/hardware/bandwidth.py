"""Memory bandwidth of this machine, measured: the ceiling on how fast a model decodes.

Generating one token at batch 1 reads every weight once and does ~2 FLOPs per weight:
far too little arithmetic to keep the cores busy, so the time is set by how fast the
weights come from memory (decoding is *memory-bound*). Copying a tensor much larger than
the caches measures that rate: a copy reads n bytes and writes n bytes.

    from qlora_lab.hardware.bandwidth import measure_copy_bandwidth
    measure_copy_bandwidth()   # bytes/s, e.g. 1.5e10 on a laptop, 3e12 on an H100's HBM
"""

from __future__ import annotations

import time

import torch

DEFAULT_BYTES = 256 * 2**20  # 256 MiB: far larger than any CPU cache (an EPYC's L3 is 32 MiB per CCD)


def measure_copy_bandwidth(n_bytes: int = DEFAULT_BYTES, repeats: int = 5, device: str | torch.device = "cpu") -> float:
    """Best of `repeats` copies of an `n_bytes` tensor, in bytes moved per second (read + write).

    The best run, not the mean: other programs on the machine only ever slow a copy down.

    Raises:
        ValueError: n_bytes or repeats is not positive.
    """
    if n_bytes <= 0 or repeats <= 0:
        raise ValueError(f"n_bytes={n_bytes} and repeats={repeats} must be positive")
    device = torch.device(device)
    src = torch.ones(n_bytes // 4, dtype=torch.float32, device=device)  # touched: pages really allocated
    dst = torch.empty_like(src)
    dst.copy_(src)  # warm-up: first-touch page faults are not bandwidth
    best = float("inf")
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        dst.copy_(src)
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * src.numel() * src.element_size() / best


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
