#!/usr/bin/env bash
# The GPU checks in one run, for a machine lent with a GPU (about 5 minutes; at most 8).
#
#   bash benchmarks/gpu_check.sh            # from the repository root, with .venv/ carried over
#   bash benchmarks/gpu_check.sh --cpu-small   # the same python parts on CPU, tiny: checks the script
#
# It uses the project's .venv (the machine has no network for a fresh install). That venv
# may hold the CPU torch wheel: the script first says what torch sees, then runs
# `pytest -m gpu tests/test_gpu.py` anyway (without CUDA those tests FAIL, on purpose), and
# writes benchmarks/results/gpu_tests_cuda.json: device name, versions, and each test's outcome.
# Then, each with its own time limit and its own benchmarks/results/*_cuda.json:
#   1. memory_scale.py: one QLoRA step of a random-init CodeLlama-7B shape (seq 512, batch 1,
#      checkpointing), tensor accounting and CUDA's own peak vs the estimator (target <= 6 GB);
#   2. skill_check.py: chapter 8's pass@1 before, its QLoRA fine-tune, pass@1 after;
#   3. the FSDP-QLoRA config (configs/accelerate/fsdp_qlora.yaml, bf16 storage) on one process.
# --cpu-small skips pytest and runs 1-3 with --device cpu --small, writing to a scratch folder.
set -u
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${GPU_CHECK_OUT:-benchmarks/results/gpu_tests_cuda.json}
CPU_SMALL=0
[ "${1:-}" = "--cpu-small" ] && CPU_SMALL=1
JUNIT=$(mktemp /tmp/gpu_tests.XXXXXX.xml)

echo "== what torch sees"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "nvidia-smi: not found"
"$PY" - <<'PY'
import torch
print(f"torch {torch.__version__}, built for CUDA {torch.version.cuda}, CUDA available: {torch.cuda.is_available()}")
if torch.cuda.is_available():
    print("device:", torch.cuda.get_device_name(0), "capability", torch.cuda.get_device_capability(0))
else:
    print("NO CUDA VISIBLE TO TORCH: the gpu tests below will fail (a CPU torch wheel cannot use the GPU).")
PY

status=0
if [ "$CPU_SMALL" = 0 ]; then
echo "== pytest -m gpu tests/test_gpu.py"
timeout 210 "$PY" -m pytest -m gpu tests/test_gpu.py -v --junitxml="$JUNIT"
status=$?

"$PY" - "$JUNIT" "$OUT" "$status" <<'PY'
import json, platform, sys, xml.etree.ElementTree as ET
from datetime import datetime, timezone

import torch

junit, out, status = sys.argv[1], sys.argv[2], int(sys.argv[3])
tests = []
try:
    for case in ET.parse(junit).getroot().iter("testcase"):
        outcome = "passed"
        for tag in ("failure", "error", "skipped"):
            node = case.find(tag)
            if node is not None:
                outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[tag]
                message = (node.get("message") or "")[:500]
                break
        row = {"test": case.get("name"), "outcome": outcome, "seconds": float(case.get("time") or 0)}
        if outcome != "passed":
            row["message"] = message
        tests.append(row)
except (OSError, ET.ParseError) as exc:
    tests.append({"test": "(no junit report)", "outcome": "error", "message": str(exc)})
cuda = torch.cuda.is_available()
result = {
    "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    "command": "pytest -m gpu tests/test_gpu.py",
    "exit_status": status,
    "cuda_available": cuda,
    "device": torch.cuda.get_device_name(0) if cuda else None,
    "torch": torch.__version__,
    "torch_cuda": torch.version.cuda,
    "python": platform.python_version(),
    "passed": sum(t["outcome"] == "passed" for t in tests),
    "failed": sum(t["outcome"] in ("failed", "error") for t in tests),
    "tests": tests,
}
try:
    import bitsandbytes
    result["bitsandbytes"] = bitsandbytes.__version__
except Exception as exc:  # reported, not hidden
    result["bitsandbytes"] = f"import failed: {exc}"
with open(out, "w") as f:
    json.dump(result, f, indent=2)
print(f"wrote {out}: {result['passed']} passed, {result['failed']} failed, device={result['device']}")
PY
fi
rm -f "$JUNIT"

if [ "$CPU_SMALL" = 1 ]; then  # a shared CPU is slow: the limits below are for the GPU
    DEV=(--device cpu --small); RESULTS=$(mktemp -d /tmp/gpu_check_small.XXXXXX); SLOW=8
else
    DEV=(--device cuda); RESULTS=benchmarks/results; SLOW=1
fi
run_part() {  # name, seconds, command...: a part that fails or times out is reported, the next one runs
    local name=$1 limit=$2; shift 2
    echo "== $name"
    timeout $((limit * SLOW)) "$@"
    local rc=$?
    [ $rc = 0 ] || { echo "!! $name: exit status $rc"; status=1; }
}
SHAPE=(--shape 7B --modes qlora); [ "$CPU_SMALL" = 1 ] && SHAPE=()
run_part "7B-shape memory: tensor accounting vs estimator" 150 \
    "$PY" benchmarks/memory_scale.py "${DEV[@]}" "${SHAPE[@]}" --out "$RESULTS/memory_scale_cuda.json"
run_part "chapter 8: skill score, QLoRA fine-tune, skill score" 90 \
    "$PY" benchmarks/skill_check.py "${DEV[@]}" --out "$RESULTS/skill_cuda.json"
FSDP_DIR=$(mktemp -d /tmp/fsdp_qlora.XXXXXX)
FSDP=("$PY" -m qlora_lab.cli finetune --accelerate-config configs/accelerate/fsdp_qlora.yaml --num-processes 1
      --quant-storage bf16 --max-steps 8 --eval-examples 4 --output-dir "$FSDP_DIR" --overwrite)
if [ "$CPU_SMALL" = 1 ]; then
    # Accelerate's FSDP plugin refuses the CPU: check the command gets that far and says so clearly
    echo "== FSDP-QLoRA config on one process (CPU: the clear refusal is expected)"
    timeout 120 "${FSDP[@]}" 2>&1 | grep -q "FSDP needs GPUs" && echo "refused as expected" \
        || { echo "!! FSDP-QLoRA: no clear refusal on CPU"; status=1; }
else
    run_part "FSDP-QLoRA config on one process" 60 "${FSDP[@]}"
    "$PY" - "$FSDP_DIR" "$RESULTS/fsdp_qlora_cuda.json" <<'PY'
import json, sys
from pathlib import Path

import torch

from qlora_lab.finetune.rundir import read_summary

folder, out = Path(sys.argv[1]), sys.argv[2]
try:
    summary = read_summary(folder)
except (OSError, ValueError) as exc:
    summary = {"error": f"no summary: {exc}"}
summary["device_name"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
Path(out).write_text(json.dumps(summary, indent=2, default=str) + "\n")
print(f"wrote {out}: {summary.get('distributed')}, {summary.get('steps')} steps, val loss "
      f"{summary.get('val_loss_before')} -> {summary.get('val_loss_after')}")
PY
fi
rm -rf "$FSDP_DIR"
exit $status
