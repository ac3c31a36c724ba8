"""Chapter 11's tables and figures: the quality table, the papers beside it, outlier features.

    from qlora_lab.course.quality import quality_rows, plot_quality, plot_input_magnitudes
    rows = quality_rows(load_results()["quality_table_cpu.json"])
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch

from qlora_lab.quant.llm_int8 import THRESHOLD, decomposition_error

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# QLoRA (Dettmers et al. 2023), Table 2: mean Pile Common Crawl perplexity of OPT, BLOOM,
# LLaMA and Pythia models of 125M to 13B parameters, after 4-bit quantization (lower is better).
PAPER_TABLE2 = {"int4": 34.34, "fp4": 31.07, "fp4-e3m0": 29.48, "nf4-dq": 27.41}
# QLoRA, Table 4: mean 5-shot MMLU accuracy (%) of LLaMA 7B-65B fine-tuned with a base in
# each data type (higher is better).
PAPER_TABLE4 = {"none": 53.0, "fp4": 52.2, "nf4-dq": 53.1}
FAMILY_COLOURS = {"reference": "black", "bnb": "tab:blue", "weights": "tab:orange", "calibrated": "tab:green"}
FAMILY_LABELS = {"reference": "référence bf16", "bnb": "bitsandbytes (noyaux réels)",
                 "weights": "arrondi au plus proche / HQQ", "calibrated": "calibré (GPTQ, AWQ)"}


def quality_rows(data: Mapping[str, Any], key: str = "rows") -> list[dict[str, Any]]:
    """The benchmark's rows with the relative change of bits/byte against bf16 (`delta`)."""
    rows = list(data[key])
    reference = next(r["bits_per_byte"] for r in rows if r["format"] == "none")
    return [{**r, "delta": r["bits_per_byte"] / reference - 1.0} for r in rows]


def paper_rows(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Our bits/byte change next to QLoRA's Table 2 perplexity and Table 4 MMLU, per data type."""
    ours = {r["format"]: r["delta"] for r in rows}
    ours["int4"] = ours.get("int4-absmax")  # the paper's Int4 is symmetric absmax by blocks
    names = {"none": "BF16", "int4": "Int4", "fp4": "FP4 (E2M1)", "fp4-e3m0": "FP4 (E3M0)", "nf4-dq": "NF4 + DQ"}
    return [{"format": label, "ours": ours.get(name), "table2": PAPER_TABLE2.get(name),
             "table4": PAPER_TABLE4.get(name)} for name, label in names.items()]


def plot_quality(rows: Sequence[Mapping[str, Any]]) -> "Figure":
    """Bits/byte (lower is better) against bits per weight, one point per format, by family."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for family, colour in FAMILY_COLOURS.items():
        chosen = [r for r in rows if r["kind"] == family]
        ax.scatter([r["bits_per_weight"] for r in chosen], [r["bits_per_byte"] for r in chosen],
                   color=colour, label=FAMILY_LABELS[family], zorder=3)
        for r in chosen:
            ax.annotate(r["format"], (r["bits_per_weight"], r["bits_per_byte"]), fontsize=8,
                        xytext=(4, 3), textcoords="offset points")
    reference = next(r["bits_per_byte"] for r in rows if r["format"] == "none")
    ax.axhline(reference, color="grey", lw=0.8, ls="--")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("bits par poids (constantes comprises, échelle log)")
    ax.set_ylabel("bits par octet de validation (↓ mieux)")
    ax.set_title("Ce que coûte la quantification au modèle du cours")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_input_magnitudes(magnitudes: Mapping[str, torch.Tensor], names: Sequence[str],
                          threshold: float = THRESHOLD) -> "Figure":
    """Max |x| per hidden dimension at the input of the given layers, with LLM.int8()'s threshold."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 3.8))
    for name in names:
        ax.plot(magnitudes[name].numpy(), lw=0.8, label=name)
    ax.axhline(threshold, color="red", ls="--", lw=1, label=f"seuil LLM.int8() = {threshold:g}")
    ax.set_xlabel("dimension cachée")
    ax.set_ylabel("max |x| sur les jetons de calibration")
    ax.set_title("Entrées des projections : quelques dimensions dépassent toutes les autres")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def outlier_sweep(x: torch.Tensor, weight: torch.Tensor, dim: int, factors: Sequence[float]) -> list[dict[str, float]]:
    """Errors of INT8 and LLM.int8() when hidden dimension `dim` of `x` is multiplied by each factor.

    Reproduces the emergent-feature effect: one loud dimension stretches every row's absmax.
    """
    rows = []
    for factor in factors:
        loud = x.clone()
        loud[:, dim] *= factor
        errors = decomposition_error(loud.to(torch.bfloat16), weight)
        rows.append({"factor": factor, "max_abs": float(loud[:, dim].abs().max()), **errors})
    return rows


def plot_outlier_sweep(rows: Sequence[Mapping[str, float]]) -> "Figure":
    """Relative output error against the magnitude of the injected dimension, both methods."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.8))
    amplitudes = [r["max_abs"] for r in rows]
    ax.plot(amplitudes, [r["int8"] for r in rows], "o-", label="INT8 par vecteur")
    ax.plot(amplitudes, [r["llm_int8"] for r in rows], "s-", label="LLM.int8() (dimensions ≥ 6 en 16 bits)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("max |x| de la dimension injectée")
    ax.set_ylabel("erreur relative de sortie")
    ax.set_title("Une dimension aberrante dans les activations")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
