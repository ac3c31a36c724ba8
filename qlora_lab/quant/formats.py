"""Number formats side by side: range and precision read from `torch.finfo` / `torch.iinfo`.

Notebook 01 shows this table instead of asserting it (guide erratum 17: fp16 and bf16
have the same 16 bits but very different ranges; fp16 needs loss scaling in training).

    from qlora_lab.quant.formats import format_table, format_markdown
    print(format_markdown(format_table()))

int4 has no `iinfo` in torch (``torch.int4`` exists only as a packed storage dtype), so
integer ranges are derived from the bit width: [-2^(b-1), 2^(b-1) - 1].
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from qlora_lab.french import nombre, scientifique

FLOAT_FORMATS = ("float32", "float16", "bfloat16")
INT_FORMATS = {"int8": 8, "int4": 4}
DEFAULT_FORMATS = ("float32", "float16", "bfloat16", "int8", "int4")
# Layout (sign, exponent, mantissa) of each float format, IEEE 754 and Google Brain bf16.
FLOAT_LAYOUT = {"float32": (1, 8, 23), "float16": (1, 5, 10), "bfloat16": (1, 8, 7)}


@dataclass(frozen=True)
class NumberFormat:
    """What one format can hold: its range, its smallest normal value and its step near 1."""

    name: str
    bits: int
    kind: str  # "float" or "int"
    min: float
    max: float
    smallest_normal: float  # floats: finfo.tiny; ints: 1 (the smallest non-zero magnitude)
    eps: float  # gap between 1 and the next representable value (1 for integers)
    n_values: int  # how many distinct bit patterns (2^bits)

    @property
    def decimal_digits(self) -> float:
        """About how many significant decimal digits a float keeps (-log10 eps)."""
        return -math.log10(self.eps)

    @property
    def smallest_subnormal(self) -> float:
        """Smallest positive value: below the normals, IEEE 754 subnormals step by tiny·eps.

        fp16: 2^-14 · 2^-10 = 2^-24 ≈ 5.96e-8 (integers: 1). Values there keep fewer
        significant digits, down to one bit at this smallest one.
        """
        return self.smallest_normal * self.eps if self.kind == "float" else 1.0

    @property
    def dynamic_range_decades(self) -> float:
        """Orders of magnitude between the smallest normal and the largest value."""
        return math.log10(self.max / self.smallest_normal)


def int_range(bits: int, signed: bool = True) -> tuple[int, int]:
    """Range of a `bits`-bit two's-complement (or unsigned) integer."""
    if bits < 1:
        raise ValueError(f"bits must be >= 1, got {bits}")
    if signed:
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


def number_format(name: str) -> NumberFormat:
    """Describe one format by name: 'float32', 'float16', 'bfloat16', 'int8' or 'int4'."""
    if name in FLOAT_FORMATS:
        info = torch.finfo(getattr(torch, name))
        return NumberFormat(name, info.bits, "float", float(info.min), float(info.max),
                            float(info.tiny), float(info.eps), 2**info.bits)
    if name in INT_FORMATS:
        bits = INT_FORMATS[name]
        if name == "int8":  # the one torch knows: check our formula against it
            info = torch.iinfo(torch.int8)
            lo, hi = info.min, info.max
        else:
            lo, hi = int_range(bits)
        return NumberFormat(name, bits, "int", float(lo), float(hi), 1.0, 1.0, 2**bits)
    known = ", ".join(FLOAT_FORMATS + tuple(INT_FORMATS))
    raise ValueError(f"unknown format name {name!r}; expected one of: {known}")


def format_table(names: tuple[str, ...] = DEFAULT_FORMATS) -> list[NumberFormat]:
    """The course's formats table, one row per format."""
    return [number_format(n) for n in names]


def _cell(x: float) -> str:
    """French digits; scientific notation for the very large and very small."""
    return nombre(x) if x == 0 or 1e-3 <= abs(x) < 1e6 else scientifique(x)


def format_markdown(table: list[NumberFormat]) -> str:
    """A Markdown table (French headers and numbers) for `IPython.display.Markdown`."""
    lines = [
        "| format | bits | signe/exposant/mantisse | min | max | plus petit normal "
        "| plus petit sous-normal | epsilon (pas près de 1) | chiffres décimaux |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for f in table:
        layout = "/".join(map(str, FLOAT_LAYOUT[f.name])) if f.name in FLOAT_LAYOUT else "entier"
        if f.kind == "float":
            fine = (f"{_cell(f.smallest_normal)} | {_cell(f.smallest_subnormal)} | {_cell(f.eps)} "
                    f"| {nombre(f.decimal_digits, 1)}")
        else:  # integers: every value in range is exact, the step is 1
            fine = "1 | — | 1 (exact) | —"
        lines.append(f"| {f.name} | {f.bits} | {layout} | {_cell(f.min)} | {_cell(f.max)} | {fine} |")
    return "\n".join(lines)


def round_trip(value: float, dtype: torch.dtype) -> float:
    """What `value` becomes once stored in `dtype` (0 on underflow, inf on overflow)."""
    return float(torch.tensor(value, dtype=torch.float64).to(dtype).double())


def loss_scaling_demo(grad: float = 1e-8, scale: float = 2.0**16) -> dict[str, float]:
    """Why fp16 training needs loss scaling and bf16 does not.

    A tiny gradient underflows to 0 in fp16 but survives in bf16; multiplying the loss
    (hence every gradient) by `scale` before the cast brings it back into fp16's range,
    and dividing by `scale` in fp32 afterwards recovers it (torch.amp.GradScaler).
    """
    if scale <= 0:
        raise ValueError(f"scale must be positive, got {scale}")
    scaled_fp16 = round_trip(grad * scale, torch.float16)
    return {
        "fp32": round_trip(grad, torch.float32),
        "fp16": round_trip(grad, torch.float16),
        "bf16": round_trip(grad, torch.bfloat16),
        "fp16_scaled_then_unscaled": scaled_fp16 / scale,
    }
