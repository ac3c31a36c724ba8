"""Bits / block-size explorer: the numbers behind the sliders."""

import matplotlib

matplotlib.use("Agg")

import pytest
import torch

from qlora_lab.course.widgets import BLOCKSIZES, granularity_errors, outlier_weights, quantization_explorer


def test_outlier_weights_are_seeded_and_hold_outliers():
    w = outlier_weights(seed=3)
    assert torch.equal(w, outlier_weights(seed=3))
    assert (w.abs() > 0.3).sum() == 8  # 25 × 0.02 = 0.5, far beyond the 0.02 std


@pytest.mark.parametrize("bits", [3, 4, 8])
def test_finer_granularity_lowers_error_with_outliers(bits):
    e = granularity_errors(outlier_weights(), bits=bits, blocksize=64)
    assert e["block"] < e["channel"] < e["tensor"]


def test_error_falls_with_bits_and_smaller_blocks():
    w = outlier_weights()
    assert granularity_errors(w, bits=8)["tensor"] < granularity_errors(w, bits=4)["tensor"]
    assert granularity_errors(w, 4, blocksize=16)["block"] < granularity_errors(w, 4, blocksize=1024)["block"]


def test_explorer_sliders_recompute():
    ex = quantization_explorer(bits=4, blocksize=64)
    bits_slider, block_slider = ex.children[0], ex.children[1]
    assert (bits_slider.min, bits_slider.max) == (2, 8)
    assert list(block_slider.options) == list(BLOCKSIZES)
    err4 = ex.result["tensor"]
    bits_slider.value = 8
    assert ex.result["tensor"] < err4


def test_explorer_rejects_unknown_blocksize():
    with pytest.raises(ValueError, match="blocksize"):
        quantization_explorer(blocksize=100)
