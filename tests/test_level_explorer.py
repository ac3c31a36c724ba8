"""NF4 / FP4 / INT4 level explorer: the numbers behind the widgets of chapter 03."""

import math

import matplotlib

matplotlib.use("Agg")

import pytest
import torch
from scipy.stats import kurtosis

from qlora_lab.course.level_explorer import (
    BLOCKSIZES,
    TAILS,
    block_normalised,
    code_entropy,
    format_errors,
    level_explorer,
    sample_weights,
)
from qlora_lab.quant.codes import pack_4bit


def test_samples_are_seeded_and_small_df_has_heavier_tails():
    assert torch.equal(sample_weights(3.0, seed=1), sample_weights(3.0, seed=1))
    normal, heavy = sample_weights(math.inf), sample_weights(5.0)
    assert abs(normal.std().item() - 0.02) < 0.0005
    assert abs(kurtosis(normal.numpy())) < 0.1  # excess kurtosis of a normal law: 0
    assert kurtosis(heavy.numpy()) > 2  # Student-t(5): 6 in theory, noisy estimate


def test_block_normalised_puts_each_block_absmax_at_one():
    w = sample_weights(3.0, n=4096)
    blocks = block_normalised(w, 64).reshape(-1, 64)
    torch.testing.assert_close(blocks.abs().amax(dim=1), torch.ones(64))
    with pytest.raises(ValueError, match="blocks of 64"):
        block_normalised(torch.ones(100), 64)


def test_code_entropy_is_four_bits_for_uniform_codes_and_zero_for_one_code():
    uniform = pack_4bit(torch.arange(16, dtype=torch.uint8).repeat(8))
    assert code_entropy(uniform, 128) == pytest.approx(4.0)
    assert code_entropy(pack_4bit(torch.full((64,), 7, dtype=torch.uint8)), 64) == 0.0


def test_nf4_wins_on_normal_weights_and_errors_grow_with_the_blocks():
    w = sample_weights(math.inf)
    small, large = format_errors(w, 64), format_errors(w, 1024)
    assert small["nf4"]["mse"] < min(small["fp4"]["mse"], small["int4"]["mse"])
    assert all(small[q]["mse"] < large[q]["mse"] for q in small)
    assert small["nf4"]["entropie"] > small["int4"]["entropie"]


def test_explorer_controls_recompute():
    ex = level_explorer()
    buttons, block_slider, tails_slider = ex.children[:3]
    assert list(block_slider.options) == list(BLOCKSIZES)
    assert [v for _, v in tails_slider.options] == list(TAILS)
    nf4_normal = ex.result["nf4"]["mse"]
    tails_slider.value = 3.0
    assert ex.result["nf4"]["mse"] != nf4_normal
    block_slider.value = 1024
    assert ex.result["int4"]["mse"] > ex.result["nf4"]["mse"]


@pytest.mark.parametrize("kwargs", [{"quant_type": "nf3"}, {"blocksize": 100}, {"df": 4.0}])
def test_explorer_rejects_unknown_settings(kwargs):
    with pytest.raises(ValueError):
        level_explorer(**kwargs)
