"""Calibration data and the inputs each Linear layer sees: what GPTQ and AWQ quantize against.

Calibration-based methods need the activations X entering each layer. They are captured
with forward hooks, one decoder layer at a time and *sequentially*: layer i is calibrated
on the inputs produced by layers 0..i-1 already quantized, so each layer also compensates
the errors of the ones before it (GPTQ §4, as the reference `llama.py` does). The forward
pass stops right after layer i (nothing above it is needed), which keeps this cheap.

Calibration text is Python source from the pretraining split of the standard library
(never the validation files the quality table scores), tokenized and packed in windows.

    windows = calibration_windows(tokenizer)                 # (32, 256) token ids
    quantize_sequentially(model, windows, lambda w, x: gptq_quantize(w, x, bits=4))
    magnitudes = input_magnitudes(model, windows)            # {layer name: max |x| per dimension}
"""

from __future__ import annotations

import random
from collections.abc import Callable

import torch

from qlora_lab.model.corpus import corpus_files, read_text
from qlora_lab.model.packing import pack_texts

N_WINDOWS = 32  # 32 x 256 = 8,192 tokens: many more samples than the 896 inputs of the widest layer
SEQ_LEN = 256
N_FILES = 48  # train files read to draw the windows from
WeightQuantizer = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (weight, inputs) -> weight_hat


class _StopForward(Exception):
    """Raised by a hook once the layer being calibrated has run: the rest is not needed."""


def calibration_windows(tokenizer, n_windows: int = N_WINDOWS, seq_len: int = SEQ_LEN, seed: int = 0,
                        n_files: int = N_FILES) -> torch.Tensor:
    """(n_windows, seq_len) token ids drawn from `n_files` random stdlib files of the pretraining split."""
    files = corpus_files("train")
    chosen = random.Random(seed).sample(files, min(n_files, len(files)))
    windows = pack_texts(tokenizer, [read_text(path) for path in chosen], seq_len)
    if len(windows) < n_windows:
        raise ValueError(f"only {len(windows)} windows of {seq_len} tokens in {len(chosen)} files")
    order = torch.randperm(len(windows), generator=torch.Generator().manual_seed(seed))
    return windows[order[:n_windows]]


def decoder_layers(model) -> torch.nn.ModuleList:
    """The transformer blocks of a Llama-style causal LM (``model.model.layers``)."""
    return model.model.layers


def linear_layers(module: torch.nn.Module) -> dict[str, torch.nn.Linear]:
    """The ``nn.Linear`` sub-modules of `module`, by qualified name."""
    return {name: child for name, child in module.named_modules() if isinstance(child, torch.nn.Linear)}


def _run_until(model, windows: torch.Tensor, stop_after: torch.nn.Module, batch_size: int) -> None:
    """Forward `windows` through `model`, stopping each batch once `stop_after` has run."""
    def stop(module, args, output):
        raise _StopForward

    handle = stop_after.register_forward_hook(stop)
    windows = windows.to(next(model.parameters()).device)
    try:
        with torch.no_grad():
            for start in range(0, len(windows), batch_size):
                try:
                    model(input_ids=windows[start : start + batch_size])
                except _StopForward:
                    pass
    finally:
        handle.remove()


def capture_inputs(model, windows: torch.Tensor, block: torch.nn.Module, batch_size: int = 8) -> dict[str, torch.Tensor]:
    """The inputs of every Linear of `block`: {name: (n_tokens, in_features) float32}."""
    captured: dict[str, list[torch.Tensor]] = {}
    handles = []
    for name, linear in linear_layers(block).items():
        def keep(module, args, name=name):
            captured.setdefault(name, []).append(args[0].detach().reshape(-1, args[0].shape[-1]).float())
        handles.append(linear.register_forward_pre_hook(keep))
    try:
        _run_until(model, windows, block, batch_size)
    finally:
        for handle in handles:
            handle.remove()
    return {name: torch.cat(parts) for name, parts in captured.items()}


def quantize_sequentially(model, windows: torch.Tensor, quantizer: WeightQuantizer, progress=None) -> dict[str, float]:
    """Replace every Linear weight of every decoder layer by ``quantizer(weight, inputs)``, in order.

    Returns {layer name: relative output error on its calibration inputs}, the number GPTQ
    minimises (the embeddings and the tied output head stay in 16 bits, as in the paper).
    """
    errors: dict[str, float] = {}
    for index, block in enumerate(decoder_layers(model)):
        inputs = capture_inputs(model, windows, block)
        for name, linear in linear_layers(block).items():
            x, w = inputs[name], linear.weight.data
            w_hat = quantizer(w, x)
            reference = x @ w.float().T
            errors[f"layers.{index}.{name}"] = float(torch.linalg.norm(x @ w_hat.float().T - reference)
                                                     / torch.linalg.norm(reference))
            linear.weight.data = w_hat.to(w.dtype)
        if progress is not None:
            progress.update(1)
    return errors


def input_magnitudes(model, windows: torch.Tensor) -> dict[str, torch.Tensor]:
    """Max |x| per hidden dimension at the input of every Linear: where outlier features show.

    Returns {"layers.i.name": (in_features,) float32}; one full forward pass, no quantization.
    """
    layers = decoder_layers(model)
    magnitudes: dict[str, torch.Tensor] = {}
    for index, block in enumerate(layers):
        inputs = capture_inputs(model, windows, block)
        magnitudes.update({f"layers.{index}.{name}": x.abs().amax(dim=0) for name, x in inputs.items()})
    return magnitudes
