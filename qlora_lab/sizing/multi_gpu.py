"""Memory per GPU when several GPUs train together: DDP replicas, FSDP shards.

    from qlora_lab.sizing.memory import CODELLAMA
    from qlora_lab.sizing.multi_gpu import per_device_memory, devices_needed
    per_device_memory(CODELLAMA["70B"], "qlora", "fsdp", n_devices=4)  # per GPU
    devices_needed(CODELLAMA["70B"], "qlora", "fsdp", gpu_gib=24)      # how many 24 GiB GPUs

Built on the single-GPU estimate of `qlora_lab.sizing.memory`: data-parallel runs add
what each GPU holds for the others, DDP's gradient buckets and FSDP's all-gathered layers.
The book page « Plusieurs GPU : DDP ou FSDP ? » explains the choice.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import ClassVar, Literal

from qlora_lab.finetune.lora import LLAMA_ALL_LINEAR
from qlora_lab.sizing.memory import (ADAMW_STATE_BYTES, GIB, NF4_CODE_BITS, ModelShape, TrainingMemory,
                                     bits_per_linear_weight, training_memory)

Strategy = Literal["single", "ddp", "fsdp"]
STRATEGIES: tuple[str, ...] = ("single", "ddp", "fsdp")
# FSDP FULL_SHARD with transformer-layer wrapping: the decoder layer being computed plus the
# next one, all-gathered ahead of time (Accelerate's fsdp_backward_prefetch: BACKWARD_PRE).
FSDP_LAYERS_GATHERED = 2
# What no formula here counts, per process, in GiB: CUDA context (~0.3–1 GiB, outside
# PyTorch's allocator), NCCL buffers, allocator fragmentation, temporaries inside kernels (a
# dequantized bf16 weight); the loss's fp32 logits are counted (`activation_peak_bytes`).
# A rule of thumb for short sequences, not a measurement: HF PEFT's 70B runs at 4096
# tokens per GPU sit 7.9–9.1 GiB above per_device_memory (see its docstring).
RUNTIME_HEADROOM_GIB = 2.0


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


def check_strategy(strategy: str, n_devices: int, cpu_offload: bool, layers_gathered: int) -> None:
    """One clear ValueError for a data-parallel setting that does not exist."""
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
      DDP's reducer copies each trained gradient into flat ~25 MiB buffers and
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

    Left out (see RUNTIME_HEADROOM_GIB): CUDA context, NCCL buffers, fragmentation and
    temporaries inside kernels, so this is a lower bound. Against HF PEFT's measurement
    (Llama-2-70B FSDP-QLoRA on 2 GPUs, 2 sequences of 2048 tokens per GPU, r=8, gradient
    checkpointing; its "GB" read as GiB, book/multi_gpu.md says why): this function says
    27.7 GiB/GPU without CPU offload where 35.6 were measured, 10.5 GiB with offload where
    19.6 were measured: 7.9 to 9.1 GiB missing (how much of it shrinks at fewer tokens per
    GPU was not measured). For CodeLlama-70B at 512 tokens it says 21.7 GiB on 2 GPUs:
    2.3 GiB left on a 24 GiB card, less than what it leaves out, so not a fit to count on;
    the "70B on two 24 GB GPUs" of Answer.AI and HF PEFT is run with CPU offload.

    Raises:
        ValueError: unknown strategy or method, n_devices < 1, 'single' on several
            devices, cpu_offload without FSDP, layers_gathered < 1.
    """
    check_strategy(strategy, n_devices, cpu_offload, layers_gathered)
    one = training_memory(shape, method, seq_len, batch, r, target_modules, gradient_checkpointing,
                          optimizer_state_bytes, fp32_unquantized=strategy != "fsdp")
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
    shape: ModelShape, method: str, strategy: str, gpu_gib: float, max_devices: int = 64,
    headroom_gib: float = RUNTIME_HEADROOM_GIB, **kwargs,
) -> int | None:
    """Smallest number of `gpu_gib` GPUs that `strategy` fits on, or None.

    Card and headroom are in GiB (2**30 bytes): a card sold as "24 GB" is `gpu_gib=24`.
    A GPU fits when `per_device_memory(...).total + headroom_gib` is at most `gpu_gib`.
    DDP's per-GPU memory does not depend on the count: 1 if one replica fits (more GPUs
    add throughput, not memory), else None whatever the count. FSDP: the first count up
    to `max_devices` that fits. `kwargs` go to `per_device_memory` (seq_len, batch, r,
    cpu_offload...).

    Raises:
        ValueError: gpu_gib <= headroom_gib, max_devices < 1, or per_device_memory's.
    """
    if gpu_gib <= headroom_gib or headroom_gib < 0:
        raise ValueError(f"need gpu_gib > headroom_gib >= 0, got gpu_gib={gpu_gib}, headroom_gib={headroom_gib}")
    if max_devices < 1:
        raise ValueError(f"max_devices must be >= 1, got {max_devices}")
    budget = (gpu_gib - headroom_gib) * GIB
    counts = range(1, max_devices + 1) if strategy == "fsdp" else (1,)
    for n in counts:
        if per_device_memory(shape, method, strategy, n, **kwargs).total <= budget:
            return n
    return None
