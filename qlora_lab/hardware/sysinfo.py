"""What this machine can do for the course, measured: the guide's "vérifier la configuration".

GPU name, memory and compute capability (or the CPU model and its vector extensions),
library versions, and whether 4-bit really works here: a bitsandbytes NF4 round trip and a
`Linear4bit` forward + backward are run, not assumed.
"""

from __future__ import annotations

import platform
from importlib.metadata import PackageNotFoundError, version

import torch

LIBRARIES = ("torch", "transformers", "peft", "bitsandbytes", "accelerate")
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_fp16", "amx_tile")


def cpu_model_and_flags() -> tuple[str, list[str]]:
    """CPU name and the vector extensions that matter for 4-bit/bf16 kernels (Linux)."""
    name, flags = platform.processor() or platform.machine(), set()
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                name = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    except OSError:
        pass
    return name, [f for f in CPU_FLAGS if f in flags]


def library_versions() -> dict[str, str]:
    versions = {}
    for lib in LIBRARIES:
        try:
            versions[lib] = version(lib)
        except PackageNotFoundError:
            versions[lib] = "absent"
    return versions


def check_4bit(device: torch.device) -> tuple[bool, str]:
    """Run a real NF4 round trip and a Linear4bit forward/backward; (works, detail)."""
    try:
        from qlora_lab.backends import import_bnb

        bnb = import_bnb()
        x = torch.randn(64, 64, device=device)
        packed, state = bnb.functional.quantize_4bit(x, quant_type="nf4", compress_statistics=True)
        error = (bnb.functional.dequantize_4bit(packed, state) - x).abs().mean().item()
        layer = bnb.nn.Linear4bit(64, 64, bias=False, quant_type="nf4", compute_dtype=torch.bfloat16)
        layer.weight = bnb.nn.Params4bit(torch.randn(64, 64), requires_grad=False, quant_type="nf4")
        layer = layer.to(device)
        inputs = torch.randn(4, 64, device=device, requires_grad=True)
        layer(inputs).float().sum().backward()
        if inputs.grad is None or not torch.isfinite(inputs.grad).all():
            return False, "Linear4bit backward gave no finite gradient"
        return True, f"NF4 round-trip mean error {error:.4f}; Linear4bit forward+backward OK"
    except Exception as error:  # the point is to report, whatever breaks
        return False, f"{type(error).__name__}: {error}"


def collect_sysinfo() -> dict:
    """Everything `format_sysinfo` prints, as a dict (JSON-serialisable)."""
    from qlora_lab.hardware.device import default_compute_dtype, default_device

    device = default_device()
    info: dict = {"python": platform.python_version(), "platform": platform.platform(),
                  "device": str(device), "libraries": library_versions(), "cpu_threads": torch.get_num_threads()}
    info["cpu_model"], info["cpu_flags"] = cpu_model_and_flags()
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info["gpu"] = {"name": props.name, "memory_gib": round(props.total_memory / 2**30, 1),
                       "compute_capability": f"{props.major}.{props.minor}",
                       "bf16_supported": torch.cuda.is_bf16_supported()}
    info["compute_dtype"] = str(default_compute_dtype(device)).replace("torch.", "")
    info["four_bit_works"], info["four_bit_detail"] = check_4bit(device)
    return info


def format_sysinfo(info: dict) -> str:
    """A short human-readable report."""
    lines = [f"Python {info['python']} on {info['platform']}", f"device: {info['device']}"]
    if "gpu" in info:
        g = info["gpu"]
        lines.append(f"GPU: {g['name']}, {g['memory_gib']} GiB, compute capability {g['compute_capability']}")
    lines.append(f"CPU: {info['cpu_model']} ({info['cpu_threads']} threads; flags: {', '.join(info['cpu_flags']) or 'none of ' + ', '.join(CPU_FLAGS)})")
    lines.append("versions: " + ", ".join(f"{k} {v}" for k, v in info["libraries"].items()))
    lines.append(f"compute dtype: {info['compute_dtype']}")
    lines.append(f"4-bit (bitsandbytes): {'yes' if info['four_bit_works'] else 'NO'} — {info['four_bit_detail']}")
    return "\n".join(lines)
