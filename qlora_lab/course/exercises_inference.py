"""Self-check of chapter 12's exercises (memory ceiling, NF4 rounding of a merge, GGUF sizes).

Expected values come from the package, cheaply: the saved decoding benchmark read back and its
ceiling recomputed with `bandwidth_bound_tokens_per_s` (12.1); `quantize_4bit` on one weight of
the embedded model (12.2); the embedded model exported once with `export_gguf` and read back (12.3).
The model is loaded on first use only, so other chapters' self-checks stay light.
"""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path

import torch

from qlora_lab.course.benchmark_results import load_results
from qlora_lab.course.self_check import Checker, choice, exact, numeric, parts
from qlora_lab.quant.nf4 import dequantize_4bit, quantize_4bit
from qlora_lab.sizing.decoding import bandwidth_bound_tokens_per_s

RESULTS_FILE = "inference_speed_cpu.json"
BIG_MODEL = "llama-1.1b"  # 12.1: the benchmark's 1.1B Llama, at batch 1
FORMATS = {"bf16": "bf16", "nf4": "nf4-dq"}  # answer key suffix -> benchmark "format"
LAYER = 0  # 12.2: down_proj of this decoder layer, as in section 12.2
UPDATES = (0.001, 0.01)  # 12.2: the constant added to every weight before re-quantizing
GGUF_TYPE = "q4_0"  # 12.3
BITS_PER_WEIGHT = {"q4_0": 4.5, "q8_0": 8.5}  # 32 codes + one float16 scale per block
CAUSES = ("normes", "vocabulaire")  # 12.3: what makes most of the bytes outside the 2-D weights


def _benchmark_row(fmt: str) -> dict:
    rows = load_results()[RESULTS_FILE]["rows"]
    return next(r for r in rows if r["model"] == BIG_MODEL and r["batch_size"] == 1 and r["format"] == fmt)


def ceiling(fmt: str) -> float:
    """12.1: tokens/s the saved bandwidth allows at batch 1, from the row's bytes read per step."""
    bandwidth = load_results()[RESULTS_FILE]["bandwidth_bytes_per_s"]
    return bandwidth_bound_tokens_per_s(_benchmark_row(fmt)["weight_bytes_per_token"], bandwidth)


def share_of_ceiling(fmt: str) -> float:
    """12.1: measured tokens/s over the memory ceiling (1 = limited by memory alone)."""
    return _benchmark_row(fmt)["tokens_per_s"] / ceiling(fmt)


def most_memory_bound() -> str:
    """12.1: the answer key suffix of the format closer to its memory ceiling."""
    return max(FORMATS, key=lambda k: share_of_ceiling(FORMATS[k]))


@functools.cache
def _base_model():
    from qlora_lab.model.models import load_model

    return load_model(quantization="none", device="cpu")


def layer_weight() -> torch.Tensor:
    """12.2: the bf16 down_proj weight of decoder layer `LAYER` of the embedded model, in float32."""
    return _base_model()[0].model.layers[LAYER].mlp.down_proj.weight.detach().float()


@functools.cache
def rounding_effect(update: float) -> dict[str, float]:
    """12.2: add `update` to every weight, re-quantize in NF4 (blocks of 64, DQ) as a merge does.

    Returns the share of 4-bit codes left unchanged and the mean rounding error of the dequantized
    change over the update (section 12.2's second percentage: 0 = the update kept exactly).
    """
    w = layer_weight()
    before, state_before = quantize_4bit(w)
    after, state_after = quantize_4bit(w + update)
    codes = lambda packed: torch.cat([packed >> 4, packed & 15])  # two codes per byte
    change = dequantize_4bit(after, state_after).float() - dequantize_4bit(before, state_before).float()
    return {"unchanged": float((codes(before) == codes(after)).float().mean()),
            "error": float((change - update).abs().mean() / update)}


@functools.cache
def gguf_sizes(tensor_type: str = GGUF_TYPE) -> dict[str, int]:
    """12.3: bytes of the embedded model's GGUF file: whole file, 2-D weights, F32 tensors, and 2-D weight count."""
    import gguf

    from qlora_lab.model.gguf_export import export_gguf

    with tempfile.TemporaryDirectory(prefix="qlora-lab-12-") as folder:
        path = export_gguf(*_base_model(), Path(folder) / f"mini.{tensor_type}.gguf", tensor_type)
        size = path.stat().st_size
        tensors = list(gguf.GGUFReader(str(path)).tensors)  # sizes only: no dequantization
    flat = [t for t in tensors if len(t.shape) == 1]
    matrices = [t for t in tensors if len(t.shape) == 2]
    return {"file": size, "f32": sum(int(t.n_bytes) for t in flat), "weights": sum(int(t.n_bytes) for t in matrices),
            "n_weights": sum(int(t.n_elements) for t in matrices)}


def predicted_bytes(tensor_type: str = GGUF_TYPE) -> float:
    """12.3: number of 2-D weights x bits per weight / 8."""
    return gguf_sizes(tensor_type)["n_weights"] * BITS_PER_WEIGHT[tensor_type] / 8


def main_cause() -> str:
    """12.3: whether the F32 norms or the rest (metadata, vocabulary) weigh more outside the weights."""
    sizes = gguf_sizes()
    rest = sizes["file"] - sizes["weights"] - sizes["f32"]
    return "normes" if sizes["f32"] > rest else "vocabulaire"


EXERCISES: dict[str, Checker] = {
    "12.1": parts({"plafond_nf4": numeric(lambda: ceiling(FORMATS["nf4"]), rtol=1e-3),
                   **{f"part_{k}": numeric(lambda f=f: share_of_ceiling(f), rtol=0.01) for k, f in FORMATS.items()},
                   "limite_par_la_memoire": choice(most_memory_bound, tuple(FORMATS))}),
    "12.2": parts({**{f"inchanges_{u:g}": numeric(lambda u=u: rounding_effect(u)["unchanged"], rtol=0.01)
                      for u in UPDATES},
                   **{f"erreur_{u:g}": numeric(lambda u=u: rounding_effect(u)["error"], rtol=0.01)
                      for u in UPDATES}}),
    "12.3": parts({"prevu": numeric(predicted_bytes, rtol=1e-6),
                   "taille_fichier": exact(lambda: gguf_sizes()["file"]),
                   "octets_f32": exact(lambda: gguf_sizes()["f32"]),
                   "cause": choice(main_cause, CAUSES)}),
}
