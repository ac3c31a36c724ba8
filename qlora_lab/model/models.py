"""Load a causal LM and its tokenizer, in 16-bit or in 4-bit (NF4/FP4) through bitsandbytes.

    model, tokenizer = load_model()                          # the embedded mini CodeLlama, NF4
    model, tokenizer = load_model(quantization="none")       # same model, bf16
    model, tokenizer = load_model("codellama/CodeLlama-7b-hf")   # needs network or a warm HF cache

4-bit loading goes through transformers' `BitsAndBytesConfig`, exactly as the QLoRA
paper's code does. Bad input fails at once with one clear error naming what was wrong.

The CPU packing trap (bitsandbytes 0.50, CPUs with AVX512-BF16)
----------------------------------------------------------------
An eval-mode, no-grad forward of `Linear4bit` repacks its weight in place into a
faster AVX512 layout (`packing_format_for_cpu`). A later training forward then runs
`gemv_4bit`, which has no autograd: the gradient through the layer is silently lost,
and a QLoRA run that evaluated first stops learning. bitsandbytes' inverse of that
packing is only "best-effort" (absmax rounded to bf16, double quantization redone), so
unpacking does not give back the exact weights either. `make_4bit_training_safe`
(applied by `load_model` to every 4-bit model) keeps the fast path for inference and
makes training exact: before bnb packs a layer it keeps the original 4-bit weight and
`QuantState`; the first forward that needs gradients (training mode or an input that
requires grad) puts those originals back. Cost: while a layer is packed, its unpacked
4-bit weight stays in memory too (one extra 4-bit copy), and each eval -> train -> eval
switch repacks once. Layers whose out_features is not a multiple of 32 (which the packed
kernel cannot take) simply never pack.
"""

from __future__ import annotations

import copy
import os
import socket
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from qlora_lab.backends import import_bnb, quiet_bnb_logs
from qlora_lab.hardware.device import default_compute_dtype, default_device
from qlora_lab.paths import EMBEDDED_MODEL_DIR

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

QUANTIZATIONS = ("nf4", "fp4", "none")
PACK_BLOCK_N = 32  # bitsandbytes' AVX512 packed layout works on blocks of 32 output rows
_STASH = "_qlora_lab_unpacked_weight"  # attribute holding (data, QuantState) before packing
_HOOKED = "_qlora_lab_packing_guard"
HUB_HOST = "huggingface.co"
HUB_TIMEOUT_S = 3  # one connection attempt before giving up on the Hub


class ModelNotFoundError(FileNotFoundError):
    """No model at the given path, or a hub model that cannot be fetched (offline)."""


class CorruptModelError(ValueError):
    """A model file exists but cannot be read (truncated or not safetensors)."""


class VocabularyMismatchError(ValueError):
    """The tokenizer produces ids the model has no embedding for."""


class UnsupportedQuantizationError(ValueError):
    """A quantization name other than 'nf4', 'fp4' or 'none'."""


# --- the AVX512 packing guard -------------------------------------------------------------

def _packed(module) -> bool:
    # FSDP swaps Params4bit for plain tensors; bnb then keeps the state on the module
    state = getattr(module.weight, "quant_state", None) or getattr(module, "quant_state", None)
    return bool(getattr(state, "packing_format_for_cpu", False))


def _bnb_will_pack(module, x: torch.Tensor) -> bool:
    """bitsandbytes' own condition (Linear4bit.forward) for packing on this call."""
    return x.device.type == "cpu" and module.support_avx512bf16_for_cpu and not module.training and not x.requires_grad


def _restore_unpacked(module) -> None:
    data, quant_state = getattr(module, _STASH)
    module.weight.data = data
    module.weight.quant_state = quant_state
    if getattr(module, "quant_state", None) is not None:
        module.quant_state = quant_state
    setattr(module, _STASH, None)


def _packing_guard(module, args) -> None:
    """Forward pre-hook: stash the exact weights before bnb packs, restore them for training."""
    x = args[0]
    if _bnb_will_pack(module, x):
        if not _packed(module):
            if getattr(module, _STASH, None) is not None:  # unpacked by bnb's lossy inverse (save)
                _restore_unpacked(module)
            # bnb mutates the QuantState in place while packing: keep a copy of it.
            setattr(module, _STASH, (module.weight.data, copy.deepcopy(module.weight.quant_state)))
    elif getattr(module, _STASH, None) is not None:
        _restore_unpacked(module)


def make_4bit_training_safe(model: torch.nn.Module) -> torch.nn.Module:
    """Guard every `Linear4bit` of `model` against the CPU packing trap (idempotent).

    `load_model` already calls it on 4-bit models; call it yourself on a 4-bit model
    loaded another way, before any evaluation. Returns the same model.
    """
    bnb = import_bnb()
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit) and not getattr(module, _HOOKED, False):
            if module.out_features % PACK_BLOCK_N:
                module.support_avx512bf16_for_cpu = False  # the packed kernel would fail
            setattr(module, _STASH, None)
            module.register_forward_pre_hook(_packing_guard)
            setattr(module, _HOOKED, True)
    return model


# --- checks on the input ------------------------------------------------------------------

def _check_quantization(quantization: str) -> None:
    if quantization not in QUANTIZATIONS:
        raise UnsupportedQuantizationError(
            f"quantization={quantization!r} is not supported: choose one of {QUANTIZATIONS} "
            "('nf4' is QLoRA's NormalFloat 4-bit, 'fp4' bitsandbytes' 4-bit float, 'none' 16-bit)"
        )


def _looks_like_path(name: str) -> bool:
    """Paths (absolute, ./, ../, ~, several slashes) vs hub ids like 'owner/model'."""
    return os.path.isabs(name) or name.startswith((".", "~")) or name.count("/") > 1 or os.sep != "/" and os.sep in name


def _check_model_dir(path: Path) -> None:
    """Raise a clear error for a missing, incomplete or corrupt local model directory."""
    if not path.is_dir():
        raise ModelNotFoundError(f"no model directory at {path} (name_or_path={str(path)!r})")
    if not (path / "config.json").is_file():
        raise ModelNotFoundError(f"{path} has no config.json: it is not a Hugging Face model directory")
    weights = sorted(path.glob("*.safetensors"))
    if not weights:
        raise ModelNotFoundError(f"{path} has no *.safetensors weights file")
    from safetensors import safe_open

    for file in weights:
        try:
            with safe_open(str(file), framework="pt") as f:
                for key in f.keys():  # reading each tensor's header checks offsets fit the file
                    f.get_slice(key).get_shape()
        except Exception as error:  # safetensors raises its own SafetensorError, or OSError
            raise CorruptModelError(f"cannot read weights file {file}: {error} (re-copy or re-train the model)") from error


def _check_vocabulary(tokenizer, config, where: str) -> None:
    if len(tokenizer) > config.vocab_size:
        raise VocabularyMismatchError(
            f"tokenizer of {where} has {len(tokenizer)} tokens but the model's config.vocab_size is "
            f"{config.vocab_size}: ids >= {config.vocab_size} have no embedding (wrong tokenizer files?)"
        )


def _check_hub_reachable(name: str) -> None:
    """Fail at once, in one line, for a hub id that is neither cached nor reachable.

    Without this, transformers retries each file for about half a minute before failing.
    """
    from huggingface_hub import try_to_load_from_cache

    if isinstance(try_to_load_from_cache(name, "config.json"), str):
        return  # in the local cache: loads without network
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        raise _offline_error(name, RuntimeError("HF_HUB_OFFLINE is set"))
    try:
        socket.create_connection((HUB_HOST, 443), timeout=HUB_TIMEOUT_S).close()
    except OSError as error:
        raise _offline_error(name, error) from None


@contextmanager
def _no_loading_bar(enabled: bool):
    """Hide transformers' "Loading weights" bar for a local model: it reads in a blink, the bar is noise.

    A hub model keeps its bars (a download's progress is worth seeing).
    """
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    if enabled:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled and was_enabled:
            hf_logging.enable_progress_bar()


def _offline_error(name: str, error: Exception) -> ModelNotFoundError:
    cache = os.environ.get("HF_HUB_CACHE") or os.path.join(os.environ.get("HF_HOME", "~/.cache/huggingface"), "hub")
    return ModelNotFoundError(
        f"could not load {name!r}: it is not a local directory, not in the Hugging Face cache ({cache}), "
        f"and the Hub could not be reached ({type(error).__name__}: {str(error)[:120]}). With network, run "
        f"`hf download {name}` once (or unset HF_HUB_OFFLINE); without network, use the "
        "embedded model: load_model() or load_model(None)."
    )


# --- loading --------------------------------------------------------------------------------

def quantization_config(quantization: str, double_quant: bool, compute_dtype: torch.dtype,
                        quant_storage: torch.dtype = torch.uint8):
    """transformers' `BitsAndBytesConfig` for a 4-bit load (None for 'none').

    `quant_storage` is the dtype of the tensor that holds the packed 4-bit codes: uint8 (two
    codes per element) by default; FSDP shards only floating-point tensors, so FSDP-QLoRA
    stores them in the compute dtype (bf16: four codes per element, the same bytes).
    """
    _check_quantization(quantization)
    if quantization == "none":
        return None
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=quantization,
        bnb_4bit_use_double_quant=double_quant,
        bnb_4bit_compute_dtype=compute_dtype,
        bnb_4bit_quant_storage=quant_storage,
    )


def load_model(
    name_or_path: str | Path | None = None,
    quantization: str = "nf4",
    double_quant: bool = True,
    compute_dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    quant_storage: torch.dtype = torch.uint8,
) -> tuple["PreTrainedModel", "PreTrainedTokenizerBase"]:
    """Load a causal LM and its tokenizer; 4-bit models come guarded for training.

    Args:
        name_or_path: a local model directory or a Hugging Face Hub id; None means the
            embedded mini CodeLlama (`qlora_lab.paths.EMBEDDED_MODEL_DIR`).
        quantization: 'nf4' (QLoRA), 'fp4' or 'none' (weights kept in `compute_dtype`).
        double_quant: quantize the 4-bit absmax constants again (QLoRA §3); 4-bit only.
        compute_dtype: dtype of matmuls (and of the weights for 'none'); default bf16
            where supported (`qlora_lab.hardware.device.default_compute_dtype`).
        device: default `qlora_lab.hardware.device.default_device()`.
        quant_storage: container dtype of the packed 4-bit codes (see `quantization_config`);
            a floating dtype also becomes the dtype of the unquantized weights, as FSDP needs
            one dtype per sharded group.

    Returns:
        (model, tokenizer), the model in eval mode.

    Raises:
        UnsupportedQuantizationError: quantization is not 'nf4', 'fp4' or 'none'.
        ModelNotFoundError: no such directory / no weights, or a hub id unreachable offline.
        CorruptModelError: a safetensors file cannot be read.
        VocabularyMismatchError: len(tokenizer) > config.vocab_size.
    """
    _check_quantization(quantization)
    device = torch.device(device) if device is not None else default_device()
    compute_dtype = compute_dtype or default_compute_dtype(device)
    name = str(name_or_path) if name_or_path is not None else str(EMBEDDED_MODEL_DIR)
    local = Path(name).expanduser()
    if name_or_path is None or local.exists() or _looks_like_path(name):
        _check_model_dir(local)
        name = str(local)
    else:
        _check_hub_reachable(name)

    quiet_bnb_logs()  # before transformers imports bitsandbytes
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    try:
        config = AutoConfig.from_pretrained(name)
        tokenizer = AutoTokenizer.from_pretrained(name)
    except OSError as error:
        if local.exists():
            raise ModelNotFoundError(f"cannot load config/tokenizer from {name}: {error}") from error
        raise _offline_error(name, error) from error
    _check_vocabulary(tokenizer, config, name)

    quant = quantization_config(quantization, double_quant, compute_dtype, quant_storage)
    dtype = quant_storage if quant is not None and quant_storage.is_floating_point else compute_dtype
    try:
        with _no_loading_bar(enabled=Path(name).is_dir()):
            model = AutoModelForCausalLM.from_pretrained(
                name, dtype=dtype, quantization_config=quant, device_map={"": str(device)}
            )
    except OSError as error:
        raise _offline_error(name, error) from error
    if quant is not None:
        make_4bit_training_safe(model)
    model.eval()
    return model, tokenizer
