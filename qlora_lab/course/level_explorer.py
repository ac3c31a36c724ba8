"""Interactive explorer for notebook 03: NF4, FP4 and INT4 levels over a weight histogram.

Three controls: the 4-bit format, the block size, and how heavy the tails of the weights
are (Student-t degrees of freedom ν; ν = ∞ is the normal law NF4 is built for). Each move
re-quantizes 65 536 weights with `quantize_4bit`, redraws the histogram of the
block-normalised weights with the format's 16 levels, and prints the error of the three
formats. The numbers come from plain functions (`sample_weights`, `format_errors`,
`code_entropy`) so that the tests check numbers, not pixels.

    from qlora_lab.course.level_explorer import level_explorer
    level_explorer()          # in a notebook cell
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Any

import numpy as np
import torch

from qlora_lab.french import nombre
from qlora_lab.quant.codes import unpack_4bit
from qlora_lab.quant.nf4 import QUANT_TYPES, codebook, dequantize_4bit, quantize_4bit

N_WEIGHTS = 65_536  # a multiple of every block size below
BLOCKSIZES = (32, 64, 128, 256, 512, 1024, 4096)
TAILS = (1.0, 2.0, 3.0, 5.0, 10.0, 30.0, math.inf)  # Student-t ν; inf: the normal law
FORMAT_LABELS = {"nf4": "NF4", "fp4": "FP4 (bitsandbytes)", "int4": "INT4 (uniforme)"}


def tails_label(df: float) -> str:
    """'ν = 3' or 'normale (ν = ∞)' for the slider and the title."""
    return "normale (ν = ∞)" if math.isinf(df) else f"Student ν = {nombre(df)}"


def sample_weights(df: float = math.inf, n: int = N_WEIGHTS, scale: float = 0.02, seed: int = 0) -> torch.Tensor:
    """`n` float32 weights: `scale` × a Student-t with `df` degrees of freedom (normal if inf).

    Small `df` means heavy tails: a few weights far larger than the rest, as in some
    layers of large models. Seeded with NumPy's generator, so the result is reproducible.
    """
    if not df > 0:
        raise ValueError(f"df must be > 0 (inf for the normal law), got {df}")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(n) if math.isinf(df) else rng.standard_t(df, n)
    return torch.from_numpy(x * scale).float()


def block_normalised(w: torch.Tensor, blocksize: int) -> torch.Tensor:
    """Each block of `blocksize` weights divided by its absmax: the values the 16 levels round."""
    if w.numel() % blocksize:
        raise ValueError(f"{w.numel()} weights do not split into blocks of {blocksize}")
    blocks = w.reshape(-1, blocksize)  # (n_blocks, blocksize)
    return (blocks / blocks.abs().amax(dim=1, keepdim=True)).reshape(-1)


def code_entropy(packed: torch.Tensor, n: int) -> float:
    """Entropy (bits) of the first `n` 4-bit codes: 4 when the 16 codes are equally used."""
    counts = torch.bincount(unpack_4bit(packed)[:n].long(), minlength=16).double()
    p = counts[counts > 0] / n
    return float(-(p * p.log2()).sum())


def format_errors(w: torch.Tensor, blocksize: int = 64) -> dict[str, dict[str, float]]:
    """Per 4-bit format: mean squared error of `w` after the round trip, and code entropy."""
    result = {}
    for quant_type in QUANT_TYPES:
        packed, state = quantize_4bit(w, quant_type=quant_type, blocksize=blocksize, double_quant=False)
        mse = float(((dequantize_4bit(packed, state) - w) ** 2).mean())
        result[quant_type] = {"mse": mse, "entropie": code_entropy(packed, w.numel())}
    return result


@lru_cache(maxsize=len(TAILS))
def _cached_weights(df: float) -> torch.Tensor:
    return sample_weights(df)


def _show(quant_type: str, blocksize: int, df: float) -> dict[str, dict[str, float]]:
    """Draw the histogram with the levels and the three errors (called by the widgets)."""
    import matplotlib.pyplot as plt

    w = _cached_weights(df)
    errors = format_errors(w, blocksize)
    fig, ax = plt.subplots(figsize=(8, 3.2))
    ax.hist(block_normalised(w, blocksize).numpy(), bins=121, range=(-1, 1), density=True, color="0.75")
    for level in codebook(quant_type).unique().tolist():
        ax.axvline(level, color="tab:red", lw=1)
    ax.set_xlabel("poids / absmax du bloc")
    ax.set_ylabel("densité")
    ax.set_title(f"{FORMAT_LABELS[quant_type]}, blocs de {blocksize}, poids {tails_label(df)}", fontsize=10)
    ax.xaxis.set_major_formatter(lambda value, _: nombre(value, 2))  # French decimal comma
    lines = [f"{FORMAT_LABELS[q]} : MSE = {nombre(e['mse'] / w.var().item())}·σ², "
             f"entropie {nombre(e['entropie'], 2)} bits" for q, e in errors.items()]
    ax.text(0.01, 0.97, "\n".join(lines), transform=ax.transAxes, va="top", fontsize=8,
            bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "0.8"})
    fig.tight_layout()
    plt.show()
    return errors


def level_explorer(quant_type: str = "nf4", blocksize: int = 64, df: float = math.inf) -> Any:
    """An `ipywidgets.interactive`: format buttons, a block-size slider and a tails slider.

    Returns the widget (display it by leaving it last in a cell); its `.result` holds
    `format_errors` of the current setting.
    """
    import ipywidgets as widgets

    if quant_type not in QUANT_TYPES:
        raise ValueError(f"quant_type must be one of {QUANT_TYPES}, got {quant_type!r}")
    if blocksize not in BLOCKSIZES:
        raise ValueError(f"blocksize must be one of {BLOCKSIZES}, got {blocksize}")
    if df not in TAILS:
        raise ValueError(f"df must be one of {TAILS}, got {df}")
    style = {"description_width": "initial"}
    format_buttons = widgets.ToggleButtons(options=[(FORMAT_LABELS[q].split()[0], q) for q in QUANT_TYPES],
                                           value=quant_type, description="format")
    block_slider = widgets.SelectionSlider(options=list(BLOCKSIZES), value=blocksize,
                                           description="taille de bloc", style=style)
    tails_slider = widgets.SelectionSlider(options=[(("∞" if math.isinf(t) else nombre(t)), t) for t in TAILS],
                                           value=df, description="queues : ν de Student", style=style)
    return widgets.interactive(_show, quant_type=format_buttons, blocksize=block_slider, df=tails_slider)
