"""The model card (README.md, in French) of the shipped mini CodeLlama, and its quality figures.

    qlora-lab pretrain ... writes it after training; `write_model_card(model_dir)` rewrites it.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from qlora_lab.french import nombre
from qlora_lab.model import corpus
from qlora_lab.model.models import load_model
from qlora_lab.model.validation import evaluate_texts


def measure_quality(model_dir: Path) -> dict[str, float]:
    """Validation bits/byte of the saved model, in bf16 and reloaded in NF4 (whole split)."""
    texts = corpus.read_texts("validation")
    quality = {}
    for quantization in ("none", "nf4"):
        model, tokenizer = load_model(model_dir, quantization=quantization, compute_dtype=torch.bfloat16)
        quality["bf16" if quantization == "none" else quantization] = round(evaluate_texts(model, tokenizer, texts).bits_per_byte, 4)
    return quality


def model_card(summary: dict, curve: list[dict], quality: dict[str, float], size_mib: float) -> str:
    """The README.md of the shipped model (French: students read it)."""
    cfg = summary["config"]
    evals = [row for row in curve if row.get("val_bits_per_byte") is not None]
    curve_rows = "\n".join(
        f"| {r['step']} | {r['tokens']:,} | {r['elapsed_s'] / 60:.1f} | {r['train_nats_per_token']:.3f} | "
        f"{r['val_nats_per_token']:.3f} | {r['val_bits_per_byte']:.3f} |" for r in evals
    )
    samples = "\n\n".join(f"```python\n{completion}\n```" for completion in summary["samples"].values())
    splits = summary["corpus"]
    split_rows = "\n".join(f"| {name} | {s['files']} | {s['bytes']:,} |" for name, s in splits.items())
    return f"""---
library_name: transformers
pipeline_tag: text-generation
license: other
license_name: psf-2.0
tags: [llama, code, python, qlora-lab, education]
---

# mini-codellama : un petit CodeLlama entraîné hors ligne sur la bibliothèque standard de Python

Modèle par défaut du cours **qlora-lab**. Même architecture que CodeLlama
(`LlamaForCausalLM` : RMSNorm, RoPE, SwiGLU, sans biais), en miniature, entraîné
**sur CPU, sans réseau**, sur le code source de la bibliothèque standard de Python
{summary["python_stdlib_version"]} (celle de l'interpréteur qui l'a entraîné). Il sert à faire un
vrai fine-tuning QLoRA en 4 bits sur n'importe quel ordinateur.

```python
from transformers import AutoModelForCausalLM, AutoTokenizer
model = AutoModelForCausalLM.from_pretrained("qlora_lab/assets/mini-codellama")
tokenizer = AutoTokenizer.from_pretrained("qlora_lab/assets/mini-codellama")
# ou, en NF4 : from qlora_lab.model.models import load_model; model, tokenizer = load_model()
```

## Configuration

| paramètre | valeur |
|---|---|
| paramètres | {summary["parameters"]:,} (embeddings d'entrée et de sortie partagés) |
| couches × dimension | {cfg["num_hidden_layers"]} × {cfg["hidden_size"]} ({cfg["num_attention_heads"]} têtes de 64) |
| MLP SwiGLU (intermediate_size) | {cfg["intermediate_size"]} |
| contexte | {cfg["seq_len"]} tokens |
| tokenizer | BPE au niveau de l'octet, {cfg["vocab_size"]} tokens (`<unk>`, `<s>`, `</s>`, `<pad>` = 0..3) |
| poids | bf16, `model.safetensors`, {nombre(size_mib, 1)} Mio pour tout le dossier |

`hidden_size` et `intermediate_size` sont des multiples de 64 : les noyaux CPU 4 bits de
bitsandbytes l'exigent (et chaque `out_features` est divisible par 32).

## Données

Bibliothèque standard de Python {summary["python_stdlib_version"]}, sans les suites de tests, `idlelib`,
`tkinter`, `lib2to3`, `turtledemo`, `ensurepip` ni `site-packages` (`qlora_lab/model/corpus.py`).
Découpage déterministe par hachage SHA-256 du chemin relatif (~5 % des fichiers en
validation). Le paquet `email/` est **entièrement exclu** du pré-entraînement : c'est le
domaine du fine-tuning du cours.

| split | fichiers | octets (UTF-8) |
|---|---|---|
{split_rows}

## Entraînement

AdamW (β = 0,9/0,95, weight decay {cfg["weight_decay"]}), lr {cfg["lr"]} avec {cfg["warmup_steps"]} pas de warmup puis
décroissance cosinus jusqu'à {cfg["lr"] * cfg["min_lr_ratio"]:.0e}, lots de {cfg["batch_size"]} × {cfg["seq_len"]} tokens, autocast bf16,
graine {cfg["seed"]}. **{summary["steps"]} pas, {summary["tokens_seen"]:,} tokens, {summary["train_seconds"] / 60:.1f} minutes** sur
{summary["hardware"]} (2 cœurs partagés avec d'autres tâches : le temps est celui de l'horloge).

![Courbe de perte](loss_curve.png)

| pas | tokens vus | minutes | perte train (nats/token) | validation (nats/token) | validation (bits/octet) |
|---|---|---|---|---|---|
{curve_rows}

## Qualité sur le split de validation complet

| chargement | bits par octet |
|---|---|
| bf16 | {quality["bf16"]:.3f} |
| NF4 + double quantification (`load_model()`) | {quality["nf4"]:.3f} |

Bits par octet = somme des −ln p(token) sur le texte / ln 2 / octets UTF-8 du texte
(`qlora_lab/model/validation.py`), indépendant du tokenizer.

## Exemples de génération (gloutonne)

{samples}

## Reproduire

```bash
{summary["command"] or "qlora-lab pretrain --steps " + str(summary["steps"])}
```

Avec `--steps` seul, l'entraînement est déterministe (même machine, même nombre de
threads). Le modèle livré a été entraîné avec `--max-minutes`, qui fait décroître le
taux d'apprentissage selon l'horloge : pour le reproduire à l'identique, utilisez
`--steps {summary["steps"]}` (les pas effectués), sans `--max-minutes`.
"""


def write_model_card(model_dir: Path) -> dict[str, float]:
    """Measure bf16/NF4 quality and write README.md next to the model; returns the quality."""
    summary = json.loads((model_dir / "training_summary.json").read_text())
    curve = json.loads((model_dir / "curve.json").read_text())
    quality = summary.get("quality_bits_per_byte") or measure_quality(model_dir)
    summary["quality_bits_per_byte"] = quality
    (model_dir / "training_summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    size_mib = sum(p.stat().st_size for p in model_dir.iterdir() if p.name != "README.md") / 2**20
    (model_dir / "README.md").write_text(model_card(summary, curve, quality, size_mib), encoding="utf-8")
    return quality
