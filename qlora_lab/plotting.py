"""A loss curve that redraws itself in a notebook while training runs."""

from __future__ import annotations


class LiveLossPlot:
    """Call `update(rows)` with the metrics rows so far; the figure is replaced in place."""

    def __init__(self, title: str = "Perte d'entraînement") -> None:
        import matplotlib.pyplot as plt
        from IPython.display import display

        self.fig, self.ax = plt.subplots(figsize=(6, 3.2))
        self.title = title
        plt.close(self.fig)  # shown through the display handle only
        self.handle = display(self.fig, display_id=True)

    def update(self, rows: list[dict]) -> None:
        self.ax.clear()
        self.ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], label="entraînement")
        val = [(r["step"], r["val_loss"]) for r in rows if "val_loss" in r]
        if val:
            self.ax.plot(*zip(*val), "o-", label="validation")
        self.ax.set(xlabel="pas", ylabel="perte (nats/token)", title=self.title)
        self.ax.legend()
        self.fig.tight_layout()
        if self.handle is not None:
            self.handle.update(self.fig)
