"""Benchmark: training memory at real scale, measured by tensor accounting vs the estimator.

    nice -n 10 .venv/bin/python benchmarks/memory_scale.py                 # ~1.1B Llama on this CPU
    .venv/bin/python benchmarks/memory_scale.py --device cuda --shape 7B   # CodeLlama-7B shape, GPU
    .venv/bin/python benchmarks/memory_scale.py --small                    # tiny shape: checks the path

A random-init Llama of the shape (no download) is written once in bf16 to a scratch folder,
then each mode runs in its own process: the package's fine-tune setup (NF4+DQ base for qlora,
bf16 base for lora; r=16 on all linear layers; gradient checkpointing; seq 512, batch 1) takes
one AdamW step while `qlora_lab.hardware.tensor_memory` accounts for every live tensor.
The peak is compared with `qlora_lab.sizing.memory.training_memory`; the 7B estimate is then
stated with the error measured here. Writes benchmarks/results/memory_scale_<device>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import torch

from qlora_lab.model.llama_shapes import CODELLAMA, ModelShape
from qlora_lab.paths import BENCHMARK_RESULTS_DIR, EMBEDDED_MODEL_DIR

# TinyLlama-1.1B's dimensions (Zhang et al. 2024): a ~1B Llama with grouped-query attention.
SHAPES = {
    "1B": ModelShape("Llama-1.1B", 2048, 5632, 22, 32, 4, 32000),
    "7B": CODELLAMA["7B"],
    "tiny": ModelShape("tiny", 256, 704, 2, 4, 4, 32000),
}
MODES = ("qlora", "lora")
LORA_R = 16  # the estimator's default rank


def write_random_model(shape: ModelShape, folder: Path, device: str) -> None:
    """A random-init Llama of `shape` in bf16, saved with the embedded model's tokenizer."""
    from transformers import AutoTokenizer

    from qlora_lab.finetune.compare import build_random_model

    model = build_random_model(shape, "lora", device)  # bf16 weights; each mode quantizes on load
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(EMBEDDED_MODEL_DIR).save_pretrained(folder)


def measure(model_dir: str, mode: str, seq_len: int, device: str) -> dict:
    """Worker: one step of `mode`, accounted for (run in its own process)."""
    from qlora_lab.finetune.config import FinetuneConfig
    from qlora_lab.finetune.step_memory import config_step_memory

    config = FinetuneConfig(mode=mode, model=model_dir, lora_r=LORA_R, lora_alpha=2 * LORA_R, batch_size=1,
                            seq_len=seq_len, gradient_checkpointing=True)
    cuda = torch.device(device).type == "cuda"
    if cuda:  # an independent measure on a GPU: the caching allocator's own peak
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    report = config_step_memory(config, device)
    measured = asdict(report) | {"step_s": time.perf_counter() - t0}
    if cuda:
        measured["cuda_max_allocated_bytes"] = torch.cuda.max_memory_allocated(device)
    return measured


def estimate(shape: ModelShape, mode: str, seq_len: int) -> dict:
    from qlora_lab.sizing.memory import training_memory

    est = training_memory(shape, mode, seq_len=seq_len, r=LORA_R, gradient_checkpointing=True)
    return {k: int(getattr(est, k)) for k in est.ITEMS} | {"total": int(est.total)}


def run_mode(model_dir: Path, mode: str, seq_len: int, device: str) -> dict:
    command = [sys.executable, __file__, "--worker", mode, "--model-dir", str(model_dir),
               "--seq-len", str(seq_len), "--device", device]
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="1B")
    parser.add_argument("--small", action="store_true", help="tiny shape and seq 64: checks the path in seconds")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--out", help="JSON file (default benchmarks/results/memory_scale_<device>.json)")
    parser.add_argument("--scratch", help="folder for the random model, kept and reused (default: a temporary one)")
    parser.add_argument("--merge", nargs="+", metavar="JSON", help="join results of single-mode runs (estimates redone)")
    parser.add_argument("--worker", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(measure(args.model_dir, args.worker, args.seq_len, args.device)))
        return
    if args.merge:
        result = merge(args.merge)
    else:
        result = measure_modes(SHAPES["tiny" if args.small else args.shape], 64 if args.small else args.seq_len, args)
    add_estimates(result)
    out = Path(args.out) if args.out else BENCHMARK_RESULTS_DIR / f"memory_scale_{torch.device(args.device).type}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    for mode, m in result["modes"].items():
        print(f"{mode}: measured {m['measured_peak_bytes'] / 2**30:.3f} GiB, estimated "
              f"{m['estimated_peak_bytes'] / 2**30:.3f} GiB ({m['relative_error']:+.1%}), step {m['step_s']:.0f} s")
    seven = result["codellama_7b_qlora_estimate"]
    print(f"7B QLoRA estimate {seven['bytes'] / 1e9:.2f} GB (error measured here up to "
          f"{seven['relative_error_bound']:.1%}); saved {out}")


def measure_modes(shape: ModelShape, seq_len: int, args: argparse.Namespace) -> dict:
    """Each mode's accounted step, in its own process, on one random model of `shape`."""
    result = {"shape": asdict(shape), "parameters": shape.n_params, "seq_len": seq_len, "batch": 1, "lora_r": LORA_R,
              "gradient_checkpointing": True, "device": args.device, "device_name": device_name(args.device),
              "torch": torch.__version__, "modes": {}}
    with tempfile.TemporaryDirectory(prefix="memory_scale_") as tmp:
        tmp = Path(args.scratch or tmp)
        if not (tmp / "config.json").is_file():
            write_random_model(shape, tmp, args.device)
        for mode in args.modes:
            load = os.getloadavg()[0]
            measured = run_mode(tmp, mode, seq_len, args.device)
            result["modes"][mode] = {
                "parameters": shape.n_params, "measured_peak_bytes": measured["peak_bytes"],
                "measured_breakdown": measured["peak"], "weights_by_dtype": measured["weights_by_dtype"],
                "step_s": measured["step_s"], "load_avg_1min": load}
            if "cuda_max_allocated_bytes" in measured:
                result["modes"][mode]["cuda_max_allocated_bytes"] = measured["cuda_max_allocated_bytes"]
    return result


def merge(paths: list[str]) -> dict:
    """One result from runs of single modes (e.g. measured in parallel), estimates redone."""
    result = json.loads(Path(paths[0]).read_text())
    for path in paths[1:]:
        result["modes"] |= json.loads(Path(path).read_text())["modes"]
    return result


def add_estimates(result: dict) -> None:
    """The estimator's figure beside each measurement, and the 7B QLoRA figure with that error."""
    shape = ModelShape(**result["shape"])
    for mode, m in result["modes"].items():
        est = estimate(shape, mode, result["seq_len"])
        m |= {"estimated_peak_bytes": est["total"], "estimated_breakdown": est,
              "relative_error": est["total"] / m["measured_peak_bytes"] - 1}
    if shape.name == CODELLAMA["7B"].name and "qlora" in result["modes"]:  # the GPU target
        result["qlora_peak_at_most_6e9_bytes"] = result["modes"]["qlora"]["measured_peak_bytes"] <= 6e9
    worst = max(abs(m["relative_error"]) for m in result["modes"].values())
    seven = estimate(CODELLAMA["7B"], "qlora", 512)["total"]
    result["codellama_7b_qlora_estimate"] = {"bytes": seven, "relative_error_bound": worst,
                                             "low_bytes": seven / (1 + worst), "high_bytes": seven / (1 - worst)}


def device_name(device: str) -> str:
    if torch.device(device).type == "cuda":
        return torch.cuda.get_device_name(device)
    from qlora_lab.hardware.sysinfo import cpu_model_and_flags

    return cpu_model_and_flags()[0]


if __name__ == "__main__":
    main()
