"""Counting FLOPs two ways: by formula and by `torch.utils.flop_counter.FlopCounterMode`.

FLOPs (a *count* of floating-point operations) and FLOP/s or FLOPS (a *rate*) are kept
apart everywhere: a model costs FLOPs per token, a GPU delivers FLOP/s.

Formulas (N = parameters of the matmuls, embeddings excluded; T = context length;
L layers, H heads of size Q, d = H·Q):
    forward  ≈ 2N + 2·L·T·d per token        # Kaplan et al. 2020, table 1
    training ≈ 6N + 12·L·H·Q·T per token     # PaLM (Chowdhery et al. 2022), appendix B
    LoRA     ≈ 4N per token (no weight gradients for the frozen base)

FlopCounterMode counts matmuls (mm, bmm, conv, and the CUDA attention kernels) at
2 FLOPs per multiply-add; elementwise ops (norms, activations, softmax) are ignored.

    from qlora_lab.sizing.flops import count_flops, forward_flops_per_token
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

GPT3_N_PARAMS = 175e9  # Brown et al. 2020
RESNET50_REFERENCE_GMACS = 4.1  # ResNet-50 v1.5 (stride on the 3x3), as counted by fvcore/ptflops; He et al. 2016 table 1 gives 3.8e9 multiply-adds for v1


# ----------------------------------------------------------------------------- formulas


def forward_flops_per_token(n_params: float, n_layer: int = 0, n_ctx: int = 0, d_model: int = 0) -> float:
    """Kaplan et al. 2020 (table 1): C_forward ≈ 2N + 2·n_layer·n_ctx·d_attn FLOPs per token."""
    return 2 * n_params + 2 * n_layer * n_ctx * d_model


def training_flops_per_token(n_params: float, n_layer: int = 0, n_heads: int = 0, head_dim: int = 0, seq_len: int = 0) -> float:
    """PaLM appendix B (also nanoGPT's `estimate_mfu`): 6N + 12·L·H·Q·T FLOPs per token."""
    return 6 * n_params + 12 * n_layer * n_heads * head_dim * seq_len


def lora_training_flops_per_token(n_params: float) -> float:
    """LoRA/QLoRA training ≈ 4N per token: forward 2N + input gradients 2N, no weight gradients."""
    return 4 * n_params


def exact_decoder_forward_flops(n_matmul_params: float, n_layer: int, d_model: int, seq_len: int) -> float:
    """FLOPs of one forward pass over `seq_len` tokens as FlopCounterMode counts them.

    Every weight is used once per token (2 FLOPs per multiply-add), and each layer computes
    the full T×T products QKᵀ and A·V: 2·T²·d each. (A causal model could skip half of
    them; Kaplan's 2·L·T·d per token is that causal average.)
    """
    return 2 * n_matmul_params * seq_len + 4 * n_layer * seq_len**2 * d_model


# ------------------------------------------------------------------- measured counts


def count_flops(fn: Callable[[], Any]) -> tuple[int, dict[str, int]]:
    """Run `fn()` under FlopCounterMode; return (total FLOPs, FLOPs per aten op)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    per_op = {str(op).split(".")[-1]: int(n) for op, n in counter.get_flop_counts()["Global"].items()}
    return int(counter.get_total_flops()), per_op


def matmul_params(model: nn.Module) -> int:
    """Parameters that multiply activations (Linear/Conv weights, incl. an untied lm_head).

    Embedding tables are look-ups (no FLOPs); biases and norm scales are elementwise.
    """
    total = 0
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d)):
            total += module.weight.numel()
    return total


def decoder_forward_flops(model: nn.Module, seq_len: int, batch: int = 1) -> int:
    """Measured FLOPs of one forward pass of a causal LM (eager attention, so it is counted).

    The CPU SDPA kernel has no FLOP formula registered in FlopCounterMode, so the count is
    taken with `attn_implementation="eager"`, whose QKᵀ and A·V are plain `bmm`s.
    """
    previous = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        device = next(model.parameters()).device
        ids = torch.zeros(batch, seq_len, dtype=torch.long, device=device)
        with torch.no_grad():
            total, _ = count_flops(lambda: model(ids))
    finally:
        model.set_attn_implementation(previous)
    return total


def decoder_training_flops(model: nn.Module, seq_len: int, batch: int = 1) -> int:
    """Measured FLOPs of forward + backward (one training step, optimizer excluded)."""
    previous = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        device = next(model.parameters()).device
        ids = torch.zeros(batch, seq_len, dtype=torch.long, device=device)

        def step() -> None:
            model(ids, labels=ids).loss.backward()

        total, _ = count_flops(step)
        model.zero_grad(set_to_none=True)
    finally:
        model.set_attn_implementation(previous)
    return total


# --------------------------------------------------------------- GPT-3 on the meta device


def gpt3_like_config():
    """A Llama-shaped GPT-3 175B: 96 layers, d=12288, 96 heads, context 2048.

    GPT-3's MLP has 2 matrices of 4d; a SwiGLU MLP has 3, so 8d/3 = 32768 gives the same
    parameter count.
    """
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=50257, hidden_size=12288, intermediate_size=32768, num_hidden_layers=96,
        num_attention_heads=96, num_key_value_heads=96, max_position_embeddings=2048,
        tie_word_embeddings=False,
    )


def gpt3_flops_per_token() -> dict[str, float]:
    """Count one generated token of a 175B model on the meta device (no memory, no compute).

    Returns the parameter count, the FlopCounterMode count and the 2N formula.
    """
    from transformers import LlamaForCausalLM

    with torch.device("meta"):
        model = LlamaForCausalLM(gpt3_like_config())
    n_params = sum(p.numel() for p in model.parameters())
    ids = torch.zeros(1, 1, dtype=torch.long, device="meta")
    with torch.no_grad():
        measured, _ = count_flops(lambda: model(ids))
    return {"n_params": float(n_params), "measured_flops": float(measured), "formula_2n": 2.0 * matmul_params(model)}


# --------------------------------------------------------------------------- ResNet-50


class Bottleneck(nn.Module):
    """ResNet v1.5 bottleneck: 1×1 reduce, 3×3 (stride here), 1×1 expand ×4, plus shortcut."""

    expansion = 4

    def __init__(self, in_ch: int, width: int, stride: int = 1) -> None:
        super().__init__()
        out_ch = width * self.expansion
        self.body = nn.Sequential(
            nn.Conv2d(in_ch, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            nn.Conv2d(width, out_ch, 1, bias=False), nn.BatchNorm2d(out_ch),
        )
        self.shortcut = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False), nn.BatchNorm2d(out_ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.shortcut(x))


def resnet50(num_classes: int = 1000) -> nn.Sequential:
    """ResNet-50 (He et al. 2016, table 1) built in code: stages of 3, 4, 6, 3 bottlenecks."""
    layers: list[nn.Module] = [
        nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True),
        nn.MaxPool2d(3, stride=2, padding=1),
    ]
    in_ch = 64
    for width, blocks, stride in [(64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)]:
        for i in range(blocks):
            layers.append(Bottleneck(in_ch, width, stride if i == 0 else 1))
            in_ch = width * Bottleneck.expansion
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(in_ch, num_classes)]
    return nn.Sequential(*layers)


def resnet50_flops(image_size: int = 224) -> dict[str, float]:
    """FLOPs and MACs of one image through ResNet-50, counted on the meta device."""
    with torch.device("meta"):
        model = resnet50().eval()
    x = torch.zeros(1, 3, image_size, image_size, device="meta")
    with torch.no_grad():
        flops, per_op = count_flops(lambda: model(x))
    n_params = sum(p.numel() for p in model.parameters())
    return {"n_params": float(n_params), "flops": float(flops), "macs": flops / 2, "per_op": per_op}


# ------------------------------------------------------------------------ timed matmul


@dataclass
class MatmulTiming:
    """One timed (m×k)·(k×n) product: its FLOP count and the rate achieved."""

    m: int
    k: int
    n: int
    dtype: str
    device: str
    seconds: float  # median over repeats

    @property
    def flops(self) -> float:
        return 2.0 * self.m * self.k * self.n  # one multiply + one add per term

    @property
    def flop_per_s(self) -> float:
        return self.flops / self.seconds

    @property
    def arithmetic_intensity(self) -> float:
        """FLOPs per byte read/written: low for matrix·vector (decoding), high for matmuls."""
        itemsize = torch.empty(0, dtype=getattr(torch, self.dtype)).element_size()
        return self.flops / (itemsize * (self.m * self.k + self.k * self.n + self.m * self.n))


def time_matmul(
    m: int, k: int | None = None, n: int | None = None, dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None, repeats: int = 5,
) -> MatmulTiming:
    """Time A(m×k)·B(k×n) on `device` (default: the course's default device); median of `repeats`."""
    from qlora_lab.hardware.device import default_device

    if m <= 0 or (k is not None and k <= 0) or (n is not None and n <= 0):
        raise ValueError(f"matrix sizes must be positive, got m={m}, k={k}, n={n}")
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    k = m if k is None else k
    n = m if n is None else n
    device = torch.device(device) if device is not None else default_device()
    a = torch.randn(m, k, device=device).to(dtype)
    b = torch.randn(k, n, device=device).to(dtype)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    a @ b  # warm-up (kernel selection, caches)
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        sync()
        times.append(time.perf_counter() - start)
    times.sort()
    return MatmulTiming(m, k, n, str(dtype).removeprefix("torch."), device.type, times[len(times) // 2])


def human(flops: float, unit: str = "FLOPs") -> str:
    """1.23e12 -> '1,23 T' + unit: three significant digits, French decimal comma."""
    rounded = float(f"{flops:.3g}")  # round first, so that 999.5e9 takes the T prefix: "1 TFLOPs"
    for prefix, scale in [("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)]:
        if abs(rounded) >= scale:
            return f"{_three_digits(rounded / scale)} {prefix}{unit}"
    return f"{_three_digits(rounded)} {unit}"


def _three_digits(x: float) -> str:
    """Three significant digits without trailing zeros, the French way: 2.5 -> '2,5', 1.5e-5 -> '0,000015'."""
    from qlora_lab.french import nombre

    rounded = float(f"{x:.3g}")
    if rounded == 0:
        return nombre(0.0, 0)
    decimals = max(0, 2 - math.floor(math.log10(abs(rounded))))  # fixed-point, never "1.5e-05"
    kept = f"{rounded:.{decimals}f}".rstrip("0").split(".")
    return nombre(rounded, len(kept[1]) if len(kept) == 2 else 0)


# --------------------------------------------------------------- context-length study


def context_length_rows(model: nn.Module, seq_lens: list[int]) -> list[dict[str, float]]:
    """Per-token forward FLOPs of a causal LM at several context lengths: measured vs formulas.

    Each row: T, measured (FlopCounterMode), exact (2N + 4·L·T·d), kaplan (2N + 2·L·T·d)
    and the guide's "2·T²·d" divided by T, all per token.
    """
    cfg = model.config
    n = matmul_params(model)
    rows = []
    for t in seq_lens:
        rows.append({
            "T": t,
            "measured": decoder_forward_flops(model, t) / t,
            "exact": exact_decoder_forward_flops(n, cfg.num_hidden_layers, cfg.hidden_size, t) / t,
            "kaplan": forward_flops_per_token(n, cfg.num_hidden_layers, t, cfg.hidden_size),
            "guide": 2 * t**2 * cfg.hidden_size / t,
        })
    return rows


def plot_flops_per_token(rows: list[dict[str, float]]):
    """Measured FLOPs per token against context length, with the three formulas."""
    import matplotlib.pyplot as plt

    t = [r["T"] for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    ax.plot(t, [r["measured"] for r in rows], "o", ms=9, label="mesuré (FlopCounterMode)")
    ax.plot(t, [r["exact"] for r in rows], "-", label="2N + 4·L·T·d (attention complète)")
    ax.plot(t, [r["kaplan"] for r in rows], "--", label="Kaplan : 2N + 2·L·T·d (moyenne causale)")
    ax.plot(t, [r["guide"] for r in rows], ":", lw=2, label="guide : 2·T²·d (ramené par token)")
    ax.set_xlabel("longueur du contexte T (tokens)")
    ax.set_ylabel("FLOPs par token (passage avant)")
    ax.set_yscale("log")
    ax.set_title("Coût d'un token selon la longueur du contexte")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
