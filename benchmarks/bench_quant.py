"""Time our 4-bit quantization against bitsandbytes' CPU path, in the same run.

    .venv/bin/python benchmarks/bench_quant.py              # 4096x4096 float32, NF4, 11 repeats
    .venv/bin/python benchmarks/bench_quant.py --threads 1  # single-threaded, both sides
    .venv/bin/python benchmarks/bench_quant.py --save       # also write benchmarks/results/bench_quant.json

For each configuration both implementations run on the same matrix, alternately (ours,
then bitsandbytes, repeat), so a background load slows both alike; the table reports the
median of the repeats and the ratio ours / bitsandbytes. Targets: our quantize no slower
than bitsandbytes (ratio <= 1), our dequantize within 2x (ratio <= 2). Before timing, the
script checks that both produce the same packed bytes and the same dequantized values.

This is a script, not a test: timings depend on the machine and on whatever else runs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable

import torch

from qlora_lab.backends import import_bnb
from qlora_lab.quant.nf4 import dequantize_4bit, quantize_4bit
from qlora_lab.paths import BENCHMARK_RESULTS_DIR

TARGETS = {"quantize": 1.0, "dequantize": 2.0}  # max ratio ours / bitsandbytes


def _timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def compare(ours: Callable[[], object], theirs: Callable[[], object], repeats: int) -> tuple[float, float]:
    """Median seconds of ``ours`` and ``theirs``, measured alternately after one warm-up."""
    ours(), theirs()
    ours_s, theirs_s = [], []
    for _ in range(repeats):
        ours_s.append(_timed(ours))
        theirs_s.append(_timed(theirs))
    return statistics.median(ours_s), statistics.median(theirs_s)


def bench(size: int, quant_type: str, blocksize: int, repeats: int, seed: int = 0) -> list[dict]:
    """One row per (operation, double_quant): median times and ratio."""
    functional = import_bnb().functional
    x = torch.randn(size, size, generator=torch.Generator().manual_seed(seed))  # (size, size) float32
    rows = []
    for double_quant in (True, False):
        packed, state = quantize_4bit(x, quant_type, blocksize, double_quant)
        bnb_packed, bnb_state = functional.quantize_4bit(
            x, blocksize=blocksize, quant_type=quant_type, compress_statistics=double_quant
        )
        if not torch.equal(packed, bnb_packed):
            raise RuntimeError("packed bytes differ from bitsandbytes: fix correctness before timing")
        if not torch.equal(dequantize_4bit(packed, state), functional.dequantize_4bit(bnb_packed, bnb_state)):
            raise RuntimeError("dequantized values differ from bitsandbytes")
        timings = {
            "quantize": compare(
                lambda: quantize_4bit(x, quant_type, blocksize, double_quant),
                lambda: functional.quantize_4bit(
                    x, blocksize=blocksize, quant_type=quant_type, compress_statistics=double_quant
                ),
                repeats,
            ),
            "dequantize": compare(
                lambda: dequantize_4bit(packed, state),
                lambda: functional.dequantize_4bit(bnb_packed, bnb_state),
                repeats,
            ),
        }
        for operation, (ours_s, bnb_s) in timings.items():
            rows.append(
                {
                    "operation": operation,
                    "double_quant": double_quant,
                    "ours_s": ours_s,
                    "bnb_s": bnb_s,
                    "ratio": ours_s / bnb_s,
                    "target": TARGETS[operation],
                }
            )
    return rows


def environment() -> dict:
    """What the numbers depend on."""
    bnb = import_bnb()
    return {
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average_1min": os.getloadavg()[0],
        "torch": torch.__version__,
        "bitsandbytes": bnb.__version__,
    }


def print_table(rows: list[dict], header: str) -> None:
    print(header)
    print(f"{'operation':<11}{'DQ':<5}{'ours (s)':>10}{'bnb (s)':>10}{'ours/bnb':>10}{'target':>9}  ok")
    for r in rows:
        ok = "yes" if r["ratio"] <= r["target"] else "NO"
        dq = "on" if r["double_quant"] else "off"
        print(
            f"{r['operation']:<11}{dq:<5}{r['ours_s']:>10.3f}{r['bnb_s']:>10.3f}"
            f"{r['ratio']:>10.2f}{'<= ' + str(r['target']):>9}  {ok}"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=4096, help="matrix side (default 4096)")
    parser.add_argument("--quant-type", default="nf4", choices=["nf4", "fp4"])
    parser.add_argument("--blocksize", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=11)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--save", action="store_true", help=f"write {BENCHMARK_RESULTS_DIR}/bench_quant.json")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)  # also bitsandbytes' OpenMP kernels

    env = environment()
    rows = bench(args.size, args.quant_type, args.blocksize, args.repeats)
    header = (
        f"{args.size}x{args.size} float32, {args.quant_type}, blocksize {args.blocksize}, "
        f"median of {args.repeats} (alternating runs); {env['torch_threads']} torch threads, "
        f"load average {env['load_average_1min']:.1f}, bitsandbytes {env['bitsandbytes']}"
    )
    print_table(rows, header)
    if args.save:
        BENCHMARK_RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        path = BENCHMARK_RESULTS_DIR / "bench_quant.json"
        settings = {k: v for k, v in vars(args).items() if k != "save"}
        path.write_text(json.dumps({"settings": settings, "environment": env, "rows": rows}, indent=2) + "\n")
        print(f"saved {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
