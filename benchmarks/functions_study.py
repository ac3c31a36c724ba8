"""Benchmark: full fine-tuning vs 16-bit LoRA vs QLoRA on the `functions` skill, a fair study.

    nice -n 10 .venv/bin/python benchmarks/functions_study.py              # the whole study (long)
    .venv/bin/python benchmarks/functions_study.py --small                 # 2 steps, 4 problems: checks the path

Every run is chapter 8's fine-tune (`FinetuneConfig(data="functions", mode=...)`, its number of
steps), then pass@1 on held-out problems (never trained on) and the validation loss.
1. Seeds at each mode's prior rate (the middle of its grid; chapter 8's for the adapters).
2. Learning-rate sweep, seed 0: the other rates of each grid; the rate kept per mode is the
   one with the lowest *validation loss* (the held-out problems play no part in the choice);
   if it is not the prior, the other seeds run again at the kept rate.
Modes are interleaved (full, lora, qlora, full, ...) so that a change in machine load hits
every mode alike; the load average is saved per run. The most informative runs come first,
so an interrupted study still holds every mode at several seeds.
3. Memory: one accounted training step per mode (`qlora_lab.finetune.step_memory`), the same
   batch and sequence length as the runs (it depends on neither the seed nor the rate).
Results are rewritten after every run in benchmarks/results/functions_study_<device>.json
(runs already there are skipped: an interrupted study continues where it stopped).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import torch

from qlora_lab.finetune.config import FinetuneConfig
from qlora_lab.paths import BENCHMARK_RESULTS_DIR

MODES = ("full", "lora", "qlora")
# Grids around each mode's usual rate: full fine-tuning moves every weight, so it wants a
# rate ~10x below LoRA's (QLoRA paper appendix: 2e-4 for 7B adapters; small models take more).
# The adapters' middle rate is chapter 8's recipe (DATA_RECIPES['functions']: 5e-3).
LEARNING_RATES = {"full": (1e-4, 3e-4, 1e-3), "lora": (2e-3, 5e-3, 1e-2), "qlora": (2e-3, 5e-3, 1e-2)}
HELDOUT_PROBLEMS = 100


def one_run(mode: str, seed: int, learning_rate: float, heldout: int, output_dir: Path, **overrides) -> dict:
    """Chapter 8's fine-tune in `mode`, then pass@1 on `heldout` held-out problems."""
    from qlora_lab.finetune.functions_eval import score_functions
    from qlora_lab.finetune.functions_tasks import make_problems
    from qlora_lab.finetune.loop import finetune

    config = FinetuneConfig.for_data("functions", mode=mode, seed=seed, learning_rate=learning_rate,
                                     output_dir=str(output_dir / f"{mode}-{seed}-{learning_rate:g}"),
                                     overwrite=True, **overrides)
    load_before, t0 = os.getloadavg(), time.perf_counter()
    result = finetune(config)
    score = score_functions(result.model, result.tokenizer, make_problems("heldout", heldout), progress=False)
    s = result.summary
    return {"mode": mode, "seed": seed, "learning_rate": learning_rate, "steps": s["steps"],
            "pass_at_1": score.pass_at_1, "passed": score.passed, "total": score.total,
            "val_loss": s["val_loss_after"], "val_loss_before": s["val_loss_before"],
            "s_per_step": s["s_per_step"], "wall_s": time.perf_counter() - t0,
            "load_avg_1min_before": load_before[0], "load_avg_1min_after": os.getloadavg()[0]}


def mode_memory(mode: str, **overrides) -> dict:
    """Accounted peak of one training step of `mode` (bytes, with its breakdown)."""
    from qlora_lab.finetune.step_memory import config_step_memory

    config = FinetuneConfig.for_data("functions", mode=mode, **overrides)
    report = config_step_memory(config, "cuda" if torch.cuda.is_available() else "cpu")
    return {"peak_tensor_bytes": report.peak_bytes, "peak_breakdown": report.peak,
            "weights_by_dtype": report.weights_by_dtype}


def best_rate(runs: list[dict], mode: str, seed: int = 0) -> float:
    """The rate of `mode` with the lowest validation loss at `seed` (the sweep's seed)."""
    return min((r for r in runs if r["mode"] == mode and r["seed"] == seed), key=lambda r: r["val_loss"])["learning_rate"]


def plan(seeds: list[int], grids: dict[str, tuple[float, ...]]) -> list[tuple[str, int, float | None, str]]:
    """(mode, seed, rate or None for 'the kept one', phase), modes interleaved, most useful first."""
    prior = {m: g[len(g) // 2] for m, g in grids.items()}
    first = [(m, s, prior[m], "seeds") for s in seeds for m in MODES]
    sweep = [(m, seeds[0], lr, "sweep") for i in range(max(map(len, grids.values())))
             for m in MODES if i < len(grids[m]) and grids[m][i] != prior[m] for lr in [grids[m][i]]]
    return first + sweep + [(m, s, None, "seeds") for s in seeds[1:] for m in MODES]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--heldout", type=int, default=HELDOUT_PROBLEMS)
    parser.add_argument("--small", action="store_true", help="2 steps, 4 problems, one rate: checks the path")
    parser.add_argument("--out", help="JSON file (default benchmarks/results/functions_study_<device>.json)")
    args = parser.parse_args()
    overrides = dict(max_steps=2, eval_examples=4, batch_size=2) if args.small else {}
    grids = {m: g[1:2] for m, g in LEARNING_RATES.items()} if args.small else LEARNING_RATES
    heldout = 4 if args.small else args.heldout
    device = "cuda" if torch.cuda.is_available() else "cpu"
    out = Path(args.out) if args.out else BENCHMARK_RESULTS_DIR / f"functions_study_{device}.json"
    study = json.loads(out.read_text()) if out.is_file() else {}
    study |= {"device": device, "torch": torch.__version__, "threads": torch.get_num_threads(),
              "learning_rate_grids": grids, "heldout_problems": heldout, "selection": "lowest val_loss, seed 0",
              "config": {k: v for k, v in asdict(FinetuneConfig.for_data("functions", **overrides)).items()
                         if k in ("max_steps", "batch_size", "seq_len", "lora_r", "lora_alpha", "eval_examples")}}
    runs, memory = study.setdefault("runs", []), study.setdefault("memory", {})
    for mode in MODES:
        if mode not in memory:
            memory[mode] = mode_memory(mode, **overrides)
    with tempfile.TemporaryDirectory(prefix="functions_study_") as tmp:
        for mode, seed, lr, phase in plan(args.seeds, grids):
            lr = lr if lr is not None else best_rate(runs, mode, args.seeds[0])
            if any((r["mode"], r["seed"], r["learning_rate"]) == (mode, seed, lr) for r in runs):
                continue
            row = one_run(mode, seed, lr, heldout, Path(tmp), **overrides) | {"phase": phase}
            row |= {k: memory[mode][k] for k in ("peak_tensor_bytes", "peak_breakdown")}
            runs.append(row)
            out.write_text(json.dumps(study, indent=2) + "\n")
            print(f"{mode:5s} seed {seed} lr {lr:g}: pass@1 {row['pass_at_1']:.2f}, val loss {row['val_loss']:.3f}, "
                  f"{row['s_per_step']:.2f} s/step, load {row['load_avg_1min_before']:.1f}", flush=True)
    study["kept_learning_rate"] = {m: best_rate(runs, m, args.seeds[0]) for m in MODES}
    out.write_text(json.dumps(study, indent=2) + "\n")
    print(f"saved {out}")


if __name__ == "__main__":
    main()
