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

import copy
import csv
import json
import math
import shlex
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from qlora_lab.model import corpus
from qlora_lab.backends import quiet_bnb_logs
from qlora_lab.hardware.sysinfo import cpu_model_and_flags
from qlora_lab.model.packing import batches, concatenate, pack_stream, tokenize_documents

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

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
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


def save_model(model, tokenizer, output_dir: Path):
    """Save `model` in bf16 (half the file size; converted in place) with its tokenizer."""
    from transformers import GenerationConfig

    from qlora_lab.model.tokenization import save_tokenizer

    model = model.to(torch.bfloat16)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, max_new_tokens=64, do_sample=False,
    )
    model.save_pretrained(str(output_dir))
    save_tokenizer(tokenizer, output_dir)
    return model


@dataclass
class Progress:
    """Where pre-training stands; `curve` gets a row at step 1 and at every evaluation."""

    step: int = 0
    epoch: int = 0
    tokens_seen: int = 0
    lr: float = 0.0
    running_loss: float | None = None  # exponential moving average of the training loss
    curve: list[dict] = field(default_factory=list)
    started: float = field(default_factory=time.perf_counter)
    train_seconds: float = 0.0  # set when training stops (evaluations after it do not count)

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.started


def pretrain(cfg: PretrainConfig, output_dir: Path, tokenizer_dir: Path | None = None,
             init_from: Path | None = None) -> dict:
    """Train, evaluate and save the model; returns the training summary.

    `init_from` continues from a saved model directory (weights and tokenizer; a fresh
    optimizer and schedule): a second training phase.
    """
    cfg.validate()
    quiet_bnb_logs()  # transformers may import bitsandbytes lazily during training
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    output_dir.mkdir(parents=True, exist_ok=True)
    model, tokenizer = start_model(cfg, tokenizer_dir, init_from)
    n_params = sum(p.numel() for p in model.parameters())
    progress = train_until_done(model, tokenizer, cfg, output_dir)
    model = save_model(model, tokenizer, output_dir)
    summary = {
        "config": asdict(cfg), "parameters": n_params, "steps": progress.step, "epochs_started": progress.epoch + 1,
        "tokens_seen": progress.tokens_seen, "train_seconds": round(progress.train_seconds, 1),
        "final_val_nats_per_token": progress.curve[-1]["val_nats_per_token"],
        "final_val_bits_per_byte": progress.curve[-1]["val_bits_per_byte"],
        "python_stdlib_version": corpus.python_version(), "corpus": corpus.split_summary(),
        "hardware": f"{cpu_model_and_flags()[0]}, {torch.get_num_threads()} threads, torch {torch.__version__}",
        "command": "qlora-lab pretrain " + " ".join(shlex.quote(a) for a in sys.argv[2:]) if sys.argv[1:2] == ["pretrain"] else None,
        "samples": dict(zip(SAMPLE_PROMPTS, sample_generations(model, tokenizer, SAMPLE_PROMPTS))),
    }
    (output_dir / "training_summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def start_model(cfg: PretrainConfig, tokenizer_dir: Path | None, init_from: Path | None):
    """(model, tokenizer): trained or loaded tokenizer; a fresh model, or the one in `init_from`."""
    from transformers import LlamaForCausalLM

    from qlora_lab.model.tokenization import load_tokenizer, train_tokenizer

    if init_from is not None or tokenizer_dir is not None:
        tokenizer = load_tokenizer(tokenizer_dir or init_from)
    else:
        tokenizer = train_tokenizer(vocab_size=cfg.vocab_size, model_max_length=cfg.seq_len)
    if len(tokenizer) > cfg.vocab_size:
        raise ValueError(f"the tokenizer has {len(tokenizer)} tokens but vocab_size={cfg.vocab_size}")
    if init_from is None:
        return LlamaForCausalLM(llama_config(cfg, tokenizer)), tokenizer
    model = LlamaForCausalLM.from_pretrained(str(init_from), dtype=torch.float32)
    wanted = llama_config(cfg, tokenizer)
    sizes = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
             "num_attention_heads", "max_position_embeddings")
    if any(getattr(model.config, k) != getattr(wanted, k) for k in sizes):
        raise ValueError(f"--init-from {init_from}: its sizes differ from the requested ones ({sizes})")
    return model, tokenizer


def train_until_done(model, tokenizer, cfg: PretrainConfig, output_dir: Path) -> Progress:
    """Epochs of shuffled windows until `cfg.steps` steps or `cfg.max_minutes`, evaluating as it goes."""
    from tqdm.auto import tqdm

    optimizer = make_optimizer(model, cfg)
    val_texts = corpus.read_texts("validation")
    generator = torch.Generator().manual_seed(cfg.seed)
    progress = Progress()
    max_seconds = cfg.max_minutes * 60 if cfg.max_minutes else math.inf
    bar = tqdm(total=cfg.steps, desc="pré-entraînement", unit="pas", mininterval=5)
    while progress.step < cfg.steps and progress.elapsed <= max_seconds:
        for batch in batches(train_windows(tokenizer, cfg.seq_len, progress.epoch), cfg.batch_size, generator):
            if progress.step >= cfg.steps or progress.elapsed > max_seconds:
                break
            progress.lr = learning_rate(max(progress.step / cfg.steps, progress.elapsed / max_seconds), progress.step, cfg)
            train_step(model, optimizer, batch, progress, cfg)
            bar.update(1)
            bar.set_postfix(loss=f"{progress.running_loss:.3f}", lr=f"{progress.lr:.2e}", refresh=False)
            last = progress.step == cfg.steps
            if progress.step % cfg.eval_every == 0 or last or progress.step == 1:
                evaluated = progress.step % cfg.eval_every == 0 or last
                row = record(progress, model, tokenizer, val_texts, cfg, evaluated)
                write_curve(progress.curve, output_dir)
                if evaluated:  # a loadable checkpoint at every evaluation
                    bar.write(f"step {progress.step}: val {row['val_nats_per_token']:.3f} nats/token, "
                              f"{row['val_bits_per_byte']:.3f} bits/byte")
                    save_model(copy.deepcopy(model), tokenizer, output_dir)
        else:
            progress.epoch += 1
    bar.close()
    progress.train_seconds = progress.elapsed
    if progress.curve[-1]["step"] != progress.step or progress.curve[-1]["val_bits_per_byte"] is None:
        record(progress, model, tokenizer, val_texts, cfg, evaluated=True)  # stopped by the clock
        progress.curve[-1]["elapsed_s"] = round(progress.train_seconds, 1)
        write_curve(progress.curve, output_dir)
    return progress


def train_step(model, optimizer, batch: torch.Tensor, progress: Progress, cfg: PretrainConfig) -> None:
    """One optimizer step at `progress.lr`; updates the step, token count and running loss."""
    for group in optimizer.param_groups:
        group["lr"] = progress.lr
    model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.autocast_bf16):
        loss = model(input_ids=batch, labels=batch).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    progress.step += 1
    progress.tokens_seen += batch.numel()
    loss = loss.item()
    progress.running_loss = loss if progress.running_loss is None else 0.9 * progress.running_loss + 0.1 * loss


def record(progress: Progress, model, tokenizer, val_texts: list[str], cfg: PretrainConfig, evaluated: bool) -> dict:
    """Append a curve row: training loss so far, and the validation loss when `evaluated`."""
    from qlora_lab.model.validation import evaluate_texts

    row = {"step": progress.step, "tokens": progress.tokens_seen, "elapsed_s": round(progress.elapsed, 1),
           "lr": progress.lr, "train_nats_per_token": round(progress.running_loss, 4),
           "val_nats_per_token": None, "val_bits_per_byte": None}
    if evaluated:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.autocast_bf16):
            report = evaluate_texts(model, tokenizer, val_texts, seq_len=cfg.seq_len)
        row["val_nats_per_token"] = round(report.nats_per_token, 4)
        row["val_bits_per_byte"] = round(report.bits_per_byte, 4)
    progress.curve.append(row)
    return row
