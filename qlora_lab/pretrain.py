"""`qlora-lab pretrain`: train the mini CodeLlama from scratch on the Python stdlib, on CPU.

    qlora-lab pretrain --output-dir runs/mini-codellama --steps 3000
    qlora-lab pretrain --max-minutes 3 --output-dir runs/quick     # a quick, smaller run

Same architecture as CodeLlama (`LlamaForCausalLM`: RMSNorm, RoPE, SwiGLU, no biases),
scaled down. Seeded and deterministic for a given `--steps` (on the same hardware and
thread count); `--max-minutes` is a safety cap that anneals the learning rate on the
clock instead, so a capped run is not bit-reproducible: reproduce with its `--steps`.
Writes to the output directory: the Hugging Face model directory (bf16 safetensors,
tokenizer), `curve.json`, `curve.csv`, `loss_curve.png` and `training_summary.json`.
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import math
import platform
import shlex
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from qlora_lab import corpus
from qlora_lab._bnb import quiet_bnb_logs
from qlora_lab.packing import batches, concatenate, pack_stream, tokenize_documents

# Every Linear's out_features must be a multiple of 32 for bitsandbytes' 4-bit CPU eval
# kernels, and hidden/intermediate sizes multiples of 64 for its CPU blocks.
SIZE_MULTIPLE = 64


@dataclass
class PretrainConfig:
    """Model and optimisation settings (defaults: the shipped model)."""

    vocab_size: int = 8192
    hidden_size: int = 320
    intermediate_size: int = 896  # ~2.8x hidden, as SwiGLU models use 8/3 x
    num_hidden_layers: int = 6
    num_attention_heads: int = 5  # head_dim 64
    seq_len: int = 256
    batch_size: int = 8  # sequences per step: 2048 tokens (more steps beat bigger batches at this budget)
    lr: float = 2e-3
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    warmup_steps: int = 100
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    steps: int = 3000
    max_minutes: float | None = None
    eval_every: int = 250
    seed: int = 0
    threads: int = 2
    autocast_bf16: bool = True  # ~1.5x faster than fp32 on CPU

    def check(self) -> None:
        """Raise ValueError for sizes the 4-bit kernels or the architecture cannot take."""
        for name in ("hidden_size", "intermediate_size"):
            if getattr(self, name) % SIZE_MULTIPLE:
                raise ValueError(f"{name}={getattr(self, name)} must be a multiple of {SIZE_MULTIPLE}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size={self.hidden_size} is not divisible by num_attention_heads={self.num_attention_heads}")
        if self.steps < 1 or self.warmup_steps < 0:
            raise ValueError(f"steps={self.steps} must be >= 1 and warmup_steps={self.warmup_steps} >= 0")


def llama_config(cfg: PretrainConfig, tokenizer):
    """The `transformers.LlamaConfig` of the mini CodeLlama."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_attention_heads,
        max_position_embeddings=cfg.seq_len,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,  # saves vocab x hidden parameters in a model this small
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def learning_rate(progress: float, step: int, cfg: PretrainConfig) -> float:
    """Linear warmup over warmup_steps, then cosine from lr to lr * min_lr_ratio; progress in [0, 1]."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    cosine = 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * cosine)


def make_optimizer(model, cfg: PretrainConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (not on norms), as nanoGPT does."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.95), eps=1e-8)


def train_windows(tokenizer, seq_len: int, epoch: int) -> torch.Tensor:
    """The train split packed into windows; the cut points move with the epoch."""
    if not hasattr(train_windows, "_stream"):
        train_windows._stream = concatenate(tokenize_documents(tokenizer, corpus.read_texts("train")))
    offset = (epoch * 97) % seq_len  # 97: coprime with powers of two, so cuts differ each epoch
    return pack_stream(train_windows._stream, seq_len, offset)


def sample_generations(model, tokenizer, prompts: list[str], max_new_tokens: int = 48) -> list[str]:
    """Greedy completions of `prompts` (for the model card and the log)."""
    outputs = []
    model.eval()
    with torch.no_grad():
        for prompt in prompts:
            ids = tokenizer(prompt, return_tensors="pt")
            out = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id)
            outputs.append(tokenizer.decode(out[0], skip_special_tokens=True))
    return outputs


# No trailing newline: "\n" + indentation is one token, so the model should choose it.
SAMPLE_PROMPTS = ["def fibonacci(n):", "import os\n\n\ndef list_python_files(path):", "class Stack:\n    def __init__(self):"]


def write_curve(curve: list[dict], output_dir: Path) -> None:
    """curve.json, curve.csv and loss_curve.png (train loss and validation bits/byte)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    (output_dir / "curve.json").write_text(json.dumps(curve, indent=1) + "\n")
    with open(output_dir / "curve.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(curve[-1].keys()))
        writer.writeheader()
        writer.writerows(curve)
    evals = [row for row in curve if row.get("val_bits_per_byte") is not None]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.5))
    ax1.plot([r["step"] for r in curve], [r["train_nats_per_token"] for r in curve], label="train")
    ax1.plot([r["step"] for r in evals], [r["val_nats_per_token"] for r in evals], "o-", label="validation")
    ax1.set(xlabel="step", ylabel="loss (nats/token)", title="Loss")
    ax1.legend()
    ax2.plot([r["step"] for r in evals], [r["val_bits_per_byte"] for r in evals], "o-", color="C1")
    ax2.set(xlabel="step", ylabel="bits per byte", title="Validation (stdlib, held-out files)")
    fig.tight_layout()
    fig.savefig(output_dir / "loss_curve.png", dpi=100)
    plt.close(fig)


def cpu_name() -> str:
    """The CPU model as Linux reports it (platform.processor() is often empty there)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def save_model(model, tokenizer, output_dir: Path):
    """Save `model` in bf16 (half the file size; converted in place) with its tokenizer."""
    from transformers import GenerationConfig

    from qlora_lab.tokenization import save_tokenizer

    model = model.to(torch.bfloat16)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, max_new_tokens=64, do_sample=False,
    )
    model.save_pretrained(str(output_dir))
    save_tokenizer(tokenizer, output_dir)
    return model


def pretrain(cfg: PretrainConfig, output_dir: Path, tokenizer_dir: Path | None = None,
             init_from: Path | None = None) -> dict:
    """Train, evaluate and save the model; returns the training summary.

    `init_from` continues from a saved model directory (weights and tokenizer; a fresh
    optimizer and schedule): a second training phase.
    """
    from tqdm.auto import tqdm
    from transformers import LlamaForCausalLM

    from qlora_lab.tokenization import load_tokenizer, train_tokenizer
    from qlora_lab.validation import evaluate_texts

    cfg.check()
    quiet_bnb_logs()  # transformers may import bitsandbytes lazily during training
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    output_dir.mkdir(parents=True, exist_ok=True)
    if init_from is not None or tokenizer_dir is not None:
        tokenizer = load_tokenizer(tokenizer_dir or init_from)
    else:
        tokenizer = train_tokenizer(vocab_size=cfg.vocab_size, model_max_length=cfg.seq_len)
    if len(tokenizer) > cfg.vocab_size:
        raise ValueError(f"the tokenizer has {len(tokenizer)} tokens but vocab_size={cfg.vocab_size}")
    if init_from is not None:
        model = LlamaForCausalLM.from_pretrained(str(init_from), dtype=torch.float32)
        wanted = llama_config(cfg, tokenizer)
        sizes = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                 "num_attention_heads", "max_position_embeddings")
        if any(getattr(model.config, k) != getattr(wanted, k) for k in sizes):
            raise ValueError(f"--init-from {init_from}: its sizes differ from the requested ones ({sizes})")
    else:
        model = LlamaForCausalLM(llama_config(cfg, tokenizer))
    n_params = sum(p.numel() for p in model.parameters())
    optimizer = make_optimizer(model, cfg)
    val_texts = corpus.read_texts("validation")
    generator = torch.Generator().manual_seed(cfg.seed)

    curve: list[dict] = []
    epoch, step, tokens_seen = 0, 0, 0
    start = time.perf_counter()
    max_seconds = cfg.max_minutes * 60 if cfg.max_minutes else math.inf
    bar = tqdm(total=cfg.steps, desc="pretrain", unit="step", mininterval=5)
    running = None
    while step < cfg.steps:
        for batch in batches(train_windows(tokenizer, cfg.seq_len, epoch), cfg.batch_size, generator):
            elapsed = time.perf_counter() - start
            if step >= cfg.steps or elapsed > max_seconds:
                break
            lr = learning_rate(max(step / cfg.steps, elapsed / max_seconds), step, cfg)
            for group in optimizer.param_groups:
                group["lr"] = lr
            model.train()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.autocast_bf16):
                loss = model(input_ids=batch, labels=batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            tokens_seen += batch.numel()
            running = loss.item() if running is None else 0.9 * running + 0.1 * loss.item()
            bar.update(1)
            bar.set_postfix(loss=f"{running:.3f}", lr=f"{lr:.2e}")
            last = step == cfg.steps
            if step % cfg.eval_every == 0 or last or step == 1:
                row = {"step": step, "tokens": tokens_seen, "elapsed_s": round(time.perf_counter() - start, 1),
                       "lr": lr, "train_nats_per_token": round(running, 4),
                       "val_nats_per_token": None, "val_bits_per_byte": None}
                if step % cfg.eval_every == 0 or last:
                    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.autocast_bf16):
                        report = evaluate_texts(model, tokenizer, val_texts, seq_len=cfg.seq_len)
                    row["val_nats_per_token"] = round(report.nats_per_token, 4)
                    row["val_bits_per_byte"] = round(report.bits_per_byte, 4)
                    bar.write(f"step {step}: val {report.nats_per_token:.3f} nats/token, {report.bits_per_byte:.3f} bits/byte")
                curve.append(row)
                write_curve(curve, output_dir)
                if row["val_bits_per_byte"] is not None:  # a loadable checkpoint at every evaluation
                    save_model(copy.deepcopy(model), tokenizer, output_dir)
        else:
            epoch += 1
            continue
        break
    bar.close()
    train_seconds = time.perf_counter() - start
    if curve[-1]["step"] != step or curve[-1]["val_bits_per_byte"] is None:  # stopped by the clock
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.autocast_bf16):
            report = evaluate_texts(model, tokenizer, val_texts, seq_len=cfg.seq_len)
        curve.append({"step": step, "tokens": tokens_seen, "elapsed_s": round(train_seconds, 1), "lr": lr,
                      "train_nats_per_token": round(running, 4),
                      "val_nats_per_token": round(report.nats_per_token, 4),
                      "val_bits_per_byte": round(report.bits_per_byte, 4)})
        write_curve(curve, output_dir)

    model = save_model(model, tokenizer, output_dir)
    summary = {
        "config": asdict(cfg), "parameters": n_params, "steps": step, "epochs_started": epoch + 1,
        "tokens_seen": tokens_seen, "train_seconds": round(train_seconds, 1),
        "final_val_nats_per_token": curve[-1]["val_nats_per_token"],
        "final_val_bits_per_byte": curve[-1]["val_bits_per_byte"],
        "python_stdlib_version": corpus.python_version(), "corpus": corpus.split_summary(),
        "hardware": f"{cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
        "command": "qlora-lab pretrain " + " ".join(shlex.quote(a) for a in sys.argv[2:]) if sys.argv[1:2] == ["pretrain"] else None,
        "samples": dict(zip(SAMPLE_PROMPTS, sample_generations(model, tokenizer, SAMPLE_PROMPTS))),
    }
    (output_dir / "training_summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def measure_quality(model_dir: Path) -> dict[str, float]:
    """Validation bits/byte of the saved model, in bf16 and reloaded in NF4 (whole split)."""
    from qlora_lab.models import load_model
    from qlora_lab.validation import evaluate_texts

    texts = corpus.read_texts("validation")
    quality = {}
    for quantization in ("none", "nf4"):
        model, tokenizer = load_model(model_dir, quantization=quantization, compute_dtype=torch.bfloat16)
        quality["bf16" if quantization == "none" else quantization] = round(evaluate_texts(model, tokenizer, texts).bits_per_byte, 4)
    return quality


def model_card(summary: dict, curve: list[dict], quality: dict[str, float], size_mb: float) -> str:
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
# ou, en NF4 : from qlora_lab.models import load_model; model, tokenizer = load_model()
```

## Configuration

| paramètre | valeur |
|---|---|
| paramètres | {summary["parameters"]:,} (embeddings d'entrée et de sortie partagés) |
| couches × dimension | {cfg["num_hidden_layers"]} × {cfg["hidden_size"]} ({cfg["num_attention_heads"]} têtes de 64) |
| MLP SwiGLU (intermediate_size) | {cfg["intermediate_size"]} |
| contexte | {cfg["seq_len"]} tokens |
| tokenizer | BPE au niveau de l'octet, {cfg["vocab_size"]} tokens (`<unk>`, `<s>`, `</s>`, `<pad>` = 0..3) |
| poids | bf16, `model.safetensors`, {size_mb:.1f} Mo pour tout le dossier |

`hidden_size` et `intermediate_size` sont des multiples de 64 : les noyaux CPU 4 bits de
bitsandbytes l'exigent (et chaque `out_features` est divisible par 32).

## Données

Bibliothèque standard de Python {summary["python_stdlib_version"]}, sans les suites de tests, `idlelib`,
`tkinter`, `lib2to3`, `turtledemo`, `ensurepip` ni `site-packages` (`qlora_lab/corpus.py`).
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
(`qlora_lab/validation.py`), indépendant du tokenizer.

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
    size_mb = sum(p.stat().st_size for p in model_dir.iterdir() if p.name != "README.md") / 2**20
    (model_dir / "README.md").write_text(model_card(summary, curve, quality, size_mb), encoding="utf-8")
    return quality


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Options of `qlora-lab pretrain` (defaults: the shipped model's settings)."""
    defaults = PretrainConfig()
    parser.add_argument("--output-dir", type=Path, default=Path("runs/mini-codellama"))
    parser.add_argument("--tokenizer", type=Path, default=None, help="reuse a saved tokenizer instead of training one")
    parser.add_argument("--init-from", type=Path, default=None,
                        help="start from a saved model directory (a second phase; fresh optimizer and schedule)")
    for name, value in asdict(defaults).items():
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=value)
        elif name == "max_minutes":
            parser.add_argument(flag, type=float, default=None, help="stop (and anneal) on the clock")
        else:
            parser.add_argument(flag, type=type(value), default=value)


def run(args: argparse.Namespace) -> int:
    """Entry point of `qlora-lab pretrain`."""
    fields = PretrainConfig.__dataclass_fields__
    cfg = PretrainConfig(**{name: getattr(args, name) for name in fields})
    summary = pretrain(cfg, args.output_dir, args.tokenizer, args.init_from)
    write_model_card(args.output_dir)
    print(f"{summary['parameters']:,} parameters, {summary['steps']} steps in {summary['train_seconds']:.0f} s: "
          f"validation {summary['final_val_bits_per_byte']:.3f} bits/byte -> {args.output_dir}")
    return 0
