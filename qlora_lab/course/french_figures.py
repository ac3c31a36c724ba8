"""Figures in French: the decimal comma and grouped thousands on every linear axis.

matplotlib writes its tick labels the English way (0.5, 20000) unless a French locale is
compiled on the machine, which a laptop or Colab rarely has. Registering a "linear" scale
whose default formatter writes 0,5 and 20 000 fixes every figure of the course at once,
including those drawn by hand in a notebook; `qlora_lab.course` does it when imported.
Log axes keep matplotlib's own labels (powers of ten have no decimal point).
"""

from __future__ import annotations

import re

from matplotlib import scale, ticker

from qlora_lab.french import THIN_NBSP

_GROUP = re.compile(r"(?<=\d)(?=(?:\d{3})+$)")


def french_number_text(label: str) -> str:
    """'20000.5' -> '20 000,5' (thin no-break space), '−0.25' -> '−0,25'; other text unchanged."""
    whole, point, decimals = label.partition(".")
    digits = re.search(r"\d+$", whole)
    if digits and len(digits.group()) > 4:  # French typography leaves 4-digit numbers ungrouped
        whole = whole[: digits.start()] + _GROUP.sub(THIN_NBSP, digits.group())
    return whole + ("," + decimals if point else "")


class FrenchScalarFormatter(ticker.ScalarFormatter):
    """matplotlib's default tick labels (same ticks, same offset logic), written in French."""

    def __call__(self, x, pos=None) -> str:
        return french_number_text(super().__call__(x, pos))

    def get_offset(self) -> str:
        return super().get_offset().replace(".", ",")

    def format_data_short(self, value) -> str:  # the coordinates shown under the mouse pointer
        return super().format_data_short(value).replace(".", ",")


class FrenchLinearScale(scale.LinearScale):
    """The default linear scale, with `FrenchScalarFormatter` as its major formatter."""

    name = "linear"

    def __init__(self, *_axis) -> None:  # matplotlib < 3.11 passes the axis, >= 3.11 deprecates it
        super().__init__(None)

    def set_default_locators_and_formatters(self, axis) -> None:
        super().set_default_locators_and_formatters(axis)
        axis.set_major_formatter(FrenchScalarFormatter())


def use_french_ticks() -> None:
    """Every axis created from now on writes its linear tick labels in French."""
    scale.register_scale(FrenchLinearScale)
