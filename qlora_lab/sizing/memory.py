"""How much memory a model needs: its weights in each format, and a whole training run.

    from qlora_lab.sizing.memory import CODELLAMA, weight_bytes, training_memory
    weight_bytes(CODELLAMA["7B"], "nf4-dq") / 2**30          # GiB of weights
    training_memory(CODELLAMA["7B"], "qlora", seq_len=512)   # itemised bytes

Training memory = weights + adapters + gradients + optimizer states + activations
(+ the framework's own overhead, which no formula knows: CUDA context ~0.3–1 GiB).
Per GPU under DDP or FSDP: `qlora_lab.sizing.multi_gpu`.
The activation coefficients below were measured on transformers' Llama with
`torch.autograd.graph.saved_tensors_hooks` (`qlora_lab.hardware.measured_memory.saved_activation_bytes`);
the test-suite re-measures them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import ClassVar, Literal


from qlora_lab.quant.gguf import Q4_0_BITS_PER_WEIGHT
from qlora_lab.finetune.lora import lora_params_for_shape
from qlora_lab.model.llama_shapes import CODELLAMA, LLAMA_ALL_LINEAR, ModelShape  # noqa: F401 (CODELLAMA: part of this API)

WeightFormat = Literal["fp32", "fp16", "bf16", "int8", "nf4", "nf4-dq", "q4_0"]
WEIGHT_FORMATS: tuple[str, ...] = ("fp32", "fp16", "bf16", "int8", "nf4", "nf4-dq", "q4_0")
Method = Literal["full", "lora", "qlora"]
METHODS: tuple[str, ...] = ("full", "lora", "qlora")


ADAMW_STATE_BYTES = 8  # two fp32 moments (m, v) per trained parameter
GIB = 2**30
# Common GPU memory sizes in GiB: a card sold as "24 GB" holds 24 GiB (24 * 2**30 bytes).
# RTX 4060 8, RTX 3060 12, RTX 4080 16, RTX 3090/4090 24, A100 40, L40S 48, A100/H100 80, H200 141.
GPU_SIZES_GIB: tuple[int, ...] = (8, 12, 16, 24, 40, 48, 80, 141)
NF4_CODE_BITS = 4  # one 4-bit code per weight; absmax and double-quant state come on top


def bits_per_linear_weight(fmt: str) -> float:
    """Storage bits per weight of a quantized linear layer, constants included.

    Raises:
        ValueError: unknown format.
    """
    from qlora_lab.quant.double_quant import bits_per_param

    if fmt not in WEIGHT_FORMATS:
        raise ValueError(f"fmt={fmt!r} is not one of {WEIGHT_FORMATS}")
    if fmt == "fp32":
        return 32.0
    if fmt in ("fp16", "bf16"):
        return 16.0
    if fmt == "int8":
        return 8.0  # LLM.int8: one fp32 scale per output row on top, counted in weight_bytes
    if fmt == "q4_0":
        return Q4_0_BITS_PER_WEIGHT  # llama.cpp/GGUF: blocks of 32 with an fp16 scale
    return float(bits_per_param(blocksize=64, double_quant=(fmt == "nf4-dq")))


def weight_bytes(shape: ModelShape, fmt: str) -> float:
    """Bytes of all weights when the linear layers are stored as `fmt`.

    fp32/fp16/bf16 store everything in that dtype. int8, NF4 and q4_0 quantize the
    decoder's linear layers only; embeddings, lm_head and norms stay in 16 bits, as
    bitsandbytes does (llama.cpp also quantizes the embeddings: a few % less).
    """
    if fmt == "fp32":
        return 4.0 * shape.n_params
    if fmt in ("fp16", "bf16"):
        return 2.0 * shape.n_params
    linear = shape.linear_params() * bits_per_linear_weight(fmt) / 8
    if fmt == "int8":
        linear += 4.0 * shape.n_layers * (3 * shape.hidden + 2 * shape.n_kv_heads * shape.head_dim + 2 * shape.intermediate)
    return linear + 2.0 * shape.other_params()


def _layer_saved_bytes(shape: ModelShape, seq_len: int, batch: int, attention: str) -> int:
    """What one decoder layer saves for backward, bf16 compute (measured, see activation_bytes)."""
    tokens = seq_len * batch
    per_layer = 24 * tokens * shape.hidden + 8 * tokens * shape.intermediate
    if attention == "eager":
        per_layer += 6 * shape.n_heads * seq_len * tokens
    return per_layer


def _check_activation_args(seq_len: int, batch: int, attention: str) -> None:
    if seq_len <= 0 or batch <= 0:
        raise ValueError(f"seq_len and batch must be positive, got seq_len={seq_len}, batch={batch}")
    if attention not in ("sdpa", "eager"):
        raise ValueError(f"attention={attention!r} must be 'sdpa' or 'eager'")


def activation_bytes(
    shape: ModelShape, seq_len: int, batch: int = 1, gradient_checkpointing: bool = False,
    attention: Literal["sdpa", "eager"] = "sdpa",
) -> float:
    """Activations saved for the backward pass, bf16 compute (bytes).

    Per layer, measured on transformers' Llama: 24·s·b·h + 8·s·b·ff bytes, plus
    6·a·s²·b for eager attention (softmax kept in fp32 + bf16 probabilities); fused SDPA
    kernels keep only a log-sum-exp. The head keeps fp32 logits: 4·s·b·V. With gradient
    checkpointing only each layer's input (2·s·b·h) is kept, and one layer is recomputed
    at a time during the backward pass. The peak of a step is more: `activation_peak_bytes`.
    """
    _check_activation_args(seq_len, batch, attention)
    tokens = seq_len * batch
    per_layer = _layer_saved_bytes(shape, seq_len, batch, attention)
    head = 4 * tokens * shape.vocab + 8 * tokens * shape.hidden
    if gradient_checkpointing:
        return shape.n_layers * 2 * tokens * shape.hidden + per_layer + head
    return shape.n_layers * per_layer + head


LOSS_FP32_COPIES = 3  # log-softmax's backward holds its fp32 output, the incoming and the outgoing gradient
# A recomputed layer's backward: its saved tensors plus the gradients it makes on the way,
# measured by tensor accounting at ~5/3 of the saved bytes (tests/test_memory.py).
LAYER_BACKWARD_FACTOR = 5 / 3


def activation_peak_bytes(
    shape: ModelShape, seq_len: int, batch: int = 1, gradient_checkpointing: bool = False,
    attention: Literal["sdpa", "eager"] = "sdpa",
) -> float:
    """Activation bytes at the peak of a training step (measured by tensor accounting).

    The backward pass starts at the loss. transformers' cross-entropy upcasts the logits to
    fp32, and log-softmax's backward holds three fp32 (s·b, V) tensors at once: 12·s·b·V
    bytes, plus the head's 8·s·b·h. Without checkpointing every layer's saved tensors are
    still there; with it, only the layer inputs are, and one layer is recomputed *after* the
    head is done (its saved tensors and the gradients its backward makes, ~5/3 of the saved
    bytes), so the peak is the larger of the two moments. With a 32k vocabulary and short
    sequences the loss is the peak (`qlora_lab.hardware.tensor_memory` shows it).
    """
    _check_activation_args(seq_len, batch, attention)
    tokens = seq_len * batch
    per_layer = _layer_saved_bytes(shape, seq_len, batch, attention)
    loss = 4 * LOSS_FP32_COPIES * tokens * shape.vocab + 8 * tokens * shape.hidden
    if gradient_checkpointing:
        return shape.n_layers * 2 * tokens * shape.hidden + max(LAYER_BACKWARD_FACTOR * per_layer, loss)
    return shape.n_layers * per_layer + loss


def fp32_embedding_activation_bytes(shape: ModelShape, seq_len: int, batch: int = 1) -> float:
    """What fp32 embeddings and lm_head (PEFT's upcast for QLoRA) add to the activation peak.

    An fp32 embedding output makes the whole residual stream fp32 (bf16 sublayer outputs
    are added to it in fp32): the checkpointed layer inputs take 4·s·b·h bytes, not 2. And
    autocast casts the fp32 lm_head to bf16 for each matmul, a 2·V·h copy that is alive
    at the loss's backward. Measured on a 1.1B Llama (benchmarks/memory_scale.py).
    """
    return shape.n_layers * 2 * seq_len * batch * shape.hidden + 2 * shape.vocab * shape.hidden


@dataclass
class TrainingMemory:
    """Itemised training memory in bytes."""

    ITEMS: ClassVar[tuple[str, ...]] = ("weights", "adapters", "gradients", "optimizer", "activations")

    method: str
    weights: float
    adapters: float
    gradients: float
    optimizer: float
    activations: float

    @property
    def total(self) -> float:
        return sum(getattr(self, k) for k in self.ITEMS)

    def as_gib(self) -> dict[str, float]:
        """Every item and the total in GiB, rounded for display."""
        items = {k: getattr(self, k) for k in self.ITEMS}
        items["total"] = self.total
        return {k: round(v / GIB, 2) for k, v in items.items()}


def training_memory(
    shape: ModelShape, method: str, seq_len: int = 512, batch: int = 1, r: int = 16,
    target_modules: Iterable[str] = LLAMA_ALL_LINEAR, gradient_checkpointing: bool = True,
    optimizer_state_bytes: float = ADAMW_STATE_BYTES, fp32_unquantized: bool = True,
) -> TrainingMemory:
    """Training memory at the peak of a step: full fine-tuning, 16-bit LoRA or QLoRA (NF4 + DQ).

    full: bf16 weights and gradients + fp32 AdamW moments = 12 bytes/param (the QLoRA
    paper's "> 780 GB" for 65B). LoRA/QLoRA: frozen base, fp32 adapters (PEFT's default)
    with their gradients and AdamW moments. QLoRA with `fp32_unquantized`: PEFT's
    `prepare_model_for_kbit_training` (what `qlora-lab finetune` calls on one GPU or under
    DDP) casts the weights left unquantized (embeddings, lm_head, norms) to fp32, 2 more
    bytes each; FSDP keeps them in the 4-bit storage dtype (`qlora_lab.sizing.multi_gpu`).
    Activations: `activation_peak_bytes`, plus `fp32_embedding_activation_bytes` for that
    upcast QLoRA. Gradients are counted whole although at the
    loss's peak the adapters have none yet: a small overestimate, on the safe side.

    Raises:
        ValueError: unknown method.
    """
    if method not in METHODS:
        raise ValueError(f"method={method!r} is not one of {METHODS}")
    activations = activation_peak_bytes(shape, seq_len, batch, gradient_checkpointing)
    if method == "full":
        n = shape.n_params
        return TrainingMemory(method, 2.0 * n, 0.0, 2.0 * n, optimizer_state_bytes * n, activations)
    n_adapter = lora_params_for_shape(shape.hidden, shape.intermediate, shape.n_layers, shape.n_heads,
                                      shape.n_kv_heads, r=r, target_modules=target_modules)
    base = weight_bytes(shape, "bf16" if method == "lora" else "nf4-dq")
    if method == "qlora" and fp32_unquantized:
        base += 2.0 * shape.other_params()  # bf16 -> fp32
        activations += fp32_embedding_activation_bytes(shape, seq_len, batch)
    return TrainingMemory(method, base, 4.0 * n_adapter, 4.0 * n_adapter, optimizer_state_bytes * n_adapter, activations)


def smallest_gpu_that_fits(total_bytes: float, sizes_gib: Iterable[float] = GPU_SIZES_GIB) -> float | None:
    """The smallest card of `sizes_gib` holding `total_bytes`, or None.

    Sizes are in GiB (2**30 bytes), the course's one unit: a card sold as "24 GB" holds 24 GiB.
    """
    for size in sorted(sizes_gib):
        if total_bytes <= size * GIB:
            return size
    return None
