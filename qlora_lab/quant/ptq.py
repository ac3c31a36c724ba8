"""Post-training dynamic INT8 quantization (PTQ) of a small model: size, speed, accuracy.

The guide calls `torch.quantization.quantize_dynamic` (erratum 6). The API now lives in
`torch.ao.quantization` (the old name is an alias), works on CPU only, quantizes the
weights of `nn.Linear` to int8 ahead of time and the activations on the fly, and is
deprecated in favour of torchao (`torchao.quantization.quantize_`). This module trains a
small classifier on a synthetic task in a few seconds and measures what PTQ changes.

    from qlora_lab.quant.ptq import make_task, train_classifier, quantize_dynamic_int8, ptq_report
"""

from __future__ import annotations

import copy
import io
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import nn


@contextmanager
def single_thread() -> Iterator[None]:
    """Run tiny-model training on one thread: with matrices this small, extra threads only
    add synchronisation (and on a busy machine they make training several times slower)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@dataclass
class Task:
    """A synthetic classification task: train and test splits (x float32, y int64)."""

    x_train: torch.Tensor  # (n_train, n_features)
    y_train: torch.Tensor  # (n_train,)
    x_test: torch.Tensor
    y_test: torch.Tensor
    n_classes: int


def make_task(n_train: int = 2000, n_test: int = 2000, n_features: int = 32, n_classes: int = 8,
              noise: float = 2.0, seed: int = 0) -> Task:
    """Classes = Gaussian clouds around random centres, passed through a fixed non-linearity.

    The tanh warp makes the classes not linearly separable, so the model needs its hidden
    layers; `noise` sets how much the clouds overlap (hence the best reachable accuracy).
    """
    if n_train < 1 or n_test < 1 or n_features < 1 or n_classes < 2:
        raise ValueError("n_train, n_test, n_features must be >= 1 and n_classes >= 2")
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(n_classes, n_features, generator=gen) * 1.5  # (n_classes, n_features)
    mixing = torch.randn(n_features, n_features, generator=gen) / n_features**0.5

    def sample(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.randint(0, n_classes, (n,), generator=gen)
        x = centres[y] + noise * torch.randn(n, n_features, generator=gen)
        return torch.tanh(x @ mixing) * 3.0, y

    x_train, y_train = sample(n_train)
    x_test, y_test = sample(n_test)
    return Task(x_train, y_train, x_test, y_test, n_classes)


def make_mlp(n_features: int, n_classes: int, hidden: int = 256, depth: int = 3, seed: int = 0) -> nn.Sequential:
    """A ReLU MLP: `depth` Linear layers (the only layers dynamic PTQ quantizes)."""
    if depth < 1 or hidden < 1:
        raise ValueError(f"depth and hidden must be >= 1, got depth={depth}, hidden={hidden}")
    torch.manual_seed(seed)
    sizes = [n_features] + [hidden] * (depth - 1) + [n_classes]
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes, sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < depth - 1:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def train_classifier(model: nn.Module, task: Task, epochs: int = 10, lr: float = 3e-3,
                     batch_size: int = 128, seed: int = 0) -> list[float]:
    """Plain AdamW + cross-entropy; returns the mean training loss of each epoch."""
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    return fit_epochs(model, task.x_train, task.y_train, nn.functional.cross_entropy, opt,
                      epochs, batch_size, seed)


def fit_epochs(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn, opt: torch.optim.Optimizer,
               epochs: int, batch_size: int, seed: int, schedule=None) -> list[float]:
    """Shuffled mini-batch training on one thread; the mean loss of each epoch.

    `schedule`, if given, steps after every optimizer step. Leaves the model in eval mode.
    """
    gen = torch.Generator().manual_seed(seed)
    losses = []
    model.train()
    with single_thread():
        for _ in range(epochs):
            order = torch.randperm(len(x), generator=gen)
            total = 0.0
            for start in range(0, len(order), batch_size):
                idx = order[start:start + batch_size]
                loss = loss_fn(model(x[idx]), y[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
                if schedule is not None:
                    schedule.step()
                total += float(loss.detach()) * len(idx)
            losses.append(total / len(order))
    model.eval()
    return losses


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Fraction of correct predictions."""
    model.eval()
    return float((model(x).argmax(dim=-1) == y).float().mean())


def serialized_size_bytes(model: nn.Module) -> int:
    """Bytes of `torch.save(model.state_dict())`: what the model weighs on disk."""
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getbuffer().nbytes


@torch.no_grad()
def inference_seconds(model: nn.Module, x: torch.Tensor, repeats: int = 10) -> float:
    """Median wall time of one forward pass over `x` (after one warm-up pass)."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    model(x)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model(x)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def quantize_dynamic_int8(model: nn.Module) -> tuple[nn.Module, list[str]]:
    """Dynamic INT8 PTQ of every `nn.Linear` (CPU), on a copy; also returns torch's warnings.

    The warnings are the lesson: torch says where the API is going (torchao).
    """
    from torch.ao.quantization import quantize_dynamic

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        qmodel = quantize_dynamic(copy.deepcopy(model).cpu().eval(), {nn.Linear}, dtype=torch.qint8)
    messages = list(dict.fromkeys(str(w.message).strip().splitlines()[0] for w in caught))
    return qmodel, messages


@dataclass
class PtqRow:
    """One model in the PTQ comparison."""

    name: str
    size_kib: float
    ms_per_batch: float
    accuracy: float


def ptq_report(model: nn.Module, task: Task, repeats: int = 10) -> tuple[list[PtqRow], list[str]]:
    """fp32 model vs its dynamic-INT8 copy on CPU: size on disk, time per test batch, accuracy."""
    model = model.cpu().eval()
    qmodel, messages = quantize_dynamic_int8(model)
    rows = []
    for name, m in (("fp32", model), ("int8 dynamique", qmodel)):
        rows.append(PtqRow(name, serialized_size_bytes(m) / 1024,
                           1e3 * inference_seconds(m, task.x_test, repeats),
                           accuracy(m, task.x_test, task.y_test)))
    return rows, messages


@dataclass
class SpeedRow:
    """fp32 vs dynamic-INT8 forward time for one layer width."""

    width: int
    fp32_ms: float
    int8_ms: float

    @property
    def speedup(self) -> float:
        return self.fp32_ms / self.int8_ms


def speed_by_width(widths: tuple[int, ...] = (128, 512, 2048), batch: int = 64, depth: int = 3,
                   repeats: int = 5) -> list[SpeedRow]:
    """Time untrained MLPs of several widths before/after dynamic INT8 (speed needs no training).

    Dynamic PTQ quantizes the activations at every call: that overhead dominates small
    layers, while big matmuls gain from int8 kernels (fbgemm/oneDNN on x86).
    """
    rows = []
    for width in widths:
        model = make_mlp(width, width, hidden=width, depth=depth).eval()
        qmodel, _ = quantize_dynamic_int8(model)
        x = torch.randn(batch, width)
        rows.append(SpeedRow(width, 1e3 * inference_seconds(model, x, repeats),
                             1e3 * inference_seconds(qmodel, x, repeats)))
    return rows
