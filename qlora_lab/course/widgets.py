"""Interactive explorer for notebook 01: a slider for bits, a slider for block size.

Moving the sliders re-quantizes a weight matrix that holds a few planted outliers per
tensor, per channel and per block, and shows the error of each granularity. (In large
LLMs the big outliers are hidden-state features, i.e. activations, LLM.int8 paper §3-4;
one absmax scale suffers from them the same way in any tensor.) The computation lives in plain functions
(`outlier_weights`, `granularity_errors`) so that the tests check numbers, not pixels.

    from qlora_lab.course.widgets import quantization_explorer
    quantization_explorer()          # in a notebook cell
"""

from __future__ import annotations

from typing import Any

import torch

from qlora_lab.quant.absmax import GRANULARITIES, fake_quantize, quantization_error

BLOCKSIZES = (16, 32, 64, 128, 256, 512, 1024)


def outlier_weights(rows: int = 64, cols: int = 256, n_outliers: int = 8,
                    outlier_scale: float = 25.0, seed: int = 0) -> torch.Tensor:
    """A (rows, cols) Gaussian weight matrix (std 0.02) with `n_outliers` large entries.

    One scale per tensor must stretch to reach the outliers and coarsens the grid for
    everyone: the effect LLM.int8's activation outlier features have on absmax.
    """
    if rows < 1 or cols < 1:
        raise ValueError(f"rows and cols must be >= 1, got rows={rows}, cols={cols}")
    if not 0 <= n_outliers <= rows * cols:
        raise ValueError(f"n_outliers must be in 0..rows*cols, got {n_outliers}")
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=gen) * 0.02  # (rows, cols)
    idx = torch.randperm(rows * cols, generator=gen)[:n_outliers]
    signs = torch.where(torch.rand(n_outliers, generator=gen) < 0.5, -1.0, 1.0)
    w.view(-1)[idx] = signs * outlier_scale * 0.02
    return w


def granularity_errors(w: torch.Tensor, bits: int = 4, blocksize: int = 64,
                       scheme: str = "absmax") -> dict[str, float]:
    """Mean squared error of `w` quantized per tensor, per channel and per block."""
    return {
        g: quantization_error(w, fake_quantize(w, bits=bits, scheme=scheme, granularity=g,
                                               blocksize=blocksize))["mse"]
        for g in GRANULARITIES
    }


GRANULARITY_LABELS = {"tensor": "par tenseur", "channel": "par canal", "block": "par bloc"}


def _show(w: torch.Tensor, bits: int, blocksize: int) -> dict[str, float]:
    """Draw the bar chart of the three errors (called by the sliders)."""
    import matplotlib.pyplot as plt

    from qlora_lab.course.viz import plot_bars

    errors = granularity_errors(w, bits=bits, blocksize=blocksize)
    plot_bars({GRANULARITY_LABELS[g]: e for g, e in errors.items()},
              ylabel="erreur quadratique moyenne (log)",
              title=f"absmax {bits} bits, blocs de {blocksize}", log=True)
    plt.show()
    return errors


def quantization_explorer(w: torch.Tensor | None = None, bits: int = 4, blocksize: int = 64) -> Any:
    """An `ipywidgets.interactive` with a bits slider (2–8) and a block-size slider.

    Returns the widget (display it by leaving it last in a cell); its `.result` holds the
    errors of the current setting.
    """
    import ipywidgets as widgets

    if blocksize not in BLOCKSIZES:
        raise ValueError(f"blocksize must be one of {BLOCKSIZES}, got {blocksize}")
    w = outlier_weights() if w is None else w
    bits_slider = widgets.IntSlider(value=bits, min=2, max=8, step=1, description="bits")
    block_slider = widgets.SelectionSlider(options=list(BLOCKSIZES), value=blocksize,
                                           description="taille de bloc")
    return widgets.interactive(lambda bits, blocksize: _show(w, bits, blocksize),
                               bits=bits_slider, blocksize=block_slider)
