"""Benchmark: chapter 8 on this device: the skill score before, the QLoRA fine-tune, the score after.

    .venv/bin/python benchmarks/skill_check.py                   # on the GPU when there is one
    .venv/bin/python benchmarks/skill_check.py --device cpu --small   # 2 steps, 4 problems: checks the path

pass@1 on held-out problems of the `functions` benchmark (`qlora_lab.finetune.functions_eval`)
for the embedded model, then chapter 8's fine-tune (`FinetuneConfig.for_data("functions")`), then
pass@1 again. Writes benchmarks/results/skill_<device>.json with the device name and timings.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default=None, help="default: cuda when available")
    parser.add_argument("--small", action="store_true", help="2 steps and 4 problems")
    parser.add_argument("--heldout", type=int, default=100)
    parser.add_argument("--out", help="JSON file (default benchmarks/results/skill_<device>.json)")
    args = parser.parse_args()
    if args.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # before torch initialises CUDA: the package then picks the CPU
    import torch

    from qlora_lab.finetune.config import FinetuneConfig
    from qlora_lab.finetune.functions_eval import score_functions
    from qlora_lab.finetune.functions_tasks import make_problems
    from qlora_lab.finetune.loop import finetune
    from qlora_lab.hardware.device import default_device
    from qlora_lab.model.models import load_model
    from qlora_lab.paths import BENCHMARK_RESULTS_DIR

    device = default_device()
    problems = make_problems("heldout", 4 if args.small else args.heldout)
    overrides = dict(max_steps=2, eval_examples=4, batch_size=2) if args.small else {}
    t0 = time.perf_counter()
    base, tokenizer = load_model(device=device)
    before = score_functions(base, tokenizer, problems, progress=False)
    score_s = time.perf_counter() - t0
    del base
    with tempfile.TemporaryDirectory(prefix="skill_check_") as tmp:
        config = FinetuneConfig.for_data("functions", output_dir=tmp, overwrite=True, **overrides)
        t0 = time.perf_counter()
        result = finetune(config)
        train_s = time.perf_counter() - t0
        after = score_functions(result.model, result.tokenizer, problems, progress=False)
    s = result.summary
    report = {
        "device": str(device), "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__, "load_avg_1min": os.getloadavg()[0], "small": args.small,
        "heldout_problems": len(problems), "steps": s["steps"], "mode": s["mode"],
        "pass_at_1_before": before.pass_at_1, "pass_at_1_after": after.pass_at_1,
        "passed_before": before.passed, "passed_after": after.passed,
        "val_loss_before": s["val_loss_before"], "val_loss_after": s["val_loss_after"],
        "s_per_step": s["s_per_step"], "finetune_wall_s": train_s, "base_score_wall_s": score_s,
        "peak_memory_mb": s["peak_memory_mb"], "memory_kind": s["memory_kind"],
    }
    out = Path(args.out) if args.out else BENCHMARK_RESULTS_DIR / f"skill_{device.type}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"{report['device_name']}: pass@1 {before.line()} -> {after.line()} after {s['steps']} steps "
          f"({train_s:.0f} s); saved {out}")


if __name__ == "__main__":
    main()
