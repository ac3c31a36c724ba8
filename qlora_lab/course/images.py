"""The guide's "appareil photo" analogy made literal: one picture stored at 32, 8, 4, 2 bits.

Quantizing a photo reduces its *bit depth* (how many grey/colour levels each pixel may
take), not its number of pixels: at b bits each channel keeps 2^b levels. That is exactly
what quantizing weights does: the same number of parameters, fewer possible values.

    from qlora_lab.course.images import load_sample_image, quantize_image, image_report
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

SAMPLE_IMAGE = "grace_hopper.jpg"  # ships with matplotlib (mpl-data/sample_data)
FLOAT_BITS = 32  # "32 bits": the picture kept as float32, no quantization


def synthetic_image(size: int = 256) -> np.ndarray:
    """A smooth colour picture generated in code (used when matplotlib has no sample data)."""
    if size < 8:
        raise ValueError(f"size must be >= 8, got {size}")
    y, x = np.mgrid[0:size, 0:size] / (size - 1)
    r = np.hypot(x - 0.5, y - 0.5)
    red = 0.5 + 0.5 * np.cos(8 * r)
    green = x
    blue = 0.5 + 0.5 * np.sin(6 * y + 2 * x)
    return np.stack([red, green, blue], axis=-1).astype(np.float32)


def load_sample_image(max_size: int = 300) -> np.ndarray:
    """Grace Hopper's portrait from matplotlib's sample data, as float32 RGB in [0, 1].

    Downsampled by an integer stride to at most `max_size` pixels per side so the demo is
    instant; falls back to `synthetic_image` if the sample file is absent.
    """
    if max_size < 8:
        raise ValueError(f"max_size must be >= 8, got {max_size}")
    import matplotlib.cbook as cbook
    import matplotlib.image as mpimg

    try:
        path = cbook.get_sample_data(SAMPLE_IMAGE, asfileobj=False)
        img = mpimg.imread(path)
    except (OSError, ValueError):
        return synthetic_image(max_size)
    img = np.asarray(img)
    if img.dtype == np.uint8:
        img = img.astype(np.float32) / 255.0
    stride = max(1, math.ceil(max(img.shape[:2]) / max_size))
    return np.ascontiguousarray(img[::stride, ::stride, :3], dtype=np.float32)


def quantize_image(img: np.ndarray, bits: int) -> np.ndarray:
    """Round every channel to 2^bits evenly spaced levels in [0, 1] (and back to float).

    This is zero-point (min-max) quantization with min = 0 and max = 1:
    scale = 1 / (2^bits - 1), q = round(x / scale), x_hat = q * scale.
    bits = 32 returns the float32 picture unchanged.
    """
    if bits == FLOAT_BITS:
        return img.astype(np.float32, copy=True)
    if not 1 <= bits <= 16:
        raise ValueError(f"bits must be in 1..16 or 32, got {bits}")
    levels = 2**bits - 1
    q = np.round(np.clip(img, 0.0, 1.0) * levels)
    return (q / levels).astype(np.float32)


@dataclass(frozen=True)
class ImageQuality:
    """One row of the photo report: levels kept, memory, error."""

    bits: int
    levels_used: int  # distinct values actually present in the red channel
    size_kib: float  # pixels × channels × bits / 8
    mse: float
    psnr_db: float  # peak signal-to-noise ratio, peak = 1; inf when identical


def psnr(reference: np.ndarray, approx: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB for pictures in [0, 1] (higher is better)."""
    mse = float(np.mean((reference.astype(np.float64) - approx) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(1.0 / mse)


def image_report(img: np.ndarray, bits_list: tuple[int, ...] = (32, 8, 4, 2)) -> list[ImageQuality]:
    """Quantize `img` at each bit width and measure what is lost."""
    rows = []
    for bits in bits_list:
        approx = quantize_image(img, bits)
        mse = float(np.mean((img.astype(np.float64) - approx) ** 2))
        levels = len(np.unique(approx[..., 0]))
        rows.append(ImageQuality(bits, levels, img.size * bits / 8 / 1024, mse, psnr(img, approx)))
    return rows
