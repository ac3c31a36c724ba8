"""Figures of the notebooks, labelled in French; each returns its `Figure` (call plt.show()).

Keeping the plotting here keeps the notebook cells short and lets the tests check that
every figure has the axes, labels and series the prose talks about.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Mapping, Sequence

import numpy as np

from qlora_lab.french import nombre, scientifique

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from qlora_lab.quant.formats import NumberFormat


def french_value(x: float) -> str:
    """A bar label in French: '0,0315', '65 504', or '3,15·10⁻⁴' for very small or large values."""
    return nombre(x) if x == 0 or 1e-3 <= abs(x) < 1e6 else scientifique(x)


def _label(fmt: str | Callable[[float], str], x: float) -> str:
    return fmt(x) if callable(fmt) else fmt.format(x)


def _plt():
    import matplotlib.pyplot as plt

    return plt


def plot_format_ranges(table: Sequence["NumberFormat"]) -> "Figure":
    """Horizontal log-scale bars: from the smallest positive normal value to the maximum."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 0.6 * len(table) + 1.2))
    for i, f in enumerate(table):
        ax.barh(i, np.log10(f.max) - np.log10(f.smallest_normal), left=np.log10(f.smallest_normal),
                color="tab:blue" if f.kind == "float" else "tab:orange")
        ax.text(np.log10(f.max) + 0.5, i, f"max = {f.max:.4g}", va="center", fontsize=9)
    ax.set_yticks(range(len(table)), [f.name for f in table])
    ax.set_xlabel("log10 de la valeur absolue (du plus petit normal au maximum)")
    ax.set_title("Plage dynamique des formats numériques")
    ax.set_xlim(-45, 50)
    ax.invert_yaxis()
    fig.tight_layout()
    return fig


def plot_images(images: Mapping[str, np.ndarray]) -> "Figure":
    """Pictures side by side, one per title (the "appareil photo" at several bit depths)."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(images), figsize=(3.2 * len(images), 3.6))
    axes = np.atleast_1d(axes)
    for ax, (title, img) in zip(axes, images.items()):
        ax.imshow(np.clip(img, 0, 1))
        ax.set_title(title)
        ax.axis("off")
    fig.tight_layout()
    return fig


def plot_error_vs_bits(bits: Sequence[int], errors: Mapping[str, Sequence[float]],
                       ylabel: str = "erreur quadratique moyenne") -> "Figure":
    """Error (log scale) against bit width, one line per method."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4))
    for label, values in errors.items():
        ax.semilogy(bits, values, marker="o", label=label)
    ax.set_xlabel("nombre de bits")
    ax.set_ylabel(ylabel + " (échelle log)")
    ax.set_title("Erreur de quantification selon le nombre de bits")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig


def plot_bars(values: Mapping[str, float], ylabel: str, title: str,
              fmt: str | Callable[[float], str] = french_value, log: bool = False) -> "Figure":
    """One bar per label, with its value written on top."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(5.0, 1.3 * len(values)), 4))
    labels, heights = list(values), [float(v) for v in values.values()]
    bars = ax.bar(labels, heights, color=plt.cm.tab10(np.arange(len(labels)) % 10))
    ax.bar_label(bars, labels=[_label(fmt, h) for h in heights], padding=2, fontsize=9)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if log:
        ax.set_yscale("log")
    ax.margins(y=0.15)
    fig.tight_layout()
    return fig


def plot_grouped_bars(groups: Mapping[str, Mapping[str, float]], ylabel: str, title: str,
                      fmt: str | Callable[[float], str] = french_value) -> "Figure":
    """Bars grouped by outer key (e.g. model size), one colour per inner key (e.g. format)."""
    plt = _plt()
    outer = list(groups)
    inner = list(next(iter(groups.values())))
    width = 0.8 / len(inner)
    fig, ax = plt.subplots(figsize=(max(7.0, 2.2 * len(outer)), 4.5))
    x = np.arange(len(outer))
    for j, key in enumerate(inner):
        heights = [groups[o][key] for o in outer]
        bars = ax.bar(x + (j - (len(inner) - 1) / 2) * width, heights, width, label=key)
        ax.bar_label(bars, labels=[_label(fmt, h) for h in heights], fontsize=7, padding=1)
    ax.set_xticks(x, outer)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.margins(y=0.12)
    fig.tight_layout()
    return fig


def plot_levels_on_histogram(weights: np.ndarray, levels: Mapping[str, np.ndarray],
                             title: str = "Poids normalisés par bloc et niveaux 4 bits") -> "Figure":
    """Histogram of block-normalised weights (in [-1, 1]) with each 4-bit codebook drawn as ticks.

    NF4 levels crowd where the weights are (near 0); INT4 levels are evenly spaced; FP4's
    exponent makes them log-like (dense near 0, sparse near ±1).
    """
    plt = _plt()
    fig, axes = plt.subplots(len(levels), 1, figsize=(8, 2.2 * len(levels) + 0.6), sharex=True)
    axes = np.atleast_1d(axes)
    for ax, (name, lv) in zip(axes, levels.items()):
        ax.hist(weights, bins=121, range=(-1, 1), density=True, color="0.75")
        for v in np.asarray(lv):
            ax.axvline(v, color="tab:red", lw=1)
        ax.set_ylabel("densité")
        ax.set_title(f"{name} : {len(np.unique(lv))} niveaux", fontsize=10, loc="left")
    axes[-1].set_xlabel("poids / absmax du bloc")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_quantization_staircase(x: np.ndarray, x_hat: Mapping[str, np.ndarray]) -> "Figure":
    """Original value (x axis) against its quantized reconstruction: the rounding staircase."""
    plt = _plt()
    order = np.argsort(x)
    fig, ax = plt.subplots(figsize=(6, 4.5))
    ax.plot(x[order], x[order], color="0.6", ls="--", label="identité (pas d'erreur)")
    for label, y in x_hat.items():
        ax.step(x[order], np.asarray(y)[order], where="mid", label=label)
    ax.set_xlabel("valeur d'origine")
    ax.set_ylabel("valeur après quantification puis déquantification")
    ax.set_title("Arrondir à une grille : l'escalier de la quantification")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def plot_training_curves(curves: Mapping[str, Sequence[float]], ylabel: str = "perte",
                         title: str = "Courbes d'entraînement") -> "Figure":
    """One line per run, x axis = epoch."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4))
    for label, values in curves.items():
        ax.plot(range(1, len(values) + 1), values, marker=".", label=label)
    ax.set_xlabel("époque")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig


def plot_histogram_with_normal(values: np.ndarray, title: str = "Distribution des poids",
                               xlabel: str = "valeur du poids") -> "Figure":
    """Histogram of `values` with the normal density of the same mean and std on top."""
    plt = _plt()
    values = np.asarray(values, dtype=np.float64)
    mean, std = values.mean(), values.std()
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.hist(values, bins=200, density=True, color="0.7", label="poids du modèle")
    grid = np.linspace(values.min(), values.max(), 400)
    density = np.exp(-0.5 * ((grid - mean) / std) ** 2) / (std * np.sqrt(2 * np.pi))
    ax.plot(grid, density, color="tab:red", label=f"loi normale (μ = {french_value(mean)}, σ = {french_value(std)})")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("densité")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    return fig


def plot_tradeoff(x: Sequence[float], left: Sequence[float], right: Sequence[float], xlabel: str,
                  left_label: str, right_label: str, title: str) -> "Figure":
    """Two quantities against a log2 x axis, one y axis each (e.g. error vs memory cost)."""
    plt = _plt()
    fig, ax1 = plt.subplots(figsize=(7, 4))
    ax1.semilogx(x, left, marker="o", color="tab:blue", base=2)
    ax1.set_xlabel(xlabel)
    ax1.set_ylabel(left_label, color="tab:blue")
    ax2 = ax1.twinx()
    ax2.semilogx(x, right, marker="s", color="tab:orange", base=2)
    ax2.set_ylabel(right_label, color="tab:orange")
    ax1.set_title(title)
    fig.tight_layout()
    return fig


class LiveLossPlot:
    """The loss curve, redrawn in place while training runs: a callback of `finetune`.

        finetune(config, callbacks=[LiveLossPlot()])
        finetune(config, callbacks=[LiveLossPlot(smoothing=0.9, redraw_every=10)])

    Each call gets one metrics row; `update(rows)` redraws from a whole list of rows.
    A batch's loss follows how hard its examples are: `smoothing` (0 = off) adds an
    exponential moving average, the trend, over the faint raw curve. `redraw_every`
    redraws every N steps (and at each validation point), as a redraw costs ~0.1 s.
    """

    def __init__(self, title: str = "Perte d'entraînement", smoothing: float = 0.0, redraw_every: int = 1) -> None:
        import matplotlib.pyplot as plt
        from IPython.display import display

        if not 0 <= smoothing < 1:
            raise ValueError(f"smoothing={smoothing} must be in [0, 1)")
        if redraw_every < 1:
            raise ValueError(f"redraw_every={redraw_every} must be at least 1")
        self.fig, self.ax = plt.subplots(figsize=(6, 3.2))
        self.title, self.smoothing, self.redraw_every = title, smoothing, redraw_every
        plt.close(self.fig)  # shown through the display handle only
        self.handle = display(self.fig, display_id=True)
        self.rows: list[dict] = []

    def __call__(self, row: dict) -> None:
        self.rows.append(row)
        if len(self.rows) % self.redraw_every == 0 or "val_loss" in row:
            self.update(self.rows)

    def update(self, rows: list[dict]) -> None:
        self.ax.clear()
        steps, losses = [r["step"] for r in rows], [r["loss"] for r in rows]
        if self.smoothing:
            self.ax.plot(steps, losses, color="tab:blue", alpha=0.3, label="entraînement (par lot)")
            self.ax.plot(steps, ema(losses, self.smoothing), color="tab:blue", label="entraînement (lissée)")
        else:
            self.ax.plot(steps, losses, label="entraînement")
        val = [(r["step"], r["val_loss"]) for r in rows if "val_loss" in r]
        if val:
            self.ax.plot(*zip(*val), "o-", label="validation")
        self.ax.set(xlabel="pas", ylabel="perte (nats/token)", title=self.title)
        self.ax.legend()
        self.fig.tight_layout()
        if self.handle is not None:
            self.handle.update(self.fig)


def ema(values: list[float], smoothing: float) -> list[float]:
    """Exponential moving average, bias-corrected as Adam's moments (so the first value is kept)."""
    out, average = [], 0.0
    for i, value in enumerate(values, start=1):
        average = smoothing * average + (1 - smoothing) * value
        out.append(average / (1 - smoothing**i))
    return out
