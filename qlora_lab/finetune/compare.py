"""`qlora-lab compare`: full fine-tuning vs LoRA vs QLoRA, measured on the same data and steps.

    qlora-lab compare --max-steps 20 --output-dir runs/compare            # embedded model
    qlora-lab compare --shape codellama-7b --random-init --output-dir runs/7b   # GPU scale

Each mode runs in its own process, so that its peak memory is its own (on CPU the peak
RSS of a process cannot be reset). Writes compare.json and compare.md in output_dir.
The random-init path builds CodeLlama-7B's shape with random weights (no download) and
times one training step at seq 512, batch 1, gradient checkpointing; an out-of-memory
error is recorded as a result.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from qlora_lab.finetune.config import MODES, FinetuneConfig
from qlora_lab.finetune.launch import finetune_in_subprocess, run_captured
from qlora_lab.model.llama_shapes import CODELLAMA, LLAMA_ALL_LINEAR, ModelShape

# Random-init shapes: CodeLlama-7B's own, and a tiny one that a CPU trains in seconds.
SHAPES = {"codellama-7b": CODELLAMA["7B"], "tiny": ModelShape("tiny", 256, 704, 2, 4, 4, 32016)}
COLUMNS = ("mode", "peak_memory_mb", "s_per_step", "tokens_per_s", "val_loss_before", "val_loss_after", "trainable_params")


def run_worker(args: list[str], timeout: float | None = None) -> dict:
    """`python ARGS` in a fresh process (its own peak memory), whose last stdout line is JSON."""
    return json.loads(run_captured([sys.executable, *args], timeout=timeout).strip().splitlines()[-1])


def compare_modes(modes: tuple[str, ...] = MODES, steps: int = 20, output_dir: str | Path = "runs/compare",
                  **overrides) -> list[dict]:
    """Fine-tune the same model on the same data with each mode; one row per mode.

    overrides: other FinetuneConfig fields, e.g. data="instructions", seq_len=128.
    """
    from tqdm.auto import tqdm

    output_dir = Path(output_dir)
    unknown = set(modes) - set(MODES)
    if unknown:
        raise ValueError(f"modes {sorted(unknown)} unknown: choose among {MODES}")
    # every setting checked before the first run; a new comparison replaces the previous one's runs
    configs = [FinetuneConfig(mode=mode, max_steps=steps, output_dir=str(output_dir / mode), overwrite=True,
                              **overrides) for mode in modes]
    rows = []
    for config in tqdm(configs, desc="modes comparés", unit="mode"):
        summary = finetune_in_subprocess(config)["summary"]
        rows.append({k: summary[k] for k in COLUMNS} | {"device": summary["device"], "memory_kind": summary["memory_kind"]})
    write_tables(rows, output_dir, title=f"Embedded model, {steps} steps")
    return rows


# --- random-init shapes: one training step, measured -----------------------------------------

def build_random_model(shape: str | ModelShape, mode: str, device: torch.device | str = "cpu", seed: int | None = None):
    """A Llama of `shape` (a ModelShape or a SHAPES name) with random bf16 weights, no download;
    for qlora its block linears become NF4+DQ. The one builder of the random-init benchmarks."""
    from transformers import LlamaConfig, LlamaForCausalLM

    spec = SHAPES[shape] if isinstance(shape, str) else shape
    config = LlamaConfig(**spec.llama_config_kwargs(), max_position_embeddings=4096)
    if seed is not None:
        torch.manual_seed(seed)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(previous)
    if mode == "qlora":
        quantize_block_linears(model, torch.device(device))
    return model


def quantize_block_linears(model, device: torch.device) -> None:
    """Replace every linear layer of the blocks by a bitsandbytes NF4 Linear4bit, one at a time."""
    from qlora_lab.backends import import_bnb
    from qlora_lab.model.models import make_4bit_training_safe

    bnb = import_bnb()
    for block in model.model.layers:
        for name, child in list(block.named_modules()):
            for attr, linear in list(child.named_children()):
                if isinstance(linear, torch.nn.Linear):
                    q = bnb.nn.Linear4bit(linear.in_features, linear.out_features, bias=False,
                                          compute_dtype=torch.bfloat16, quant_type="nf4", compress_statistics=True)
                    q.weight = bnb.nn.Params4bit(linear.weight.data.cpu(), requires_grad=False, quant_type="nf4",
                                                 compress_statistics=True)
                    setattr(child, attr, q.to(device))
                    del linear
    make_4bit_training_safe(model)


def measure_training_step(shape: str, mode: str, seq_len: int = 512, steps: int = 2) -> dict:
    """Peak memory and tokens/s of `steps` training steps (after one warm-up step)."""
    from peft import LoraConfig, get_peft_model

    from qlora_lab.hardware.device import default_device
    from qlora_lab.hardware.measured_memory import peak_memory_mb, reset_peak_memory

    device = default_device()
    row = {"shape": shape, "mode": mode, "seq_len": seq_len, "batch_size": 1, "device": str(device),
           "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"}
    try:
        model = build_random_model(shape, mode, device)
        model.gradient_checkpointing_enable()
        model.config.use_cache = False
        if mode == "full":
            params = list(model.parameters())
        else:
            model.enable_input_require_grads()
            model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules=list(LLAMA_ALL_LINEAR),
                                                     task_type="CAUSAL_LM"))
            params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=1e-4)
        ids = torch.randint(0, SHAPES[shape].vocab, (1, seq_len), device=device)
        reset_peak_memory(device)
        times = []
        for i in range(steps + 1):
            t0 = time.perf_counter()
            with torch.autocast(device.type, dtype=torch.bfloat16):
                loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if i:
                times.append(time.perf_counter() - t0)
        s_per_step = sum(times) / len(times)
        row |= {"oom": False, "peak_memory_mb": peak_memory_mb(device), "s_per_step": s_per_step,
                "tokens_per_s": seq_len / s_per_step, "trainable_params": sum(p.numel() for p in params)}
    except torch.OutOfMemoryError as error:
        row |= {"oom": True, "error": str(error).splitlines()[0]}
    return row


def compare_shapes(shape: str, modes: tuple[str, ...] = ("qlora", "lora", "full"), seq_len: int = 512,
                   output_dir: str | Path = "runs/compare-shape") -> list[dict]:
    """`measure_training_step` for each mode, each in its own process."""
    if shape not in SHAPES:
        raise ValueError(f"shape={shape!r}: choose one of {sorted(SHAPES)}")
    if shape != "tiny" and not torch.cuda.is_available():
        print(f"No GPU here: {shape} would need tens of GB; measuring the 'tiny' shape instead.")
        shape = "tiny"
    rows = [run_worker(["-m", "qlora_lab.finetune.compare", "--worker", mode, "--shape", shape, "--seq-len", str(seq_len)])
            for mode in modes]
    write_tables(rows, Path(output_dir), title=f"{shape}, random init, seq {seq_len}, batch 1, gradient checkpointing")
    return rows


# --- output ------------------------------------------------------------------------------

def markdown_table(rows: list[dict]) -> str:
    keys = [k for k in ("mode", "oom", "peak_memory_mb", "s_per_step", "tokens_per_s", "val_loss_before",
                        "val_loss_after", "trainable_params", "device_name") if any(k in r for r in rows)]
    fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(fmt(r.get(k, "")) for k in keys) + " |" for r in rows]
    return "\n".join(lines)


def write_tables(rows: list[dict], output_dir: Path, title: str) -> None:
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "compare.json").write_text(json.dumps({"title": title, "rows": rows}, indent=2))
    (output_dir / "compare.md").write_text(f"# {title}\n\n{markdown_table(rows)}\n")


if __name__ == "__main__":  # worker: python -m qlora_lab.finetune.compare --worker MODE --shape S
    worker = argparse.ArgumentParser()
    worker.add_argument("--worker", choices=MODES, required=True)
    worker.add_argument("--shape", choices=sorted(SHAPES), required=True)
    worker.add_argument("--seq-len", type=int, default=512)
    a = worker.parse_args()
    print(json.dumps(measure_training_step(a.shape, a.worker, a.seq_len)))
