"""French number, size and duration formatting used by every notebook and progress bar.

One convention for the whole course, stated once here and in the book's guide:
- numbers: French digits, decimal comma, thin no-break space between thousands
  (1 234 567,8), as the Imprimerie nationale's rules and `babel`'s fr locale write them;
- memory and file sizes: IEC binary units (Kio, Mio, Gio = 2¹⁰, 2²⁰, 2³⁰ octets), because
  GPU memory and tensors are counted in powers of two (a "24 GB" RTX 4090 holds 24 Gio);
- percentages with a no-break space before %.

The module sits at the base of the package (beside `paths`) so that the training loop's
progress bars, the CLI and the notebooks all format the same way.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

THIN_NBSP = "\u202f"  # espace fine insécable: thousands separator
NBSP = "\u00a0"  # espace insécable: before units and %
IEC_UNITS = ("octets", "Kio", "Mio", "Gio", "Tio")


def nombre(x: float, decimales: int | None = None) -> str:
    """A number the French way: `nombre(1234567.891, 1)` -> '1 234 567,9'.

    With `decimales=None`, integers print without decimals and other numbers with
    three significant digits (enough for a measurement shown in a sentence).
    """
    if isinstance(x, bool):
        raise TypeError("nombre() formats numbers, not booleans")
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    if isinstance(x, float) and math.isinf(x):
        return "∞" if x > 0 else "−∞"
    if decimales is None:
        decimales = 0 if float(x).is_integer() and abs(x) < 1e15 else _significant_decimals(float(x), 3)
    text = f"{x:,.{decimales}f}"  # 1,234,567.9
    text = text.replace(",", THIN_NBSP).replace(".", ",")
    return text.replace("-", "−")


def _significant_decimals(x: float, digits: int) -> int:
    if x == 0:
        return 0
    magnitude = math.floor(math.log10(abs(x)))
    return max(0, digits - 1 - magnitude)


SUPERSCRIPTS = str.maketrans("0123456789-", "⁰¹²³⁴⁵⁶⁷⁸⁹⁻")


def scientifique(x: float, chiffres: int = 3) -> str:
    """A number in French scientific notation: `scientifique(6.1035e-05)` -> '6,10·10⁻⁵'.

    For the very small and very large values (gradients, float ranges) where `nombre`
    would print a row of zeros; `chiffres` significant digits.
    """
    if x == 0 or (isinstance(x, float) and (math.isnan(x) or math.isinf(x))):
        return nombre(x)
    exponent = math.floor(math.log10(abs(x)))
    mantissa = round(x / 10**exponent, chiffres - 1)
    if abs(mantissa) >= 10:  # 9.999 rounded up to 10.0
        mantissa, exponent = mantissa / 10, exponent + 1
    if exponent == 0:
        return nombre(mantissa, chiffres - 1)
    return f"{nombre(mantissa, chiffres - 1)}·10{str(exponent).translate(SUPERSCRIPTS)}"


def pourcentage(fraction: float, decimales: int = 1) -> str:
    """A fraction as a French percentage: `pourcentage(0.978)` -> '97,8 %'."""
    return f"{nombre(100 * fraction, decimales)}{NBSP}%"


def octets(n_bytes: float, decimales: int = 1) -> str:
    """A size in IEC units: `octets(1_231_462)` -> '1,2 Mio'; below 1 Kio, plain octets."""
    value, unit = float(n_bytes), 0
    while abs(value) >= 1024 and unit < len(IEC_UNITS) - 1:
        value /= 1024
        unit += 1
    if unit == 0:
        return f"{nombre(int(n_bytes))}{NBSP}octets"
    return f"{nombre(value, decimales)}{NBSP}{IEC_UNITS[unit]}"


def duree(seconds: float) -> str:
    """A duration: '0,42 s', '12,3 s', '2 min 05 s', '1 h 03 min'."""
    if seconds < 0:
        raise ValueError(f"a duration cannot be negative: {seconds}")
    if seconds < 60:
        return f"{nombre(seconds, 2 if seconds < 10 else 1)}{NBSP}s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}{NBSP}min{NBSP}{secs:02d}{NBSP}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}{NBSP}h{NBSP}{minutes:02d}{NBSP}min"


def plus_ou_moins(mean: float, spread: float, decimales: int = 2) -> str:
    """A mean and its spread: '0,63 ± 0,04'."""
    return f"{nombre(mean, decimales)}{NBSP}±{NBSP}{nombre(spread, decimales)}"


def cell_text(value: Any, decimales: int | None = None) -> str:
    """How `Tableau` writes one cell: numbers in French, everything else as str()."""
    if isinstance(value, bool):
        return "oui" if value else "non"
    if isinstance(value, (int, float)):
        return nombre(value, decimales)
    if value is None:
        return "–"
    return str(value)


class Tableau:
    """A formatted table that renders as HTML in JupyterLab and the book, as text elsewhere.

    `rows` are dicts (missing keys print as '–'); `colonnes` maps a key to its French
    header; `formats` maps a key to a function value -> str (e.g. `octets`) or to a
    number of decimals. Never print a raw dict in a course output: wrap it in a Tableau.
    """

    def __init__(
        self,
        rows: Sequence[dict[str, Any]],
        colonnes: dict[str, str] | None = None,
        formats: dict[str, Any] | None = None,
        titre: str | None = None,
    ) -> None:
        if not rows:
            raise ValueError("Tableau needs at least one row")
        self.keys = list(colonnes) if colonnes else list(dict.fromkeys(k for r in rows for k in r))
        self.headers = [(colonnes or {}).get(k, k) for k in self.keys]
        self.formats = formats or {}
        self.titre = titre
        self.cells = [[self._format(k, row.get(k)) for k in self.keys] for row in rows]

    def _format(self, key: str, value: Any) -> str:
        fmt = self.formats.get(key)
        if value is None:
            return "–"
        if callable(fmt):
            return fmt(value)
        return cell_text(value, fmt)

    def _repr_html_(self) -> str:
        head = "".join(f"<th>{_escape(h)}</th>" for h in self.headers)
        body = "".join(
            "<tr>" + "".join(f"<td>{_escape(c)}</td>" for c in row) + "</tr>" for row in self.cells
        )
        caption = f"<caption>{_escape(self.titre)}</caption>" if self.titre else ""
        return f'<table class="qlora-tableau">{caption}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'

    def _repr_markdown_(self) -> str:
        lines = ["| " + " | ".join(self.headers) + " |", "|" + "---|" * len(self.headers)]
        lines += ["| " + " | ".join(row) + " |" for row in self.cells]
        return ("**" + self.titre + "**\n\n" if self.titre else "") + "\n".join(lines)

    def __str__(self) -> str:
        widths = [max(len(h), *(len(r[i]) for r in self.cells)) for i, h in enumerate(self.headers)]
        fmt = lambda row: "  ".join(c.rjust(w) for c, w in zip(row, widths))  # noqa: E731
        lines = [fmt(self.headers), "  ".join("─" * w for w in widths)] + [fmt(r) for r in self.cells]
        return ((self.titre + "\n") if self.titre else "") + "\n".join(lines)

    __repr__ = __str__


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def progression(iterable: Iterable | None = None, desc: str = "", total: int | None = None, unit: str = "pas", **kwargs: Any):
    """A tqdm progress bar with French labels (tqdm.auto: a widget in JupyterLab, text elsewhere).

    At most one redraw a second by default: in a notebook every redraw is a widget message, and
    a flood of them overflows the kernel's IOPub queue, which then drops the end of the cell.
    """
    from tqdm.auto import tqdm

    kwargs.setdefault("mininterval", 1.0)

    return tqdm(iterable, desc=desc, total=total, unit=unit, **kwargs)


def silence_library_progress() -> None:
    """Turn off transformers' English progress bars ('Loading weights…') for the course."""
    import os

    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:  # transformers is a dependency; this only guards partial installs
        return
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
