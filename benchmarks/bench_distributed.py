"""Benchmark: one process against N data-parallel processes, same global batch (not a test).

    .venv/bin/python benchmarks/bench_distributed.py [--processes 2] [--steps 20]
    .venv/bin/python benchmarks/bench_distributed.py --fsdp      # GPU only: FSDP-QLoRA, bf16 4-bit storage

Each run is `qlora-lab finetune` in its own process tree (the N-process one through
`accelerate launch`). Saves benchmarks/results/bench_distributed_<device>.json: s/step,
tokens/s, peak memory of the main process, validation loss, and how far the N-process
adapter is from the single-process one (relative norm of the LoRA B difference).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch

from qlora_lab.finetune.launch import ACCELERATE_CONFIGS, finetune_in_subprocess
from qlora_lab.finetune.adapters import lora_update_distance
from qlora_lab.finetune.config import FinetuneConfig
from qlora_lab.finetune.rundir import ADAPTER_DIR
from qlora_lab.paths import BENCHMARK_RESULTS_DIR
from qlora_lab.hardware.sysinfo import cpu_model_and_flags

RUN = dict(seq_len=128, eval_examples=16, lora_dropout=0.0, learning_rate=2e-3)


def finetune_process(config: FinetuneConfig, num_processes: int | None = None, config_file=None) -> dict:
    run = finetune_in_subprocess(config, num_processes, config_file)
    return run["summary"] | {"wall_s": run["wall_s"]}


def distance(run_a: Path, run_b: Path) -> float:
    return lora_update_distance(run_a / ADAPTER_DIR, run_b / ADAPTER_DIR)


def keep(summary: dict) -> dict:
    keys = ("num_processes", "distributed", "global_batch", "s_per_step", "tokens_per_s", "peak_memory_mb",
            "memory_kind", "val_loss_before", "val_loss_after", "wall_s", "device")
    return {k: summary[k] for k in keys}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--global-batch", type=int, default=8)
    parser.add_argument("--fsdp", action="store_true", help="GPU: one FSDP-QLoRA process (bf16 4-bit storage)")
    parser.add_argument("--output-dir", default="runs/bench_distributed")
    args = parser.parse_args()
    if args.global_batch % args.processes:
        parser.error(f"--global-batch {args.global_batch} is not divisible by --processes {args.processes}")
    load_1min = os.getloadavg()[0]
    out = Path(args.output_dir)
    base = dict(max_steps=args.steps, overwrite=True, **RUN)  # a new benchmark replaces the previous runs

    single = finetune_process(FinetuneConfig(batch_size=args.global_batch, output_dir=str(out / "single"), **base))
    report = {"device": single["device"], "cpu": cpu_model_and_flags()[0], "load_avg_1min_at_start": load_1min, "steps": args.steps,
              "single": keep(single)}
    if torch.cuda.is_available():
        report["gpu"] = torch.cuda.get_device_name()
    if args.fsdp:
        fsdp = finetune_process(
            FinetuneConfig(batch_size=args.global_batch, quant_storage="bf16", output_dir=str(out / "fsdp"), **base),
            num_processes=1, config_file=ACCELERATE_CONFIGS / "fsdp_qlora.yaml")
        report["fsdp"] = keep(fsdp) | {"lora_b_distance_to_single": distance(out / "fsdp", out / "single")}
    else:
        multi = finetune_process(
            FinetuneConfig(batch_size=args.global_batch // args.processes, output_dir=str(out / "multi"), **base),
            num_processes=args.processes)
        report["multi"] = keep(multi) | {"lora_b_distance_to_single": distance(out / "multi", out / "single")}
    print(json.dumps(report, indent=2))
    BENCHMARK_RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    name = f"bench_distributed_{'fsdp_' if args.fsdp else ''}{single['device'].split(':')[0]}.json"
    (BENCHMARK_RESULTS_DIR / name).write_text(json.dumps(report, indent=2))
    print(f"saved {BENCHMARK_RESULTS_DIR / name}")


if __name__ == "__main__":
    main()
