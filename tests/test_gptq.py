"""Tests for qlora_lab.quant.gptq: GPTQ equals a textbook OBQ update and beats round-to-nearest."""

import pytest
import torch

from qlora_lab.quant.gptq import (
    gptq_quantize,
    group_grid,
    hessian,
    output_error,
    quantize_on_grid,
    rtn_quantize,
)


pytestmark = pytest.mark.usefixtures("single_thread")


def correlated_inputs(n: int, features: int, seed: int) -> torch.Tensor:
    """Inputs with correlated features and a few loud dimensions, like a transformer's hidden states."""
    gen = torch.Generator().manual_seed(seed)
    mixing = torch.randn(features, features, generator=gen) / features**0.5
    loudness = torch.ones(features)
    loudness[torch.randperm(features, generator=gen)[:3]] = 8.0
    return (torch.randn(n, features, generator=gen) @ mixing + 0.3 * torch.randn(n, features, generator=gen)) * loudness


def textbook_gptq(weight: torch.Tensor, x: torch.Tensor, bits: int, group_size: int, damp: float = 0.01) -> torch.Tensor:
    """OBQ's update in a fixed column order, with the inverse Hessian downdated explicitly (GPTQ eq. 2-3).

    No Cholesky factor, no blocks: after quantizing column q, every remaining weight moves by
    -err * Hinv[q, :] / Hinv[q, q], then q is removed from Hinv by Gaussian elimination.
    """
    w = weight.to(torch.float64).clone()
    h = 2.0 / x.shape[0] * x.to(torch.float64).T @ x.to(torch.float64)
    dead = torch.diag(h) == 0  # as IST-DASLab/gptq's gptq.py: H[dead, dead] = 1, W[:, dead] = 0, then damp
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    h += damp * torch.mean(torch.diag(h)) * torch.eye(h.shape[0], dtype=torch.float64)
    h_inv = torch.linalg.inv(h)
    q_all = torch.zeros_like(w)
    for q in range(w.shape[1]):
        if q % group_size == 0:
            scale, zero = group_grid(w[:, q : q + group_size], bits)
        q_all[:, q] = quantize_on_grid(w[:, q : q + 1], scale, zero, bits)[:, 0]
        err = (w[:, q] - q_all[:, q]) / h_inv[q, q]
        w -= torch.outer(err, h_inv[q, :])
        h_inv -= torch.outer(h_inv[:, q], h_inv[q, :]) / h_inv[q, q]
    return q_all


def test_grid_by_hand():
    # Row [-1, 0, 0.5, 2] at 2 bits: range [-1, 2], scale 3/3 = 1, zero = round(1) = 1, levels -1, 0, 1, 2;
    # 0.5 / 1 = 0.5 rounds half to even (0), so 0.5 -> 0.
    w = torch.tensor([[-1.0, 0.0, 0.5, 2.0]])
    scale, zero = group_grid(w, bits=2)
    assert scale.item() == 1.0 and zero.item() == 1.0
    assert quantize_on_grid(w, scale, zero, 2).tolist() == [[-1.0, 0.0, 0.0, 2.0]]
    # A positive-only row still contains 0 (the range is widened to [0, max]): levels 0, 1/3, 2/3, 1.
    assert rtn_quantize(torch.tensor([[0.3, 1.0]]), bits=2, group_size=2)[0].tolist() == pytest.approx([1 / 3, 1.0])


def test_hessian_is_twice_the_input_covariance():
    x = torch.tensor([[1.0, 2.0], [3.0, -1.0]])
    assert torch.allclose(hessian(x), torch.tensor([[10.0, -1.0], [-1.0, 5.0]], dtype=torch.float64))
    # (batch, seq, features) is flattened over its leading dims: the same two rows plus two zero rows,
    # n = 4 samples, so H = 2/4 · XᵀX = the matrix above halved. seq (4) != features (2) on purpose.
    x3 = torch.cat([x, torch.zeros(2, 2)]).reshape(1, 4, 2)
    assert torch.allclose(hessian(x3), torch.tensor([[5.0, -0.5], [-0.5, 2.5]], dtype=torch.float64))


@pytest.mark.parametrize("bits", [2, 3, 4])
@pytest.mark.parametrize("group_size", [8, 16, 48])
def test_equals_the_textbook_update(bits, group_size):
    gen = torch.Generator().manual_seed(bits * 100 + group_size)
    weight = torch.randn(8, 64, generator=gen, dtype=torch.float64)
    x = correlated_inputs(192, 64, seed=group_size).to(torch.float64)
    fast = gptq_quantize(weight, x, bits=bits, group_size=group_size)
    slow = textbook_gptq(weight, x, bits, group_size)
    assert fast.dtype == weight.dtype and fast.shape == weight.shape
    assert torch.allclose(fast, slow, atol=1e-9, rtol=0)


def test_lazy_blocks_span_several_groups_and_blocks():
    # 200 columns, groups of 32: a lazy block of 128 (four groups), then 72 columns ending in a partial group.
    gen = torch.Generator().manual_seed(7)
    weight = torch.randn(6, 200, generator=gen, dtype=torch.float64)
    x = correlated_inputs(400, 200, seed=7).to(torch.float64)
    assert torch.allclose(gptq_quantize(weight, x, bits=3, group_size=32), textbook_gptq(weight, x, 3, 32), atol=1e-9)


@pytest.mark.parametrize("bits", [2, 3, 4])
@pytest.mark.parametrize("group_size", [32, 64, 128])
def test_layer_output_error_below_round_to_nearest(bits, group_size):
    weight = torch.randn(64, 128, generator=torch.Generator().manual_seed(bits)).to(torch.bfloat16)
    calibration, held_out = correlated_inputs(1024, 128, seed=1).split(512)
    gptq = gptq_quantize(weight, calibration, bits=bits, group_size=group_size)
    rtn = rtn_quantize(weight, bits=bits, group_size=group_size)
    assert gptq.dtype == torch.bfloat16 and gptq.shape == weight.shape
    # Every GPTQ weight is a grid point of its group: as many distinct values per group row as RTN allows.
    assert len(torch.unique(gptq.float()[0, :group_size])) <= 2**bits
    assert output_error(weight, gptq, held_out) < output_error(weight, rtn, held_out)


def test_dead_columns_are_zeroed():
    x = correlated_inputs(64, 16, seed=3)
    x[:, 5] = 0.0
    weight = torch.randn(4, 16)
    fast = gptq_quantize(weight, x, bits=4, group_size=8)
    assert torch.all(fast[:, 5] == 0)
    # The dead diagonal entry (1, as in the reference code) enters the dampening mean: the whole result
    # must equal the explicit update of the reference recipe, not only the dead column.
    assert torch.allclose(fast.double(), textbook_gptq(weight, x, 4, 8), atol=1e-6, rtol=0)


def test_bad_arguments():
    with pytest.raises(ValueError, match="bits"):
        gptq_quantize(torch.zeros(2, 4), torch.zeros(3, 4), bits=1)
    with pytest.raises(ValueError, match="have 5 features, the weight has 4 input columns"):
        gptq_quantize(torch.zeros(2, 4), torch.zeros(3, 5))
    with pytest.raises(ValueError, match="group_size=0 must be positive"):
        gptq_quantize(torch.zeros(2, 4), torch.zeros(3, 4), group_size=0)
    with pytest.raises(ValueError, match="2-D"):
        rtn_quantize(torch.zeros(4))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_with_uncorrelated_inputs_gptq_is_round_to_nearest(dtype):
    """Inputs whose features never co-vary give a diagonal H, so H^-1 and its Cholesky factor are
    diagonal: OBQ's update -err/[H^-1]_qq · [H^-1]_{:,q} moves no other weight, and GPTQ is RTN on
    the same grid. Both functions at their defaults (the same bits and groups, as rtn_quantize's
    docstring promises), on 130 columns: two groups of 64 and a partial one; dtype kept."""
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(8, 130, generator=gen, dtype=torch.float64).to(dtype)
    x = torch.diag(torch.rand(130, generator=gen, dtype=torch.float64) + 0.5)  # XᵀX diagonal
    gptq, rtn = gptq_quantize(weight, x), rtn_quantize(weight)
    assert gptq.dtype == rtn.dtype == dtype
    if dtype == torch.float32:  # RTN rounds in float32, GPTQ in float64: at most one float32 rounding apart
        torch.testing.assert_close(gptq, rtn, rtol=2.5e-7, atol=0)
    else:  # float64: the same arithmetic; bfloat16: both land on the same bfloat16 values
        assert torch.equal(gptq, rtn)


def test_calibration_inputs_of_any_leading_shape_are_flattened_into_samples():
    """(batch, seq, features) inputs, seq != features, are the batch·seq samples of the 2-D case."""
    gen = torch.Generator().manual_seed(1)
    weight = torch.randn(4, 32, generator=gen, dtype=torch.float64)
    x = correlated_inputs(96, 32, seed=1).to(torch.float64)
    flat = gptq_quantize(weight, x, bits=3, group_size=16)
    assert torch.equal(gptq_quantize(weight, x.reshape(2, 48, 32), bits=3, group_size=16), flat)
    assert output_error(weight, flat, x.reshape(2, 48, 32)) == pytest.approx(output_error(weight, flat, x), rel=1e-12)
    with pytest.raises(ValueError, match="have 5 features, the weight has 32 input columns"):
        gptq_quantize(weight, torch.zeros(2, 3, 5))


def test_dampening_is_the_one_asked_for():
    """damp=0.1 (ten times GPTQ's 1 %) against the textbook update with the same dampening."""
    gen = torch.Generator().manual_seed(2)
    weight = torch.randn(6, 48, generator=gen, dtype=torch.float64)
    x = correlated_inputs(128, 48, seed=2).to(torch.float64)
    damped = gptq_quantize(weight, x, bits=3, group_size=16, damp=0.1)
    assert torch.allclose(damped, textbook_gptq(weight, x, 3, 16, damp=0.1), atol=1e-9, rtol=0)
    assert not torch.allclose(damped, textbook_gptq(weight, x, 3, 16, damp=0.01), atol=1e-9, rtol=0)


def test_output_error_by_hand():
    """X = [[2, 0], [0, 1]], W = [[1, 1]], Ŵ = [[0.5, 1]]: XWᵀ = (2, 1), XŴᵀ = (1, 1), error 1/√5."""
    x, w, w_hat = torch.tensor([[2.0, 0.0], [0.0, 1.0]]), torch.tensor([[1.0, 1.0]]), torch.tensor([[0.5, 1.0]])
    assert output_error(w, w_hat, x) == pytest.approx(1 / 5**0.5, rel=1e-12)


@pytest.mark.parametrize("row, bits, scale, zero", [
    ([0.0, 15.0], 4, 1.0, 0.0),  # 2**4 = 16 levels over [0, 15]: 15 steps of 1
    ([-0.5, 0.25], 2, 0.25, 2.0),  # a max below 1: [-0.5, 0.25] in 3 steps of 0.25, 0 at q = 2
    ([-3.0, -1.5], 2, 1.0, 3.0),  # all negative: the range is widened up to 0, [-3, 0]
    ([0.0, 0.0], 2, 2 / 3, 2.0),  # all zero: [-1, 1], zero = round(1.5) = 2 (half to even)
])
def test_grid_of_special_rows_by_hand(row, bits, scale, zero):
    got_scale, got_zero = group_grid(torch.tensor([row]), bits)
    assert got_scale.item() == pytest.approx(scale, rel=1e-6) and got_zero.item() == zero
    assert torch.isfinite(quantize_on_grid(torch.tensor([row]), got_scale, got_zero, bits)).all()


def test_values_beyond_the_grid_land_on_its_ends():
    """Scale 1, zero 1, 2 bits: levels -1, 0, 1, 2. GPTQ's updates push later columns of a group past
    the grid fixed at its first column; they must land on the nearest end, not on a level that is not there."""
    one = torch.tensor([[1.0]])
    assert quantize_on_grid(torch.tensor([[-5.0, -1.4, 0.4, 1.6, 9.0]]), one, one, 2).tolist() == [[-1, -1, 0, 2, 2]]


def test_bits_and_group_size_limits_are_inclusive():
    """bits in [2, 8] with both ends allowed, as the message says; groups of one weight allowed, and then
    every weight is an end of its own range [min(w, 0), max(w, 0)]: reproduced (to rounding)."""
    gen = torch.Generator().manual_seed(3)
    weight, x = torch.randn(4, 16, generator=gen), correlated_inputs(64, 16, seed=3)
    errors = {bits: output_error(weight, gptq_quantize(weight, x, bits=bits, group_size=8), x) for bits in (2, 8)}
    assert errors[8] < errors[2]
    for bits in (1, 9):
        with pytest.raises(ValueError, match=rf"bits={bits} must be in \[2, 8\]"):
            rtn_quantize(weight, bits=bits)
    torch.testing.assert_close(rtn_quantize(weight, group_size=1), weight)
    torch.testing.assert_close(gptq_quantize(weight, x, group_size=1), weight)
