"""Figures: the axes, labels and series the notebooks' prose refers to."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pytest

from qlora_lab.course import viz
from qlora_lab.quant.formats import format_table


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def test_format_ranges_one_bar_per_format():
    table = format_table()
    ax = viz.plot_format_ranges(table).axes[0]
    assert len(ax.patches) == len(table)
    assert [t.get_text() for t in ax.get_yticklabels()] == [f.name for f in table]
    fp16_bar = ax.patches[1]  # from log10(6.1e-5) to log10(65504)
    assert fp16_bar.get_x() == pytest.approx(np.log10(6.103515625e-05))
    assert fp16_bar.get_x() + fp16_bar.get_width() == pytest.approx(np.log10(65504))


def test_images_one_panel_per_picture():
    pics = {f"{b} bits": np.random.rand(8, 8, 3) for b in (32, 8, 4)}
    fig = viz.plot_images(pics)
    assert [ax.get_title() for ax in fig.axes] == list(pics)


def test_error_vs_bits_log_scale_and_legend():
    ax = viz.plot_error_vs_bits([2, 4, 8], {"a": [1e-1, 1e-2, 1e-4], "b": [1e-2, 1e-3, 1e-5]}).axes[0]
    assert ax.get_yscale() == "log" and len(ax.get_lines()) == 2
    assert ax.get_xlabel() == "nombre de bits"


@pytest.mark.parametrize("log", [False, True])
def test_bars_heights_and_labels(log):
    ax = viz.plot_bars({"x": 1.0, "y": 3.0}, "valeur", "titre", log=log).axes[0]
    assert [p.get_height() for p in ax.patches] == [1.0, 3.0]
    assert ax.get_ylabel() == "valeur" and ax.get_yscale() == ("log" if log else "linear")


def test_bar_labels_are_french_by_default_and_a_format_string_still_works():
    ax = viz.plot_bars({"x": 0.000315, "y": 2.5}, "valeur", "titre").axes[0]
    assert [t.get_text() for t in ax.texts] == ["3,15·10⁻⁴", "2,50"]  # three significant digits
    ax = viz.plot_bars({"x": 2.5}, "valeur", "titre", fmt="{:.2f}").axes[0]
    assert [t.get_text() for t in ax.texts] == ["2.50"]


def test_grouped_bars_counts():
    groups = {"7B": {"a": 1, "b": 2, "c": 3}, "13B": {"a": 2, "b": 4, "c": 6}}
    ax = viz.plot_grouped_bars(groups, "Go", "mémoire").axes[0]
    assert len(ax.patches) == 6
    assert [t.get_text() for t in ax.get_xticklabels()] == ["7B", "13B"]


def test_levels_on_histogram_draws_every_level():
    levels = {"INT4": np.linspace(-1, 1, 15), "autre": np.linspace(-1, 1, 16)}
    fig = viz.plot_levels_on_histogram(np.random.randn(1000) * 0.3, levels)
    assert len(fig.axes) == 2
    assert len(fig.axes[0].get_lines()) == 15 and len(fig.axes[1].get_lines()) == 16


def test_staircase_and_training_curves():
    x = np.linspace(-1, 1, 50)
    ax = viz.plot_quantization_staircase(x, {"2 bits": np.round(x)}).axes[0]
    assert len(ax.get_lines()) == 2
    ax = viz.plot_training_curves({"QAT": [1.0, 0.5, 0.3]}).axes[0]
    assert list(ax.get_lines()[0].get_ydata()) == [1.0, 0.5, 0.3]


def test_histogram_with_normal_overlays_matching_density():
    values = np.random.default_rng(0).normal(0.0, 0.02, 20_000)
    ax = viz.plot_histogram_with_normal(values).axes[0]
    curve = ax.get_lines()[0]
    peak = curve.get_ydata().max()
    assert peak == pytest.approx(1 / (0.02 * np.sqrt(2 * np.pi)), rel=0.05)
    assert len(ax.patches) == 200
    assert "σ = 0,0" in ax.get_legend().get_texts()[1].get_text()


def test_tradeoff_has_two_y_axes():
    fig = viz.plot_tradeoff([32, 64, 128], [1, 2, 3], [5.0, 4.5, 4.25], "bloc", "erreur", "bits", "titre")
    left, right = fig.axes
    assert left.get_xscale() == "log" and left.get_ylabel() == "erreur" and right.get_ylabel() == "bits"
    assert list(right.get_lines()[0].get_ydata()) == [5.0, 4.5, 4.25]


def test_live_loss_plot_is_a_finetune_callback_that_draws_every_row_so_far():
    plot = viz.LiveLossPlot()
    rows = [{"step": 1, "loss": 4.0}, {"step": 2, "loss": 3.5, "val_loss": 3.9}, {"step": 3, "loss": 3.2}]
    for row in rows:
        plot(row)  # what finetune() does with each metrics row
    train, val = plot.ax.get_lines()
    assert list(train.get_xdata()) == [1, 2, 3] and list(train.get_ydata()) == [4.0, 3.5, 3.2]
    assert list(val.get_xdata()) == [2] and list(val.get_ydata()) == [3.9]
    assert [t.get_text() for t in plot.ax.get_legend().get_texts()] == ["entraînement", "validation"]
    assert plot.ax.get_xlabel() == "pas"


def test_live_loss_plot_smooths_with_a_bias_corrected_average_and_redraws_every_n_steps():
    # by hand, smoothing 0.5: 4.0; (0.25*4 + 0.5*2) / 0.75 = 8/3; (0.125*4 + 0.25*2 + 0.5*3.5) / 0.875 = 22/7
    assert viz.ema([4.0, 2.0, 3.5], 0.5) == pytest.approx([4.0, 8 / 3, 22 / 7])
    plot = viz.LiveLossPlot(smoothing=0.5, redraw_every=3)
    plot({"step": 1, "loss": 4.0})
    plot({"step": 2, "loss": 2.0})
    assert plot.ax.get_lines() == []  # not redrawn yet
    plot({"step": 3, "loss": 3.5})
    raw, smooth = plot.ax.get_lines()
    assert list(raw.get_ydata()) == [4.0, 2.0, 3.5]
    assert list(smooth.get_ydata()) == pytest.approx([4.0, 8 / 3, 22 / 7])
    with pytest.raises(ValueError, match="smoothing=1"):
        viz.LiveLossPlot(smoothing=1)
