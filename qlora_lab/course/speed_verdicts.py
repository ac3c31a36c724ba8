"""French sentences that follow a speed measurement instead of asserting a fixed claim.

Why: whether fp16 or int8 is faster depends on the machine (CPU flags, GPU, load). A
notebook that prints "fp16 est plus lent" while its own output says otherwise teaches a
falsehood; these functions write the verdict from the numbers just measured, and name
the CPU features (`qlora_lab.hardware.sysinfo.cpu_model_and_flags`) that explain it.
"""

from __future__ import annotations

from collections.abc import Sequence

from qlora_lab.french import nombre, pourcentage

SAME_SPEED_TOLERANCE = 0.10  # within ±10 %: timing noise on a shared machine, "as fast"


def compare_speed(name: str, seconds: float, reference: str, reference_seconds: float,
                  tolerance: float = SAME_SPEED_TOLERANCE) -> str:
    """'bf16 est 2,8 fois plus rapide que fp32', '… plus lent …' or '… aussi rapide … (à 10 % près)'."""
    if seconds <= 0 or reference_seconds <= 0:
        raise ValueError(f"durations must be positive, got {seconds} and {reference_seconds}")
    ratio = reference_seconds / seconds  # > 1: `name` is faster
    if abs(ratio - 1) <= tolerance:
        return (f"{name} va aussi vite que {reference} (rapport {nombre(ratio, 2)}, "
                f"dans la marge de {pourcentage(tolerance, 0)} du bruit de mesure)")
    if ratio > 1:
        return f"{name} est {nombre(ratio, 1)} fois plus rapide que {reference}"
    return f"{name} est {nombre(1 / ratio, 1)} fois plus lent que {reference}"


def _bf16_cause(faster: bool, flags: Sequence[str]) -> str:
    if faster and "amx_bf16" in flags:
        return ("ce processeur a des unités AMX (drapeau amx_bf16) qui multiplient des matrices bf16 "
                "en matériel, et oneDNN, la bibliothèque de calcul de PyTorch sur CPU, s'en sert")
    if faster and "avx512_bf16" in flags:
        return "ce processeur a les instructions AVX512-BF16 (produits scalaires bf16 en matériel)"
    if not faster and not {"amx_bf16", "avx512_bf16"} & set(flags):
        return "ce processeur n'a ni AMX ni AVX512-BF16 : chaque valeur bf16 est convertie avant le calcul"
    return ""


def _fp16_cause(faster: bool, flags: Sequence[str]) -> str:
    if faster and "amx_fp16" in flags:
        return "ce processeur a des unités AMX-FP16 (drapeau amx_fp16), qui multiplient des matrices fp16"
    if not faster and "amx_fp16" not in flags:
        listed = (" ; ses instructions vectorielles AVX512-FP16 ne suffisent pas, d'après cette mesure, "
                  "à accélérer ce produit de matrices") if "avx512_fp16" in flags else ""
        return f"ce processeur n'a pas d'unité matricielle fp16 (drapeau amx_fp16 absent{listed})"
    return ""


def half_precision_verdict(seconds: dict[str, float], device_type: str, flags: Sequence[str] = ()) -> str:
    """Chapter 01's speed verdict: fp16 and bf16 against fp32, with the CPU features that explain it.

    Returns Markdown: an opening line and one bullet per format.

    Args:
        seconds: time of the same matmul for the keys "fp32", "fp16" and "bf16".
        device_type: "cpu" or "cuda" (the CPU flags only explain a CPU measurement).
        flags: the CPU's relevant flags, from `cpu_model_and_flags()[1]`.
    """
    missing = {"fp32", "fp16", "bf16"} - set(seconds)
    if missing:
        raise ValueError(f"seconds needs the keys fp32, fp16 and bf16; missing {sorted(missing)}")
    sentences = []
    for name, cause in (("fp16", _fp16_cause), ("bf16", _bf16_cause)):
        ratio = seconds["fp32"] / seconds[name]
        text = compare_speed(name, seconds[name], "fp32", seconds["fp32"])
        why = cause(ratio > 1 + SAME_SPEED_TOLERANCE, flags) if device_type == "cpu" else ""
        sentences.append(f"- {text}{' : ' + why if why else ''} ;")
    where = "ce processeur" if device_type == "cpu" else "ce GPU"
    sentences[-1] = sentences[-1][:-2] + "."
    return f"Mesuré sur {where} :\n\n" + "\n".join(sentences)


def dynamic_int8_verdict(fp32_ms: float, int8_ms: float, width: int) -> str:
    """Chapter 02's verdict on dynamic INT8 PTQ speed for layers of `width` neurons."""
    comparison = compare_speed("le modèle INT8 dynamique", int8_ms / 1e3, "le modèle fp32", fp32_ms / 1e3)
    measured = f"Mesuré : {comparison} ({nombre(fp32_ms, 2)} ms → {nombre(int8_ms, 2)} ms par lot)."
    ratio = fp32_ms / int8_ms
    if ratio < 1 - SAME_SPEED_TOLERANCE:
        why = (f"Avec des couches de {width} neurones, les produits de matrices sont petits : quantifier "
               "les activations à chaque appel, puis déquantifier les sorties, coûte plus cher que ce "
               "que le calcul en int8 fait gagner.")
    elif ratio <= 1 + SAME_SPEED_TOLERANCE:
        why = (f"Avec des couches de {width} neurones, le surcoût de la quantification des activations "
               "compense à peu près le gain du calcul en int8.")
    else:
        why = (f"Même avec des couches de {width} neurones, le calcul en int8 fait gagner plus que ne "
               "coûte la quantification des activations à chaque appel.")
    return f"{measured} {why}"
