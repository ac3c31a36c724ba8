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
# What each format is, in French, for the tables students read (the package's descriptions are English).
DESCRIPTIONS = {
    "none": "bf16, la référence",
    "int8": "INT8 absmax, une échelle par ligne de poids",
    "llm-int8": "LLM.int8() : INT8 par vecteur, dimensions |x| ≥ 6 en 16 bits (bitsandbytes)",
    "nf4": "NF4, blocs de 64 (bitsandbytes)",
    "nf4-dq": "NF4 + double quantification (QLoRA, bitsandbytes)",
    "fp4": "FP4, blocs de 64 (bitsandbytes)",
    "int4-absmax": "INT4 absmax symétrique, blocs de 64 (le Int4 de QLoRA, tab. 2)",
    **{f"int{b}": f"INT{b} au plus proche, grille min/max par groupe de 64" for b in (2, 3, 4)},
    **{f"gptq{b}": f"GPTQ {b} bits, groupes de 64, calibré" for b in (2, 3, 4)},
    **{f"awq{b}": f"échelles AWQ puis INT{b} au plus proche, calibré" for b in (3, 4)},
    **{f"hqq{b}": f"HQQ {b} bits, groupes de 64, sans données (paquet hqq)" for b in (2, 3, 4)},
}
FAMILY_LABELS = {"reference": "référence bf16", "bnb": "bitsandbytes (noyaux réels)",
                 "weights": "arrondi au plus proche / HQQ", "calibrated": "calibré (GPTQ, AWQ)"}


def quality_rows(data: Mapping[str, Any], key: str = "rows") -> list[dict[str, Any]]:
    """The benchmark's rows with the change of bits/byte against bf16 (`delta`) and a French description."""
    rows = list(data[key])
    reference = next(r["bits_per_byte"] for r in rows if r["format"] == "none")
    return [{**r, "delta": r["bits_per_byte"] / reference - 1.0, "description": DESCRIPTIONS[r["format"]]}
            for r in rows]


def paper_rows(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Our bits/byte change next to QLoRA's Table 2 perplexity and Table 4 MMLU, per data type."""
    ours = {r["format"]: r["delta"] for r in rows}
    ours["int4"] = ours.get("int4-absmax")  # the paper's Int4 is symmetric absmax by blocks
    names = {"none": "BF16", "int4": "Int4", "fp4": "FP4 (E2M1)", "fp4-e3m0": "FP4 (E3M0)", "nf4-dq": "NF4 + DQ"}
    return [{"format": label, "ours": ours.get(name), "table2": PAPER_TABLE2.get(name),
             "table4": PAPER_TABLE4.get(name)} for name, label in names.items()]


def plot_quality(rows: Sequence[Mapping[str, Any]]) -> "Figure":
    """Change of bits/byte against bf16 (%) per format, sorted, coloured by family, bits per weight in the label."""
    import matplotlib.pyplot as plt

    from qlora_lab.french import nombre, pourcentage

    ordered = sorted((r for r in rows if r["format"] != "none"), key=lambda r: r["delta"])
    fig, ax = plt.subplots(figsize=(8, 0.32 * len(ordered) + 1.4))
    for i, r in enumerate(ordered):
        ax.barh(i, 100 * r["delta"], color=FAMILY_COLOURS[r["kind"]])
        ax.annotate(pourcentage(r["delta"], 3), (max(100 * r["delta"], 0), i), xytext=(3, 0),
                    textcoords="offset points", va="center", fontsize=7)
    ax.set_yticks(range(len(ordered)),
                  [f"{r['format']} ({nombre(r['bits_per_weight'], 2)} bits)" for r in ordered], fontsize=8)
    from matplotlib.patches import Patch

    handles = [Patch(color=colour, label=FAMILY_LABELS[family]) for family, colour in FAMILY_COLOURS.items()
               if family != "reference"]
    ax.xaxis.set_major_formatter(lambda value, _: nombre(value, 2))  # French decimal comma
    ax.set_xlabel("écart de bits par octet de validation à bf16 (%, ↓ mieux)")
    ax.set_title("Ce que coûte la quantification au modèle du cours")
    ax.legend(handles=handles, fontsize=8, loc="lower right")
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
