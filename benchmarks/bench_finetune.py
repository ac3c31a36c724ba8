"""Benchmark: QLoRA vs 16-bit LoRA on the embedded model, on this machine (not a test).

    .venv/bin/python benchmarks/bench_finetune.py [--steps 60] [--seconds 120]

Prints and saves (benchmarks/results/bench_finetune_<device>.json):
  1. s/step of QLoRA and bf16 LoRA on the same data and steps, each in its own process;
  2. a QLoRA fine-tune cut at --seconds of training: how far it lowers the domain
     validation loss (the issue's targets: ratio <= 1.3, drop >= 0.1 nats in <= 120 s).
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

from qlora_lab.finetune.compare import compare_modes
from qlora_lab.paths import BENCHMARK_RESULTS_DIR
from qlora_lab.hardware.sysinfo import cpu_model_and_flags

SPEED = dict(batch_size=8, seq_len=128, eval_examples=8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20, help="steps per mode for the speed ratio")
    parser.add_argument("--quality-steps", type=int, default=60)
    parser.add_argument("--output-dir", default="runs/bench_finetune")
    args = parser.parse_args()
    load_1min = os.getloadavg()[0]  # other work on the machine skews timings

    rows = compare_modes(("lora", "qlora"), steps=args.steps, output_dir=f"{args.output_dir}/speed", **SPEED)
    lora, qlora = rows
    ratio = qlora["s_per_step"] / lora["s_per_step"]

    from qlora_lab.finetune.config import FinetuneConfig
    from qlora_lab.finetune.loop import finetune

    t0 = time.perf_counter()
    result = finetune(FinetuneConfig(mode="qlora", max_steps=args.quality_steps, learning_rate=5e-3,
                                     output_dir=f"{args.output_dir}/quality", overwrite=True, **SPEED))
    wall = time.perf_counter() - t0
    s = result.summary
    report = {
        "device": s["device"], "cpu": cpu_model_and_flags()[0], "load_avg_1min_at_start": load_1min, "threads": torch.get_num_threads(),
        "lora_s_per_step": lora["s_per_step"], "qlora_s_per_step": qlora["s_per_step"], "qlora_over_lora": ratio,
        "quality_steps": args.quality_steps, "quality_train_s": s["s_per_step"] * s["steps"], "quality_wall_s": wall,
        "val_loss_before": s["val_loss_before"], "val_loss_after": s["val_loss_after"],
        "val_loss_drop": s["val_loss_before"] - s["val_loss_after"],
    }
    for key, value in report.items():
        print(f"{key:>18}: {value:.4g}" if isinstance(value, float) else f"{key:>18}: {value}")
    BENCHMARK_RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    out = BENCHMARK_RESULTS_DIR / f"bench_finetune_{s['device']}.json"
    out.write_text(json.dumps(report, indent=2))
    print(f"saved {out}")


if __name__ == "__main__":
    main()
