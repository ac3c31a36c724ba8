"""Decoding tokens/s on this CPU, bf16 vs NF4 + DQ (bitsandbytes), at batch 1 and 32.

    .venv/bin/python benchmarks/inference_speed.py          # embedded model + a random ~1B Llama
    .venv/bin/python benchmarks/inference_speed.py --save   # also write benchmarks/results/inference_speed_cpu.json
    .venv/bin/python benchmarks/inference_speed.py --skip-1b --rounds 1   # a quick look

Beside each speed: the bytes of weights a decoding step reads, this machine's copy
bandwidth (measured before and after), and the memory-bound ceiling bandwidth / bytes.
The embedded model's two formats are measured in interleaved rounds (best round kept);
the ~1B model is built once per format (2.2 GB in bf16: one model in memory at a time).
Load averages are recorded beside every row: on a shared machine, read them before the speeds.

This is a script, not a test: timings depend on the machine and on whatever else runs.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import time

import torch

from qlora_lab.hardware.bandwidth import measure_copy_bandwidth
from qlora_lab.hardware.sysinfo import cpu_model_and_flags, library_versions
from qlora_lab.model.models import load_model
from qlora_lab.paths import BENCHMARK_RESULTS_DIR
from qlora_lab.sizing.decoding import LLAMA_1B, bandwidth_bound_tokens_per_s, decode_speed, random_llama, weight_bytes_per_token

FORMATS = {"none": "bf16", "nf4": "nf4-dq"}
BATCHES = (1, 32)


def measure(model, name: str, fmt: str, new_tokens: int, repeats: int) -> list[dict]:
    """One row per batch size for a loaded model."""
    rows = []
    weights = weight_bytes_per_token(model)  # before the first forward (bnb repacks on CPU)
    for batch in BATCHES:
        load_before = os.getloadavg()
        speed = decode_speed(model, batch, new_tokens=new_tokens, repeats=repeats)
        rows.append({"model": name, "format": FORMATS[fmt], "weight_bytes_per_token": weights, **speed,
                     "loadavg_before": load_before, "loadavg_after": os.getloadavg(), "time": time.strftime("%H:%M:%S")})
        print(rows[-1], flush=True)
    return rows


def best_rows(rows: list[dict]) -> list[dict]:
    """The fastest of the rounds for each (model, format, batch): a busy neighbour only slows a run down."""
    best: dict[tuple, dict] = {}
    for row in rows:
        key = (row["model"], row["format"], row["batch_size"])
        if key not in best or row["tokens_per_s"] > best[key]["tokens_per_s"]:
            best[key] = row
    return list(best.values())


def run(rounds: int, new_tokens: int, repeats: int, skip_1b: bool) -> dict:
    bandwidth_before = measure_copy_bandwidth()
    rows = []
    models = {fmt: load_model(quantization=fmt)[0] for fmt in FORMATS}  # ~30 MB together
    for _ in range(rounds):
        for fmt, model in models.items():
            rows += measure(model, "mini-codellama", fmt, new_tokens, repeats)
    del models
    if not skip_1b:
        for fmt in FORMATS:
            model = random_llama(LLAMA_1B, fmt)
            rows += measure(model, LLAMA_1B.name, fmt, max(4, new_tokens // 2), max(1, repeats - 1))
            del model
            gc.collect()
    bandwidth = max(bandwidth_before, measure_copy_bandwidth())
    kept = best_rows(rows)
    for row in kept:
        row["bandwidth_bound_tokens_per_s"] = bandwidth_bound_tokens_per_s(row["weight_bytes_per_token"], bandwidth)
    cpu, _ = cpu_model_and_flags()
    return {"settings": {"rounds": rounds, "new_tokens": new_tokens, "repeats": repeats, "batches": BATCHES,
                         "threads": torch.get_num_threads()},
            "environment": {"cpu": cpu, "machine": platform.machine(), "cores": os.cpu_count(), **library_versions()},
            "bandwidth_bytes_per_s": bandwidth, "bandwidth_before_after": [bandwidth_before, bandwidth],
            "rows": kept, "all_rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds for the embedded model")
    parser.add_argument("--new-tokens", type=int, default=16, help="tokens generated per timed run")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per setting (best kept)")
    parser.add_argument("--skip-1b", action="store_true", help="only the embedded model")
    parser.add_argument("--save", action="store_true", help="write benchmarks/results/inference_speed_cpu.json")
    args = parser.parse_args()
    result = run(args.rounds, args.new_tokens, args.repeats, args.skip_1b)
    if args.save:
        path = BENCHMARK_RESULTS_DIR / "inference_speed_cpu.json"
        path.write_text(json.dumps(result, indent=2) + "\n")
        print("written", path)


if __name__ == "__main__":
    main()
