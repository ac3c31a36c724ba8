#!/usr/bin/env bash
# The GPU tests in one run, for a machine lent with a GPU (about 2-5 minutes; at most 8).
#
#   bash benchmarks/gpu_check.sh            # from the repository root, with .venv/ carried over
#
# It uses the project's .venv (the machine has no network for a fresh install). That venv
# may hold the CPU torch wheel: the script first says what torch sees, then runs
# `pytest -m gpu tests/test_gpu.py` anyway (without CUDA those tests FAIL, on purpose), and
# writes benchmarks/results/gpu_tests_cuda.json: device name, versions, and each test's outcome.
set -u
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${GPU_CHECK_OUT:-benchmarks/results/gpu_tests_cuda.json}
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

echo "== pytest -m gpu tests/test_gpu.py"
timeout 450 "$PY" -m pytest -m gpu tests/test_gpu.py -v --junitxml="$JUNIT"
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
rm -f "$JUNIT"
exit $status
