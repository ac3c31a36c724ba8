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
