"""QAT with a straight-through estimator, against PTQ at 4 bits."""

import pytest
import torch
from torch import nn

from qlora_lab.quant.absmax import fake_quantize
from qlora_lab.quant.ptq import make_mlp
from qlora_lab.quant.qat import (QATLinear, make_regression_task, qat_vs_ptq, quantize_weights, ste_fake_quantize,
                           test_mse as mse_on_test, to_qat)


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_ste_forward_is_fake_quantize_and_gradient_is_identity(bits):
    w = torch.randn(8, 16, requires_grad=True)
    out = ste_fake_quantize(w, bits)
    assert torch.equal(out.detach(), fake_quantize(w.detach(), bits=bits))
    (out * torch.arange(out.numel()).view_as(out)).sum().backward()
    assert torch.equal(w.grad, torch.arange(w.numel(), dtype=torch.float32).view_as(w))


@pytest.mark.parametrize("bits", [4, 8])
def test_ste_matches_torch_fake_quantize_per_channel(bits):
    w = torch.randn(6, 32, requires_grad=True)
    qmax = 2 ** (bits - 1) - 1
    scale = (w.detach().abs().amax(dim=1) / qmax).float()
    ref_in = w.detach().clone().requires_grad_(True)
    ref = torch.fake_quantize_per_channel_affine(ref_in, scale, torch.zeros(6, dtype=torch.int32), 0, -qmax, qmax)
    ours = ste_fake_quantize(w, bits, granularity="channel")
    assert torch.allclose(ours, ref, atol=1e-6)
    ours.sum().backward()
    ref.sum().backward()
    assert torch.equal(w.grad, ref_in.grad)


def test_to_qat_and_back_keep_weights():
    model = make_mlp(4, 2, hidden=8, depth=3)
    qat = to_qat(model, bits=4)
    qat_layers = [m for m in qat.modules() if isinstance(m, QATLinear)]
    assert len(qat_layers) == 3
    assert torch.equal(qat_layers[0].weight, model[0].weight)
    deployed = quantize_weights(qat, bits=4)
    assert not any(isinstance(m, QATLinear) for m in deployed.modules())
    assert torch.equal(deployed[0].weight, fake_quantize(model[0].weight.detach(), bits=4))
    x = torch.randn(5, 4)
    assert torch.allclose(qat(x), deployed(x), atol=1e-6)  # QAT forward = deployed model


def test_regression_task_seeded():
    a, b = make_regression_task(n_train=16, n_test=8, seed=2), make_regression_task(n_train=16, n_test=8, seed=2)
    assert torch.equal(a.y_train, b.y_train) and a.x_test.shape == (8, 8)
    assert a.x_train.abs().max() <= 1


def test_qat_beats_ptq_at_4_bits():
    task = make_regression_task(n_train=1024, n_test=1000)
    r = qat_vs_ptq(bits=4, hidden=48, pretrain_epochs=25, finetune_epochs=8, task=task)
    assert r.float_mse < r.ptq_mse  # rounding to 4 bits costs accuracy
    assert r.qat_mse < r.ptq_mse and r.qat_mse < r.float_more_ptq_mse
    assert len(r.curves["flottant puis QAT (poids quantifiés)"]) == 25 + 8
    assert mse_on_test(nn.Sequential(nn.Linear(8, 1)), task) > r.float_mse


def test_bad_epochs_raise():
    with pytest.raises(ValueError, match="finetune_epochs"):
        qat_vs_ptq(finetune_epochs=0, task=make_regression_task(n_train=8, n_test=8))
