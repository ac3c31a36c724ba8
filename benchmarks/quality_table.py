"""The quality table of chapter 11: validation bits/byte of the embedded model in every format.

    .venv/bin/python benchmarks/quality_table.py                 # every format, prints the table
    .venv/bin/python benchmarks/quality_table.py --save          # also writes benchmarks/results/quality_table_cpu.json
    .venv/bin/python benchmarks/quality_table.py --formats none nf4 gptq4
    .venv/bin/python benchmarks/quality_table.py --formats int4-absmax --save --merge   # add/replace rows

A few cheap rows are also scored on the first validation file alone (`live_rows`): chapter 11
recomputes exactly those live and checks it finds the same numbers.

Each row loads the model in one format (`qlora_lab.model.quantized.load_quantized`: the
calibrated ones run GPTQ or AWQ on 32 windows of 256 tokens of stdlib training files) and
scores the first `--max-files` files of the validation split (the same bytes for every row).
Bits/byte compare across formats; the differences between 8- and 4-bit formats are small on
a 10M-parameter model, so the JSON keeps every digit. Timings are recorded with the load
average of the machine (they include calibration for GPTQ/AWQ).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import torch

from qlora_lab.hardware.sysinfo import library_versions
from qlora_lab.model.quantized import FORMATS, load_quantized
from qlora_lab.model.validation import evaluate_split
from qlora_lab.paths import BENCHMARK_RESULTS_DIR

OUTPUT = "quality_table_cpu.json"
LIVE_FORMATS = ("none", "int4", "nf4")  # recomputed by the notebook on one file
LIVE_MAX_FILES = 1


def row(name: str, max_files: int, seq_len: int) -> dict:
    """Load, score, time one format."""
    start = time.perf_counter()
    model, tokenizer = load_quantized(name)
    loaded = time.perf_counter()
    report = evaluate_split(model, tokenizer, "validation", max_files=max_files, seq_len=seq_len)
    done = time.perf_counter()
    fmt = FORMATS[name]
    return {"format": name, "kind": fmt.kind, "bits_per_weight": fmt.bits, "description": fmt.description,
            **report.as_dict(), "seconds_quantize": loaded - start, "seconds_score": done - loaded,
            "loadavg_1min": os.getloadavg()[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--formats", nargs="+", default=list(FORMATS), choices=list(FORMATS))
    parser.add_argument("--max-files", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--save", action="store_true")
    parser.add_argument("--merge", action="store_true", help="keep the saved file's other rows (same settings)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    path = BENCHMARK_RESULTS_DIR / OUTPUT
    saved = json.loads(path.read_text()) if args.merge else None
    if saved and (saved["settings"]["max_files"], saved["settings"]["seq_len"]) != (args.max_files, args.seq_len):
        raise SystemExit(f"--merge: {path} was measured with other settings: {saved['settings']}")
    live_rows = saved["live_rows"] if saved else [row(name, LIVE_MAX_FILES, args.seq_len) for name in LIVE_FORMATS]
    rows = [r for r in saved["rows"] if r["format"] not in args.formats] if saved else []
    for name in args.formats:
        rows.append(row(name, args.max_files, args.seq_len))
        r = rows[-1]
        print(f"{name:10s} {r['bits_per_byte']:.5f} bits/byte  ({r['seconds_quantize']:.0f} s + "
              f"{r['seconds_score']:.0f} s, load {r['loadavg_1min']:.1f})", flush=True)
        if args.save:  # after every row: a long run interrupted keeps what it measured
            environment = {"platform": platform.platform(), "cpu_count": os.cpu_count(), "threads": args.threads,
                           "libraries": library_versions()}
            settings = {"split": "validation", "max_files": args.max_files, "seq_len": args.seq_len,
                        "live_max_files": LIVE_MAX_FILES}
            rows.sort(key=lambda r: list(FORMATS).index(r["format"]))
            path.write_text(json.dumps({"settings": settings, "environment": environment, "rows": rows,
                                        "live_rows": live_rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
