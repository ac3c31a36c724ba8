"""Tick labels in French on every linear axis, as matplotlib would write them otherwise."""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
from matplotlib import ticker  # noqa: E402

import qlora_lab.course  # noqa: E402,F401  (registers the French linear scale)
from qlora_lab.course.french_figures import french_number_text  # noqa: E402
from qlora_lab.french import THIN_NBSP, nombre  # noqa: E402


@pytest.mark.parametrize("english, french", [
    ("0.5", "0,5"), ("−0.25", "−0,25"), ("1000", "1000"), ("20000", f"20{THIN_NBSP}000"),
    ("−1234567.5", f"−1{THIN_NBSP}234{THIN_NBSP}567,5"), ("0", "0"), ("", "")])
def test_french_number_text(english, french):
    assert french_number_text(english) == french


def test_french_number_text_agrees_with_nombre_on_grouped_numbers():
    for value in (12345, 987654.25, 20000.5):
        assert french_number_text(f"{value:.2f}") == nombre(value, 2)


def drawn_labels(axis) -> list[str]:
    axis.figure.canvas.draw()
    return [t.get_text() for t in axis.get_ticklabels() if t.get_text()]


def test_a_new_figure_writes_its_ticks_in_french_and_keeps_matplotlibs_ticks():
    fig, ax = plt.subplots()
    ax.plot([0, 0.5, 1], [0, 20000, 40000])
    x_labels, y_labels = drawn_labels(ax.xaxis), drawn_labels(ax.yaxis)
    ticks = ax.get_xticks()
    english = ticker.ScalarFormatter()  # matplotlib's own formatter on the same ticks: the reference
    english.set_axis(ax.xaxis)
    english.set_locs(ticks)
    assert x_labels == [french_number_text(english(t)) for t in ticks]
    assert any("," in label for label in x_labels) and not any("." in label for label in x_labels)
    assert f"20{THIN_NBSP}000" in y_labels
    plt.close(fig)


def test_log_axes_keep_matplotlibs_labels():
    fig, ax = plt.subplots()
    ax.set_yscale("log")
    ax.plot([1, 2], [1e-3, 1e3])
    assert not isinstance(ax.yaxis.get_major_formatter(), ticker.ScalarFormatter)
    assert drawn_labels(ax.yaxis)
    plt.close(fig)
