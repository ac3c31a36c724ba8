"""How much memory a model needs: its weights in each format, and a whole training run.

    from qlora_lab.memory import CODELLAMA, weight_bytes, training_memory
    from qlora_lab.memory import per_device_memory, devices_needed
    weight_bytes(CODELLAMA["7B"], "nf4-dq") / 2**30          # GiB of weights
    training_memory(CODELLAMA["7B"], "qlora", seq_len=512)   # itemised bytes
    per_device_memory(CODELLAMA["70B"], "qlora", "fsdp", n_devices=4)  # per GPU
    devices_needed(CODELLAMA["70B"], "qlora", "fsdp", gpu_gb=24)       # how many GPUs

Training memory = weights + adapters + gradients + optimizer states + activations
(+ the framework's own overhead, which no formula knows: CUDA context ~0.3–1 GB).
Data-parallel runs (DDP, FSDP) add what each GPU holds for the others: DDP's gradient
buckets, FSDP's all-gathered layers.
The activation coefficients below were measured on transformers' Llama with
`torch.autograd.graph.saved_tensors_hooks` (see `measure_saved_activation_bytes`);
the test-suite re-measures them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import ClassVar, Literal

from torch import nn

from qlora_lab.gguf import Q4_0_BITS_PER_WEIGHT
from qlora_lab.lora import LLAMA_ALL_LINEAR, lora_params_for_shape

WeightFormat = Literal["fp32", "fp16", "bf16", "int8", "nf4", "nf4-dq", "q4_0"]
WEIGHT_FORMATS: tuple[str, ...] = ("fp32", "fp16", "bf16", "int8", "nf4", "nf4-dq", "q4_0")
Method = Literal["full", "lora", "qlora"]
METHODS: tuple[str, ...] = ("full", "lora", "qlora")

Strategy = Literal["single", "ddp", "fsdp"]
STRATEGIES: tuple[str, ...] = ("single", "ddp", "fsdp")

ADAMW_STATE_BYTES = 8  # two fp32 moments (m, v) per trained parameter
GIB = 2**30
NF4_CODE_BITS = 4  # one 4-bit code per weight; absmax and double-quant state come on top
# FSDP FULL_SHARD with transformer-layer wrapping: the decoder layer being computed plus the
# next one, all-gathered ahead of time (Accelerate's fsdp_backward_prefetch: BACKWARD_PRE).
FSDP_LAYERS_GATHERED = 2
# What no formula here counts, per process: CUDA context (~0.3–1 GB, outside PyTorch's
# allocator), NCCL buffers, allocator fragmentation, transient tensors (a dequantized
# bf16 weight, activation gradients, fp32 logits in the loss). A rule of thumb for short
# sequences, not a measurement: HF PEFT's 70B runs at 4096 tokens per GPU sit 6–9 GB above
# per_device_memory (see its docstring).
RUNTIME_HEADROOM_GB = 2.0


@dataclass(frozen=True)
class ModelShape:
    """The dimensions of a Llama-family decoder, enough to count every parameter."""

    name: str
    hidden: int
    intermediate: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    vocab: int
    tie_embeddings: bool = False

    @property
    def head_dim(self) -> int:
        return self.hidden // self.n_heads

    def linear_params(self) -> int:
        """Weights of the decoder layers' linear maps (what bitsandbytes quantizes)."""
        kv = self.n_kv_heads * self.head_dim
        attention = 2 * self.hidden * self.hidden + 2 * self.hidden * kv  # q, o + k, v
        mlp = 3 * self.hidden * self.intermediate  # gate, up, down (SwiGLU)
        return self.n_layers * (attention + mlp)

    def other_params(self) -> int:
        """Embeddings, lm_head (if untied) and RMSNorm scales: kept in 16 bits by bitsandbytes."""
        embeddings = self.vocab * self.hidden * (1 if self.tie_embeddings else 2)
        norms = (2 * self.n_layers + 1) * self.hidden
        return embeddings + norms

    @property
    def n_params(self) -> int:
        return self.linear_params() + self.other_params()

    @classmethod
    def from_config(cls, config, name: str = "") -> "ModelShape":
        """From a transformers LlamaConfig (e.g. the embedded model's `model.config`)."""
        return cls(
            name=name or getattr(config, "name_or_path", "") or "model",
            hidden=config.hidden_size, intermediate=config.intermediate_size,
            n_layers=config.num_hidden_layers, n_heads=config.num_attention_heads,
            n_kv_heads=getattr(config, "num_key_value_heads", None) or config.num_attention_heads,
            vocab=config.vocab_size, tie_embeddings=bool(getattr(config, "tie_word_embeddings", False)),
        )


# CodeLlama shapes (Rozière et al. 2023; the checkpoints' config.json). 34B and 70B use GQA.
CODELLAMA: dict[str, ModelShape] = {
    "7B": ModelShape("CodeLlama-7B", 4096, 11008, 32, 32, 32, 32016),
    "13B": ModelShape("CodeLlama-13B", 5120, 13824, 40, 40, 40, 32016),
    "34B": ModelShape("CodeLlama-34B", 8192, 22016, 48, 64, 8, 32000),
    "70B": ModelShape("CodeLlama-70B", 8192, 28672, 80, 64, 8, 32016),
}


def bits_per_linear_weight(fmt: str) -> float:
    """Storage bits per weight of a quantized linear layer, constants included.

    Raises:
        ValueError: unknown format.
    """
    from qlora_lab.double_quant import bits_per_param

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


def activation_bytes(
    shape: ModelShape, seq_len: int, batch: int = 1, gradient_checkpointing: bool = False,
    attention: Literal["sdpa", "eager"] = "sdpa",
) -> float:
    """Activations saved for the backward pass, bf16 compute (bytes).

    Per layer, measured on transformers' Llama: 24·s·b·h + 8·s·b·ff bytes, plus
    6·a·s²·b for eager attention (softmax kept in fp32 + bf16 probabilities); fused SDPA
    kernels keep only a log-sum-exp. The head keeps fp32 logits: 4·s·b·V. With gradient
    checkpointing only each layer's input (2·s·b·h) is kept, and one layer is recomputed
    at a time during the backward pass.
    """
    if seq_len <= 0 or batch <= 0:
        raise ValueError(f"seq_len and batch must be positive, got seq_len={seq_len}, batch={batch}")
    if attention not in ("sdpa", "eager"):
        raise ValueError(f"attention={attention!r} must be 'sdpa' or 'eager'")
    tokens = seq_len * batch
    per_layer = 24 * tokens * shape.hidden + 8 * tokens * shape.intermediate
    if attention == "eager":
        per_layer += 6 * shape.n_heads * seq_len * tokens
    head = 4 * tokens * shape.vocab + 8 * tokens * shape.hidden
    if gradient_checkpointing:
        return shape.n_layers * 2 * tokens * shape.hidden + per_layer + head
    return shape.n_layers * per_layer + head


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
    optimizer_state_bytes: float = ADAMW_STATE_BYTES,
) -> TrainingMemory:
    """Training memory of full fine-tuning, 16-bit LoRA or QLoRA (NF4 + DQ base).

    full: bf16 weights and gradients + fp32 AdamW moments = 12 bytes/param (the QLoRA
    paper's "> 780 GB" for 65B). LoRA/QLoRA: frozen base, fp32 adapters (PEFT's default)
    with their gradients and AdamW moments.

    Raises:
        ValueError: unknown method.
    """
    if method not in METHODS:
        raise ValueError(f"method={method!r} is not one of {METHODS}")
    activations = activation_bytes(shape, seq_len, batch, gradient_checkpointing)
    if method == "full":
        n = shape.n_params
        return TrainingMemory(method, 2.0 * n, 0.0, 2.0 * n, optimizer_state_bytes * n, activations)
    n_adapter = lora_params_for_shape(shape.hidden, shape.intermediate, shape.n_layers, shape.n_heads,
                                      shape.n_kv_heads, r=r, target_modules=target_modules)
    base = weight_bytes(shape, "bf16" if method == "lora" else "nf4-dq")
    return TrainingMemory(method, base, 4.0 * n_adapter, 4.0 * n_adapter, optimizer_state_bytes * n_adapter, activations)


def smallest_gpu_that_fits(total_bytes: float, sizes_gb: Iterable[float] = (8, 12, 16, 24, 40, 48, 80)) -> float | None:
    """The smallest common GPU memory size (GB = 1e9 bytes) holding `total_bytes`, or None."""
    for size in sorted(sizes_gb):
        if total_bytes <= size * 1e9:
            return size
    return None


def quant_constant_bytes(shape: ModelShape, fmt: str = "nf4-dq") -> float:
    """Bytes of the linear layers' quantization constants (absmax, double-quant state).

    bitsandbytes keeps them in each Linear4bit's `quant_state`, a plain attribute and not
    a parameter: FSDP does not shard them, every GPU holds all of them.

    Raises:
        ValueError: `fmt` is not a bitsandbytes 4-bit format.
    """
    if fmt not in ("nf4", "nf4-dq"):
        raise ValueError(f"fmt={fmt!r} must be 'nf4' or 'nf4-dq'")
    return shape.linear_params() * (bits_per_linear_weight(fmt) - NF4_CODE_BITS) / 8


def fsdp_unit_bytes(shape: ModelShape, method: str) -> tuple[float, float]:
    """Bytes of (one decoder layer, the root unit) once FSDP has all-gathered them.

    A unit's flat parameter holds its weights as stored: bf16, or for QLoRA the packed
    4-bit codes in a bf16 container (4 codes per element: the same bytes as uint8
    storage); the quantization constants stay outside it. The root unit holds what no
    decoder layer owns: embeddings, lm_head and the final norm, in 16 bits. Full
    fine-tuning also materialises the unit's whole bf16 gradient before the
    reduce-scatter. LoRA's A/B matrices are units of their own, too small to count.
    """
    layer_linear = shape.linear_params() / shape.n_layers
    layer_norms = 2 * shape.hidden  # input and post-attention RMSNorm
    root = shape.other_params() - shape.n_layers * layer_norms
    linear_bytes = NF4_CODE_BITS / 8 if method == "qlora" else 2.0
    layer, root_bytes = layer_linear * linear_bytes + 2.0 * layer_norms, 2.0 * root
    if method == "full":
        layer += 2.0 * (layer_linear + layer_norms)
        root_bytes += 2.0 * root
    return layer, root_bytes


@dataclass
class DeviceMemory(TrainingMemory):
    """What ONE GPU of a data-parallel run holds, itemised in bytes.

    TrainingMemory's items are this GPU's share; on top, `buckets` (DDP's gradient
    communication buffers) and `gathered` (the units FSDP has all-gathered at the peak).
    `cpu_offloaded` is what FSDP's CPU offload keeps in this process's RAM instead; it
    is not part of `total`.
    """

    ITEMS: ClassVar[tuple[str, ...]] = TrainingMemory.ITEMS + ("buckets", "gathered")

    strategy: str = "single"
    n_devices: int = 1
    buckets: float = 0.0
    gathered: float = 0.0
    cpu_offloaded: float = 0.0


def per_device_memory(
    shape: ModelShape, method: str, strategy: str = "single", n_devices: int = 1, seq_len: int = 512,
    batch: int = 1, r: int = 16, target_modules: Iterable[str] = LLAMA_ALL_LINEAR,
    gradient_checkpointing: bool = True, optimizer_state_bytes: float = ADAMW_STATE_BYTES,
    cpu_offload: bool = False, layers_gathered: int = FSDP_LAYERS_GATHERED,
) -> DeviceMemory:
    """Memory of one GPU when `n_devices` GPUs train together, from `training_memory`.

    `batch` is one process's micro-batch: activations are never sharded, each GPU runs
    its own examples.

    - single: `training_memory` on one GPU.
    - ddp: every GPU holds a full replica (weights, adapters, gradients, optimizer
      states) and its activations, whatever `n_devices`. Plus the gradient buckets:
      DDP's reducer copies each trained gradient into flat ~25 MB buffers and
      all-reduces a bucket as soon as it is full, overlapping the backward pass, so the
      trained gradients exist twice (`gradient_as_bucket_view=False`, the default of
      PyTorch and Accelerate).
    - fsdp: FULL_SHARD with transformer-layer wrapping (PEFT's `fsdp_auto_wrap_policy`).
      Weights, adapters, gradients and optimizer states are divided by `n_devices`,
      except QLoRA's quantization constants (`quant_constant_bytes`, on every GPU). On
      top, the unsharded units at the peak (`fsdp_unit_bytes`): the root unit, which
      FSDP keeps gathered from forward to backward, and `layers_gathered` decoder layers
      (default 2: the layer being computed and the next one, prefetched with
      BACKWARD_PRE). QLoRA under FSDP stores the 4-bit codes in a bf16 container
      (`bnb_4bit_quant_storage=torch.bfloat16`): 4 codes per element, the same bytes,
      so the weight bytes are unchanged. On one device FSDP switches to NO_SHARD: the
      same bytes as `single`. `cpu_offload=True` (FSDP's CPUOffload) moves the shards,
      their gradients and the optimizer step to CPU RAM (`cpu_offloaded`); the units
      still come to the GPU to be computed.

    Left out (see RUNTIME_HEADROOM_GB): CUDA context, NCCL buffers, fragmentation and
    transient tensors, so this is a lower bound. Against HF PEFT's measurement
    (Llama-2-70B FSDP-QLoRA on 2 GPUs, 2 sequences of 2048 tokens per GPU, r=8, gradient
    checkpointing): this function says 29.4 GB/GPU without CPU offload where 35.6 GB
    were measured, 10.9 GB with offload where 19.6 GB were measured: 6 to 9 GB missing
    (how much of it shrinks at fewer tokens per GPU was not measured). For CodeLlama-70B
    at 512 tokens it says 23.3 GB on 2 GPUs: under 24 GB on paper, by less than what it
    leaves out, so not a fit to count on; the "70B on two 24 GB GPUs" of Answer.AI and
    HF PEFT is run with CPU offload.

    Raises:
        ValueError: unknown strategy or method, n_devices < 1, 'single' on several
            devices, cpu_offload without FSDP, layers_gathered < 1.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy={strategy!r} is not one of {STRATEGIES}")
    if isinstance(n_devices, bool) or not isinstance(n_devices, int) or n_devices < 1:
        raise ValueError(f"n_devices must be an integer >= 1, got {n_devices!r}")
    if strategy == "single" and n_devices != 1:
        raise ValueError(f"strategy='single' runs on one device, got n_devices={n_devices}: use 'ddp' or 'fsdp'")
    if cpu_offload and strategy != "fsdp":
        raise ValueError(f"cpu_offload is an FSDP option, not one of strategy={strategy!r}")
    if layers_gathered < 1:
        raise ValueError(f"layers_gathered must be >= 1, got {layers_gathered}")
    one = training_memory(shape, method, seq_len, batch, r, target_modules, gradient_checkpointing,
                          optimizer_state_bytes)
    if strategy != "fsdp":
        buckets = one.gradients if strategy == "ddp" else 0.0
        return DeviceMemory(method, one.weights, one.adapters, one.gradients, one.optimizer, one.activations,
                            strategy, n_devices, buckets=buckets)
    replicated = quant_constant_bytes(shape) if method == "qlora" else 0.0
    shards = [(one.weights - replicated) / n_devices, one.adapters / n_devices, one.gradients / n_devices,
              one.optimizer / n_devices]  # weights, adapters, gradients, optimizer
    offloaded = sum(shards) if cpu_offload else 0.0
    if cpu_offload:
        shards = [0.0] * 4
    layer, root = fsdp_unit_bytes(shape, method)
    # One device, no offload: NO_SHARD, the GPU already holds every unit whole.
    gathered = root + layers_gathered * layer if n_devices > 1 or cpu_offload else 0.0
    return DeviceMemory(method, shards[0] + replicated, shards[1], shards[2], shards[3], one.activations,
                        strategy, n_devices, gathered=gathered, cpu_offloaded=offloaded)


def devices_needed(
    shape: ModelShape, method: str, strategy: str, gpu_gb: float, max_devices: int = 64,
    headroom_gb: float = RUNTIME_HEADROOM_GB, **kwargs,
) -> int | None:
    """Smallest number of `gpu_gb` GPUs (GB = 1e9 bytes) that `strategy` fits on, or None.

    A GPU fits when `per_device_memory(...).total + headroom_gb` is at most `gpu_gb`.
    DDP's per-GPU memory does not depend on the count: 1 if one replica fits (more GPUs
    add throughput, not memory), else None whatever the count. FSDP: the first count up
    to `max_devices` that fits. `kwargs` go to `per_device_memory` (seq_len, batch, r,
    cpu_offload...).

    Raises:
        ValueError: gpu_gb <= headroom_gb, max_devices < 1, or per_device_memory's.
    """
    if gpu_gb <= headroom_gb or headroom_gb < 0:
        raise ValueError(f"need gpu_gb > headroom_gb >= 0, got gpu_gb={gpu_gb}, headroom_gb={headroom_gb}")
    if max_devices < 1:
        raise ValueError(f"max_devices must be >= 1, got {max_devices}")
    budget = (gpu_gb - headroom_gb) * 1e9
    counts = range(1, max_devices + 1) if strategy == "fsdp" else (1,)
    for n in counts:
        if per_device_memory(shape, method, strategy, n, **kwargs).total <= budget:
            return n
    return None


def available_memory_bytes(device=None) -> int:
    """Free memory where training would run: free CUDA memory on a GPU, available RAM on CPU."""
    import torch

    from qlora_lab.device import default_device

    device = torch.device(device) if device is not None else default_device()
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    import psutil

    return int(psutil.virtual_memory().available)


def measure_saved_activation_bytes(model: nn.Module, input_ids) -> int:
    """Bytes of the tensors autograd saves for backward in one forward pass (weights excluded).

    Each storage is counted once, however many ops save it.
    """
    import torch

    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in params:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        model(input_ids, labels=input_ids)
    return sum(saved.values())
