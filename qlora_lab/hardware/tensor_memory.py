"""Tensor accounting: the peak bytes of live tensors during a training step, item by item.

    from qlora_lab.hardware.tensor_memory import TensorMemoryTracker
    with TensorMemoryTracker(model, optimizer) as tracker:
        loss = model(ids, labels=ids).loss          # new tensors: activations
        loss.backward()                             # .grad: gradients (re-labelled on accumulation)
        with tracker.phase("optimizer"):
            optimizer.step()                        # AdamW moments: optimizer
    tracker.report().peak_bytes

Why not the process's RSS: on a CPU it also counts Python, the libraries and the allocator's
cache, cannot be reset, and drowns a small model. Why not `torch.cuda.max_memory_allocated`:
it exists on a GPU only and gives no breakdown. Here every op goes through a
`TorchDispatchMode` that records each new storage with its category, and a `weakref.finalize`
on the storage takes its bytes back when it is freed (PyTorch keeps one Python object per
live storage, so the finalizer fires exactly when the memory goes). Same idea as PyTorch's
`torch.distributed._tools.mem_tracker`, kept small enough to read.

What it cannot see: memory a kernel allocates and frees inside one op (a fused kernel's
scratch, a library's own buffers), the allocator's rounding and cache, and the framework.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

# The items of `qlora_lab.sizing.memory.TrainingMemory`, in the same order.
CATEGORIES: tuple[str, ...] = ("weights", "adapters", "gradients", "optimizer", "activations")
ADAPTER_MARK = "lora_"  # PEFT names its trainable matrices lora_A / lora_B


@dataclass
class TensorMemoryReport:
    """Bytes of live tensors: at the peak (with what made it) and at the end."""

    peak_bytes: int
    peak: dict[str, int]
    final: dict[str, int]
    weights_by_dtype: dict[str, int] = field(default_factory=dict)  # e.g. {"uint8": 4-bit codes, "bfloat16": ...}


def _tensors(tree) -> list[torch.Tensor]:
    return [t for t in tree_flatten(tree)[0] if isinstance(t, torch.Tensor)]


def quant_state_tensors(weight: torch.Tensor) -> list[torch.Tensor]:
    """The tensors of a bitsandbytes 4-bit `QuantState` (absmax, code, nested state2), if any."""
    state = getattr(weight, "quant_state", None)
    found: list[torch.Tensor] = []
    while state is not None:
        found += [v for v in vars(state).values() if isinstance(v, torch.Tensor)]
        state = getattr(state, "state2", None)
    return found


class TensorMemoryTracker(TorchDispatchMode):
    """Counts the bytes of every live storage by category; the peak keeps its breakdown.

    Args:
        model: its parameters, buffers and 4-bit quantization states are counted from the
            start as weights, or as adapters for trainable parameters whose name holds
            'lora_' (all trainable parameters are weights in full fine-tuning).
        optimizer: its states are counted as optimizer (also those created outside the
            dispatcher, like AdamW's scalar step counters).
    """

    def __init__(self, model: torch.nn.Module | None = None, optimizer: torch.optim.Optimizer | None = None):
        super().__init__()
        self.model, self.optimizer = model, optimizer
        self.live: dict[int, tuple[str, int, int]] = {}  # id(storage) -> (category, bytes, birth number)
        self.seq = self.peak_seq = 0  # storages counted so far; how many were when the peak was reached
        self.current = dict.fromkeys(CATEGORIES, 0)
        self.peak_bytes = 0
        self.peak = dict(self.current)
        self.category = "activations"  # what a new tensor is, in the current phase
        self.weights_by_dtype: dict[str, int] = {}
        self._hooks: list = []

    # --- bookkeeping ---------------------------------------------------------------------
    def track(self, tensor: torch.Tensor, category: str) -> bool:
        """Count `tensor`'s storage as `category` (moving it there if already counted); True if new.

        A storage moved (an output of backward becoming a .grad) that was already live at the
        peak moves in the peak's breakdown too: the peak says what the bytes *were*.
        """
        if category not in CATEGORIES:
            raise ValueError(f"category={category!r} is not one of {CATEGORIES}")
        storage = tensor.untyped_storage()
        key, nbytes = id(storage), storage.nbytes()
        new = key not in self.live
        if not new:
            old, nbytes, born = self.live[key]
            self.current[old] -= nbytes
            if born <= self.peak_seq:
                self.peak[old] -= nbytes
                self.peak[category] += nbytes
        elif nbytes == 0 or tensor.device.type == "meta":
            return False
        else:
            weakref.finalize(storage, self._free, key)
            self.seq += 1
            born = self.seq
        self.live[key] = (category, nbytes, born)
        self.current[category] += nbytes
        self._update_peak()
        return new

    def _free(self, key: int) -> None:
        category, nbytes, _ = self.live.pop(key, (None, 0, 0))
        if category is not None:
            self.current[category] -= nbytes

    def _update_peak(self) -> None:
        total = sum(self.current.values())
        if total > self.peak_bytes:
            self.peak_bytes, self.peak, self.peak_seq = total, dict(self.current), self.seq

    @contextmanager
    def phase(self, category: str) -> Iterator[None]:
        """New tensors made inside are `category` (e.g. 'optimizer' around `optimizer.step()`)."""
        before, self.category = self.category, category
        try:
            yield
        finally:
            self.category = before
            self._sweep_optimizer()

    def _sweep_optimizer(self) -> None:
        if self.optimizer is not None:
            for state in self.optimizer.state.values():
                for t in _tensors(state):
                    self.track(t, "optimizer")

    # --- what exists before the step -----------------------------------------------------
    def _track_model(self) -> None:
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        lora = any(ADAPTER_MARK in name for name, p in self.model.named_parameters() if p.requires_grad)
        for name, p in self.model.named_parameters():
            adapter = lora and p.requires_grad and ADAPTER_MARK in name
            if self.track(p, "adapters" if adapter else "weights") and not adapter:
                dtype = str(p.dtype).removeprefix("torch.")
                self.weights_by_dtype[dtype] = self.weights_by_dtype.get(dtype, 0) + p.untyped_storage().nbytes()
            for t in quant_state_tensors(p):
                self.track(t, "weights")
            if p.grad is not None:
                self.track(p.grad, "gradients")
        for b in self.model.buffers():
            self.track(b, "weights")
        for p in trainable:  # a gradient is a gradient as soon as it is accumulated
            self._hooks.append(p.register_post_accumulate_grad_hook(self._on_grad))

    def _on_grad(self, param: torch.Tensor) -> None:
        self.track(param.grad, "gradients")

    def __enter__(self) -> "TensorMemoryTracker":
        if self.model is not None:
            self._track_model()
        self._sweep_optimizer()
        return super().__enter__()

    def __exit__(self, *exc) -> None:
        super().__exit__(*exc)
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in _tensors(out):
            if id(t.untyped_storage()) not in self.live:
                self.track(t, self.category)
        return out

    def report(self) -> TensorMemoryReport:
        """The peak so far with its breakdown, and what is live now."""
        return TensorMemoryReport(self.peak_bytes, dict(self.peak), dict(self.current), dict(self.weights_by_dtype))
