"""The course's own QLoRA diagrams, drawn with matplotlib (the guide's PNG does not exist).

    from qlora_lab.course.diagrams import qlora_architecture_figure, pipeline_figure
    qlora_architecture_figure(); plt.show()
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

# One colour per role, reused by both figures.
COLOURS = {
    "frozen": "#9ecae1",    # NF4 base weights (frozen)
    "trainable": "#fdae6b",  # LoRA adapters (16/32-bit, trained)
    "memory": "#c7e9c0",    # where things live (CPU RAM, paged optimizer)
    "data": "#dadaeb",
    "neutral": "#f0f0f0",
}


@dataclass(frozen=True)
class Box:
    """A labelled rectangle: centre (x, y), size (w, h) in axes units."""

    key: str
    label: str
    x: float
    y: float
    w: float = 0.22
    h: float = 0.12
    colour: str = COLOURS["neutral"]


def _draw_box(ax: "Axes", box: Box) -> None:
    from matplotlib.patches import FancyBboxPatch

    ax.add_patch(FancyBboxPatch(
        (box.x - box.w / 2, box.y - box.h / 2), box.w, box.h,
        boxstyle="round,pad=0.01,rounding_size=0.02", facecolor=box.colour, edgecolor="black", linewidth=1.2,
    ))
    ax.text(box.x, box.y, box.label, ha="center", va="center", fontsize=9.5, wrap=True)


def _arrow(ax: "Axes", start: Box, end: Box, label: str = "", dashed: bool = False) -> None:
    """An arrow from the edge of `start` to the edge of `end` (horizontal or vertical)."""
    dx, dy = end.x - start.x, end.y - start.y
    if abs(dx) >= abs(dy):
        sx, sy = start.x + (start.w / 2) * (1 if dx > 0 else -1), start.y
        ex, ey = end.x - (end.w / 2) * (1 if dx > 0 else -1), end.y
    else:
        sx, sy = start.x, start.y + (start.h / 2) * (1 if dy > 0 else -1)
        ex, ey = end.x, end.y - (end.h / 2) * (1 if dy > 0 else -1)
    ax.annotate("", xy=(ex, ey), xytext=(sx, sy), arrowprops=dict(
        arrowstyle="-|>", lw=1.4, color="black", linestyle="--" if dashed else "-"))
    if label:
        ax.text((sx + ex) / 2 + (0.01 if abs(dy) > abs(dx) else 0), (sy + ey) / 2 + (0.0 if abs(dy) > abs(dx) else 0.09), label,
                ha="left" if abs(dy) > abs(dx) else "center", va="bottom", fontsize=8.5, style="italic")


def _new_axes(title: str, size: tuple[float, float]) -> tuple["Figure", "Axes"]:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=size)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.08)
    ax.axis("off")
    ax.set_title(title, fontsize=12, fontweight="bold")
    return fig, ax


ARCHITECTURE_BOXES = (
    Box("x", "entrée x\n(bf16)", 0.08, 0.55, w=0.12),
    Box("w", "poids de base W\nNF4, gelés (blocs de 64)", 0.64, 0.98, w=0.26, h=0.1, colour=COLOURS["frozen"]),
    Box("dq", "constantes absmax en 8 bits\n(double quantification)", 0.30, 0.98, w=0.28, h=0.1, colour=COLOURS["frozen"]),
    Box("deq", "déquantification\nNF4 → bf16\npuis W·x", 0.64, 0.78, colour=COLOURS["neutral"]),
    Box("a", "A (r × d_in)\nentraîné", 0.36, 0.32, colour=COLOURS["trainable"]),
    Box("b", "B (d_out × r)\nentraîné, B=0 au départ", 0.64, 0.32, colour=COLOURS["trainable"]),
    Box("sum", "y = W·x + (α/r)·B·A·x", 0.88, 0.55, w=0.2),
    Box("opt", "états AdamW de A et B\noptimiseur paginé\n(GPU ↔ RAM CPU)", 0.50, 0.08, w=0.3, h=0.11, colour=COLOURS["memory"]),
)


def qlora_architecture_figure() -> "Figure":
    """One QLoRA linear layer: NF4 frozen base + double-quantized constants + 16-bit LoRA + paged optimizer."""
    fig, ax = _new_axes("Architecture QLoRA : une couche linéaire", (11, 6))
    boxes = {b.key: b for b in ARCHITECTURE_BOXES}
    for box in ARCHITECTURE_BOXES:
        _draw_box(ax, box)
    ax.annotate("", xy=(boxes["deq"].x - boxes["deq"].w / 2, boxes["deq"].y), xytext=(boxes["x"].x, boxes["x"].y + boxes["x"].h / 2),
                arrowprops=dict(arrowstyle="-|>", lw=1.4, connectionstyle="angle,angleA=90,angleB=180"))
    _arrow(ax, boxes["w"], boxes["deq"], "chaque passage")
    _arrow(ax, boxes["dq"], boxes["w"])
    ax.annotate("", xy=(boxes["a"].x - boxes["a"].w / 2, boxes["a"].y), xytext=(boxes["x"].x, boxes["x"].y - boxes["x"].h / 2),
                arrowprops=dict(arrowstyle="-|>", lw=1.4, connectionstyle="angle,angleA=-90,angleB=180"))
    _arrow(ax, boxes["a"], boxes["b"], "r ≪ d")
    ax.annotate("", xy=(boxes["sum"].x, boxes["sum"].y + boxes["sum"].h / 2), xytext=(boxes["deq"].x + boxes["deq"].w / 2, boxes["deq"].y),
                arrowprops=dict(arrowstyle="-|>", lw=1.4, connectionstyle="angle,angleA=0,angleB=90"))
    ax.annotate("", xy=(boxes["sum"].x, boxes["sum"].y - boxes["sum"].h / 2), xytext=(boxes["b"].x + boxes["b"].w / 2, boxes["b"].y),
                arrowprops=dict(arrowstyle="-|>", lw=1.4, connectionstyle="angle,angleA=0,angleB=-90"))
    _arrow(ax, boxes["opt"], boxes["a"], dashed=True)
    _arrow(ax, boxes["opt"], boxes["b"], dashed=True)
    ax.text(0.5, 0.185, "gradients et mises à jour : seulement A et B", ha="center", fontsize=8.5, style="italic")
    _legend(ax, [("frozen", "gelé, 4 bits"), ("trainable", "entraîné, 16/32 bits"), ("memory", "mémoire paginée")])
    return fig


PIPELINE_BOXES = (
    Box("data", "données\nbrutes", 0.07, 0.6, w=0.12, h=0.2, colour=COLOURS["data"]),
    Box("tok", "tokenisation\n(BPE → ids)", 0.28, 0.6, w=0.13, h=0.2, colour=COLOURS["data"]),
    Box("qlora", "QLoRA\nbase NF4\n+ adaptateurs", 0.49, 0.6, w=0.13, h=0.2, colour=COLOURS["frozen"]),
    Box("train", "entraînement\n(A, B seuls)", 0.71, 0.6, w=0.14, h=0.2, colour=COLOURS["trainable"]),
    Box("model", "adaptateur\nsauvegardé", 0.92, 0.6, w=0.13, h=0.2, colour=COLOURS["trainable"]),
    Box("metrics", "métriques : perte de validation,\nmémoire de pointe, s/pas", 0.71, 0.15, w=0.3, h=0.18, colour=COLOURS["memory"]),
)


def pipeline_figure() -> "Figure":
    """The course's pipeline: data -> tokenization -> QLoRA -> training -> metrics (and the saved adapter)."""
    fig, ax = _new_axes("Pipeline du cours : des données aux métriques", (12, 4))
    boxes = {b.key: b for b in PIPELINE_BOXES}
    for box in PIPELINE_BOXES:
        _draw_box(ax, box)
    _arrow(ax, boxes["data"], boxes["tok"], "préparation")
    _arrow(ax, boxes["tok"], boxes["qlora"], "configuration")
    _arrow(ax, boxes["qlora"], boxes["train"])
    _arrow(ax, boxes["train"], boxes["model"])
    _arrow(ax, boxes["train"], boxes["metrics"], "suivi")
    return fig


def _legend(ax: "Axes", entries: list[tuple[str, str]]) -> None:
    from matplotlib.patches import Patch

    ax.legend(handles=[Patch(facecolor=COLOURS[k], edgecolor="black", label=text) for k, text in entries],
              loc="lower left", fontsize=8.5, frameon=False)


def figure_texts(fig: "Figure") -> list[str]:
    """Every text drawn on `fig` (for tests and accessibility checks)."""
    return [t.get_text() for ax in fig.axes for t in ax.texts]
