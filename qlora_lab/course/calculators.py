"""Two interactive calculators: training memory per GPU (chapter 10) and LoRA's rank (chapter 07).

The memory calculator answers the guide's « GPU NVIDIA avec 8GB+ VRAM » (erratum 8) by
hand: pick a model size, a method (full, 16-bit LoRA, QLoRA), a sequence length, a batch
and a number of GPUs, and read the Gio each GPU holds, from the package's estimator
(`qlora_lab.sizing.memory` and `qlora_lab.sizing.multi_gpu`). The rank explorer shows what
LoRA trains for a rank and a set of target layers: parameters, share of the model, adapter
file size. The numbers come from plain functions (`memory_per_device`, `memory_rows`,
`lora_rank_row`) so that the tests check numbers, not widgets.

    from qlora_lab.course.calculators import memory_calculator, lora_rank_explorer
    memory_calculator()          # in a notebook cell
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache
from typing import Any

from qlora_lab.finetune.config import MODE_LABELS
from qlora_lab.finetune.lora import lora_params_for_shape
from qlora_lab.french import Tableau, nombre, octets, pourcentage
from qlora_lab.model.llama_shapes import CODELLAMA, LLAMA_ALL_LINEAR, ModelShape
from qlora_lab.sizing.memory import GIB, GPU_SIZES_GIB, smallest_gpu_that_fits
from qlora_lab.sizing.multi_gpu import RUNTIME_HEADROOM_GIB, DeviceMemory, per_device_memory

METHOD_LABELS = MODE_LABELS
STRATEGY_LABELS = {"ddp": "DDP (une copie par GPU)", "fsdp": "FSDP (modèle partagé)"}
ITEM_LABELS = {"weights": "poids", "adapters": "adaptateurs", "gradients": "gradients",
               "optimizer": "états de l'optimiseur", "activations": "activations",
               "buckets": "tampons de gradients (DDP)", "gathered": "couches rassemblées (FSDP)"}
SEQ_LENS = (128, 256, 512, 1024, 2048, 4096, 8192)
RANKS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
EMBEDDED = "mini CodeLlama (le modèle du cours)"
ADAPTER_BYTES_PER_PARAM = 4  # PEFT trains and saves adapters in fp32 by default


def memory_per_device(size: str = "7B", method: str = "qlora", seq_len: int = 512, batch: int = 1,
                      n_devices: int = 1, strategy: str = "fsdp") -> DeviceMemory:
    """What one GPU holds for CodeLlama-`size` (`per_device_memory`, gradient checkpointing on).

    With one GPU the strategy is 'single'; with several, `strategy` ('ddp' or 'fsdp').

    Raises:
        ValueError: unknown size (or per_device_memory's errors).
    """
    if size not in CODELLAMA:
        raise ValueError(f"size={size!r} is not one of {tuple(CODELLAMA)}")
    strategy = "single" if n_devices == 1 else strategy
    return per_device_memory(CODELLAMA[size], method, strategy, n_devices, seq_len=seq_len, batch=batch)


def smallest_gpu_gib(total_bytes: float, headroom_gib: float = RUNTIME_HEADROOM_GIB) -> int | None:
    """The smallest card of GPU_SIZES_GIB holding `total_bytes` plus the runtime headroom, or None.

    The headroom (CUDA context, allocator, transient tensors: no formula counts them) is
    the estimator's rule of thumb, `qlora_lab.sizing.multi_gpu.RUNTIME_HEADROOM_GIB`.
    """
    return smallest_gpu_that_fits(total_bytes + headroom_gib * GIB, GPU_SIZES_GIB)


def memory_rows(mem: DeviceMemory) -> list[dict[str, Any]]:
    """The items of `mem` with a French label, then the total (bytes), for a Tableau."""
    rows = [{"poste": ITEM_LABELS[k], "octets": getattr(mem, k)} for k in mem.ITEMS if getattr(mem, k)]
    rows.append({"poste": "total par GPU", "octets": mem.total})
    return rows


def memory_verdict(mem: DeviceMemory) -> str:
    """One French sentence: the smallest common GPU that holds this, headroom included."""
    gpu = smallest_gpu_gib(mem.total)
    where = "sur chacun des GPU" if mem.n_devices > 1 else "sur un GPU"
    if gpu is None:
        return (f"{octets(mem.total)} par GPU : trop pour un GPU de {GPU_SIZES_GIB[-1]} Gio ; "
                "ajoutez des GPU (FSDP), raccourcissez les séquences ou passez à QLoRA.")
    return (f"{octets(mem.total)} par GPU, plus ≈ {octets(RUNTIME_HEADROOM_GIB * GIB)} de marge (contexte CUDA…) : "
            f"tient {where} de {gpu} Gio ou plus.")


def _show_memory(size: str, method: str, seq_len: int, batch: int, n_devices: int, strategy: str) -> DeviceMemory:
    """Display the table and the verdict for one setting (called by the widgets)."""
    from IPython.display import display

    mem = memory_per_device(size, method, seq_len, batch, n_devices, strategy)
    title = (f"CodeLlama-{size}, {METHOD_LABELS[method]}, {batch} × {nombre(seq_len)} tokens, "
             f"{n_devices} GPU" + (f" en {strategy.upper()}" if n_devices > 1 else ""))
    display(Tableau(memory_rows(mem), colonnes={"poste": "poste", "octets": "mémoire"},
                    formats={"octets": octets}, titre=title))
    print(memory_verdict(mem))
    return mem


def memory_calculator(size: str = "7B", method: str = "qlora", seq_len: int = 512, batch: int = 1,
                      n_devices: int = 1, strategy: str = "fsdp") -> Any:
    """An `ipywidgets.interactive`: model size, method, sequence, batch, GPUs → Gio per GPU.

    Returns the widget (display it by leaving it last in a cell); its `.result` holds the
    DeviceMemory of the current setting.
    """
    import ipywidgets as widgets

    if seq_len not in SEQ_LENS:
        raise ValueError(f"seq_len must be one of {SEQ_LENS}, got {seq_len}")
    style = {"description_width": "initial"}
    controls = {
        "size": widgets.Dropdown(options=[(f"CodeLlama-{s}", s) for s in CODELLAMA], value=size,
                                 description="modèle", style=style),
        "method": widgets.ToggleButtons(options=[(v, k) for k, v in METHOD_LABELS.items()], value=method,
                                        description="méthode", style=style),
        "seq_len": widgets.SelectionSlider(options=list(SEQ_LENS), value=seq_len, description="séquence (tokens)",
                                           style=style),
        "batch": widgets.IntSlider(value=batch, min=1, max=32, description="batch par GPU", style=style),
        "n_devices": widgets.IntSlider(value=n_devices, min=1, max=8, description="nombre de GPU", style=style),
        "strategy": widgets.ToggleButtons(options=[(v, k) for k, v in STRATEGY_LABELS.items()], value=strategy,
                                          description="plusieurs GPU", style=style),
    }
    return widgets.interactive(_show_memory, **controls)


@lru_cache(maxsize=1)
def embedded_shape() -> ModelShape:
    """The embedded model's shape, read from its config.json (no weights loaded)."""
    from transformers import AutoConfig

    from qlora_lab.paths import EMBEDDED_MODEL_DIR

    return ModelShape.from_config(AutoConfig.from_pretrained(EMBEDDED_MODEL_DIR))


def model_shapes() -> dict[str, ModelShape]:
    """The models the rank explorer offers: the course's model, then CodeLlama 7B to 70B."""
    return {EMBEDDED: embedded_shape(), **{f"CodeLlama-{k}": v for k, v in CODELLAMA.items()}}


def lora_rank_row(shape: ModelShape, r: int, target_modules: Iterable[str] = LLAMA_ALL_LINEAR) -> dict[str, Any]:
    """Trainable LoRA parameters, their share of the model and the adapter's size (fp32) for rank r.

    Raises:
        ValueError: no target module, or lora_params_for_shape's errors.
    """
    targets = tuple(target_modules)
    if not targets:
        raise ValueError("target_modules is empty: LoRA needs at least one layer to adapt")
    n = lora_params_for_shape(shape.hidden, shape.intermediate, shape.n_layers, shape.n_heads,
                              shape.n_kv_heads, r=r, target_modules=targets)
    return {"r": r, "paramètres": n, "part": n / shape.n_params, "taille": ADAPTER_BYTES_PER_PARAM * n}


def _show_ranks(model: str, r: int, target_modules: tuple[str, ...]) -> dict[str, Any] | None:
    """Display the table for one rank and the ranks around it (called by the widgets)."""
    from IPython.display import display

    if not target_modules:
        print("Choisissez au moins une couche à adapter.")
        return None
    shape = model_shapes()[model]
    around = [x for x in RANKS if r / 4 <= x <= 4 * r]
    rows = [lora_rank_row(shape, x, target_modules) for x in around]
    display(Tableau(rows, titre=f"{model} : LoRA sur {', '.join(target_modules)}",
                    colonnes={"r": "rang r", "paramètres": "paramètres entraînables", "part": "part du modèle",
                              "taille": "adaptateur (fp32)"},
                    formats={"part": lambda p: pourcentage(p, 3), "taille": octets}))
    return next(row for row in rows if row["r"] == r)


def lora_rank_explorer(model: str = EMBEDDED, r: int = 16, target_modules: Iterable[str] = LLAMA_ALL_LINEAR) -> Any:
    """An `ipywidgets.interactive`: model, rank slider and target layers → trainable parameters.

    Returns the widget; its `.result` holds the row of the chosen rank.
    """
    import ipywidgets as widgets

    if r not in RANKS:
        raise ValueError(f"r must be one of {RANKS}, got {r}")
    style = {"description_width": "initial"}
    controls = {
        "model": widgets.Dropdown(options=list(model_shapes()), value=model, description="modèle", style=style),
        "r": widgets.SelectionSlider(options=list(RANKS), value=r, description="rang r", style=style),
        "target_modules": widgets.SelectMultiple(options=list(LLAMA_ALL_LINEAR), value=tuple(target_modules),
                                                 description="couches visées", rows=7, style=style),
    }
    return widgets.interactive(_show_ranks, **controls)
