"""Quantization-aware training (QAT) with a straight-through estimator, against PTQ at 4 bits.

QAT trains with *fake-quantized* weights: the forward pass uses the rounded weights the
deployed model will have, so training learns weights that survive the rounding.
Rounding has zero gradient almost everywhere; the straight-through estimator (STE,
Bengio et al. 2013) pretends its gradient is 1:

    w_q = w + (fake_quantize(w) - w).detach()    # forward: fake_quantize(w); backward: identity

This is what `torch.fake_quantize_per_channel_affine` does inside its range (the tests
check that our STE matches it, values and gradients). QLoRA is *not* QAT: it freezes an
NF4 base and trains 16-bit LoRA adapters next to it (guide erratum 7).

    from qlora_lab.quant.qat import qat_vs_ptq
    result = qat_vs_ptq(bits=4)        # seeded, a few seconds on a CPU
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from torch import nn

from qlora_lab.quant.absmax import fake_quantize
from qlora_lab.quant.ptq import fit_epochs, make_mlp


def ste_fake_quantize(w: torch.Tensor, bits: int = 4, granularity: str = "tensor") -> torch.Tensor:
    """Absmax fake quantization whose gradient is the identity (straight-through)."""
    return w + (fake_quantize(w, bits=bits, granularity=granularity) - w).detach()


class QATLinear(nn.Linear):
    """An `nn.Linear` whose forward pass sees its weight fake-quantized to `bits` bits."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 bits: int = 4, granularity: str = "tensor") -> None:
        super().__init__(in_features, out_features, bias=bias)
        self.bits, self.granularity = bits, granularity

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w_q = ste_fake_quantize(self.weight, self.bits, self.granularity)  # (out, in)
        return nn.functional.linear(x, w_q, self.bias)

    @classmethod
    def from_linear(cls, linear: nn.Linear, bits: int, granularity: str) -> "QATLinear":
        """A QAT copy of a trained `nn.Linear` (same weights)."""
        new = cls(linear.in_features, linear.out_features, linear.bias is not None, bits, granularity)
        new.load_state_dict(linear.state_dict())
        return new


def to_qat(model: nn.Module, bits: int = 4, granularity: str = "tensor") -> nn.Module:
    """Copy of `model` with every `nn.Linear` replaced by a `QATLinear`."""
    model = copy.deepcopy(model)
    for name, child in list(model.named_children()):
        if isinstance(child, nn.Linear):
            setattr(model, name, QATLinear.from_linear(child, bits, granularity))
        else:
            setattr(model, name, to_qat(child, bits, granularity))
    return model


@torch.no_grad()
def quantize_weights(model: nn.Module, bits: int = 4, granularity: str = "tensor") -> nn.Module:
    """Post-training weight quantization: a plain copy whose Linear weights are rounded.

    For a QAT model this gives the deployed model (QATLinear layers become nn.Linear).
    """
    model = copy.deepcopy(model)
    for name, child in list(model.named_children()):
        if isinstance(child, nn.Linear):
            plain = nn.Linear(child.in_features, child.out_features, child.bias is not None)
            plain.load_state_dict(child.state_dict())
            plain.weight.copy_(fake_quantize(child.weight, bits=bits, granularity=granularity))
            setattr(model, name, plain)
        else:
            setattr(model, name, quantize_weights(child, bits, granularity))
    return model


@dataclass
class RegressionTask:
    """Learn a fixed random "teacher" network: y = tanh(x W1) W2, x uniform in [-1, 1]^d.

    A regression is used on purpose: its test error reacts to small weight changes,
    where a classifier's accuracy often hides them.
    """

    x_train: torch.Tensor  # (n_train, n_features)
    y_train: torch.Tensor  # (n_train, 1)
    x_test: torch.Tensor
    y_test: torch.Tensor


def make_regression_task(n_train: int = 2048, n_test: int = 2000, n_features: int = 8,
                         teacher_width: int = 16, seed: int = 0) -> RegressionTask:
    """A seeded teacher-student regression task."""
    if min(n_train, n_test, n_features, teacher_width) < 1:
        raise ValueError("n_train, n_test, n_features and teacher_width must be >= 1")
    gen = torch.Generator().manual_seed(seed)
    w1 = torch.randn(n_features, teacher_width, generator=gen)  # (d, width)
    w2 = torch.randn(teacher_width, 1, generator=gen) / teacher_width**0.5  # (width, 1)

    def sample(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.rand(n, n_features, generator=gen) * 2 - 1
        return x, torch.tanh(x @ w1) @ w2

    return RegressionTask(*sample(n_train), *sample(n_test))


def train_regressor(model: nn.Module, task: RegressionTask, epochs: int = 40, lr: float = 1e-2,
                    batch_size: int = 256, seed: int = 0) -> list[float]:
    """Adam with a cosine learning-rate decay on the mean squared error; loss per epoch."""
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    steps_per_epoch = -(-len(task.x_train) // batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs * steps_per_epoch)
    return fit_epochs(model, task.x_train, task.y_train, nn.functional.mse_loss, opt,
                      epochs, batch_size, seed, schedule)


@torch.no_grad()
def test_mse(model: nn.Module, task: RegressionTask) -> float:
    """Mean squared error on the test split."""
    model.eval()
    return float(nn.functional.mse_loss(model(task.x_test), task.y_test))


@dataclass
class QatResult:
    """Test errors (MSE) of the float model, its PTQ copy and its QAT fine-tune, plus curves."""

    bits: int
    float_mse: float
    ptq_mse: float  # float model, weights rounded after training
    float_more_ptq_mse: float  # control: the same extra epochs in float, then rounded
    qat_mse: float  # QAT fine-tune, then rounded (what is deployed)
    curves: dict[str, list[float]] = field(default_factory=dict)


def qat_vs_ptq(bits: int = 4, granularity: str = "tensor", hidden: int = 64,
               pretrain_epochs: int = 40, finetune_epochs: int = 15, finetune_lr: float = 3e-3,
               seed: int = 0, task: RegressionTask | None = None) -> QatResult:
    """Train a float MLP, then compare PTQ with QAT at `bits` bits on the test set.

    Fair comparison: QAT fine-tunes for `finetune_epochs` more epochs, so a control
    model gets the same extra epochs in float before being rounded (PTQ).
    """
    if finetune_epochs < 1:
        raise ValueError(f"finetune_epochs must be >= 1, got {finetune_epochs}")
    task = task or make_regression_task(seed=seed)
    model = make_mlp(task.x_train.shape[1], 1, hidden=hidden, depth=3, seed=seed)
    pre_losses = train_regressor(model, task, epochs=pretrain_epochs, seed=seed)

    control = copy.deepcopy(model)
    control_losses = train_regressor(control, task, finetune_epochs, lr=finetune_lr, seed=seed + 1)
    qat_model = to_qat(model, bits, granularity)
    qat_losses = train_regressor(qat_model, task, finetune_epochs, lr=finetune_lr, seed=seed + 1)

    def quantized_mse(m: nn.Module) -> float:
        return test_mse(quantize_weights(m, bits, granularity), task)

    return QatResult(
        bits=bits,
        float_mse=test_mse(model, task),
        ptq_mse=quantized_mse(model),
        float_more_ptq_mse=quantized_mse(control),
        qat_mse=quantized_mse(qat_model),
        curves={"flottant (puis PTQ)": pre_losses + control_losses,
                "flottant puis QAT (poids quantifiés)": pre_losses + qat_losses},
    )
