"""Tests for qlora_lab.quant.llm_int8 (equal to bitsandbytes' Linear8bitLt) and qlora_lab.quant.awq."""

import pytest
import torch

from qlora_lab.quant.awq import activation_scales, awq_search
from qlora_lab.quant.gptq import output_error, rtn_quantize
from qlora_lab.quant.llm_int8 import decomposition_error, int8_matmul, outlier_columns, to_linear8bitlt


pytestmark = pytest.mark.usefixtures("eager_single_thread")


def activations(n: int, features: int, outlier_dims: tuple[int, ...], size: float, seed: int = 0) -> torch.Tensor:
    """Gaussian hidden states with a few dimensions `size` times louder (emergent features)."""
    x = torch.randn(n, features, generator=torch.Generator().manual_seed(seed))
    x[:, list(outlier_dims)] *= size
    return x


@pytest.mark.parametrize("threshold", [0.0, 6.0])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_equals_bitsandbytes_linear8bitlt(threshold, dtype):
    linear = torch.nn.Linear(96, 40, bias=True)
    x = activations(24, 96, outlier_dims=(5, 70), size=10.0).to(dtype).reshape(2, 12, 96)
    bnb_layer = to_linear8bitlt(linear.to(dtype), threshold=threshold)
    with torch.no_grad():
        expected = bnb_layer(x)
    ours = int8_matmul(x, linear.weight.data, threshold=threshold, bias=linear.bias.data)
    assert ours.dtype == expected.dtype and ours.shape == expected.shape
    assert torch.equal(ours, expected)


def test_outlier_columns_by_hand():
    x = torch.tensor([[0.5, -7.0, 1.0], [6.0, 0.1, 0.2]])
    assert outlier_columns(x, 6.0).tolist() == [0, 1]


def test_mixed_precision_beats_plain_int8_only_with_outliers():
    weight = torch.randn(64, 128, generator=torch.Generator().manual_seed(1)) * 0.05
    loud = decomposition_error(activations(256, 128, outlier_dims=(3, 50), size=20.0), weight)
    quiet = decomposition_error(activations(256, 128, outlier_dims=(), size=1.0) * 0.5, weight)
    assert loud["n_outliers"] >= 2 and loud["llm_int8"] < loud["int8"] / 3
    # No |x| >= 6: the decomposition has nothing to take out and both paths are the same matmul.
    assert quiet["n_outliers"] == 0 and quiet["llm_int8"] == quiet["int8"]


def test_awq_at_alpha_zero_is_round_to_nearest():
    x = activations(512, 64, outlier_dims=(1, 9), size=8.0).abs()
    assert torch.allclose(activation_scales(x, 0.0), torch.ones(64))
    w_hat, alpha = awq_search(torch.randn(16, 64), x, bits=4, group_size=32, n_grid=1)
    assert alpha == 0.0


@pytest.mark.parametrize("bits", [3, 4])
def test_awq_beats_round_to_nearest_on_salient_channels(bits):
    gen = torch.Generator().manual_seed(bits)
    weight = torch.randn(64, 128, generator=gen)
    calibration, held_out = activations(2048, 128, outlier_dims=(4, 17, 99), size=12.0, seed=bits).split(1024)
    awq, alpha = awq_search(weight, calibration, bits=bits, group_size=64)
    assert alpha > 0
    assert output_error(weight, awq, held_out) < output_error(weight, rtn_quantize(weight, bits, 64), held_out)
