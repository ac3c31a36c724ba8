"""benchmarks/gpu_check.sh runs on a lent GPU only: check here that what it calls exists and
accepts the options it passes (its whole CPU path: `bash benchmarks/gpu_check.sh --cpu-small`)."""

import re
import subprocess
import sys

import pytest

from qlora_lab.paths import REPO_DIR

SCRIPT = REPO_DIR / "benchmarks" / "gpu_check.sh"


def test_the_script_is_valid_bash():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)


@pytest.mark.parametrize("name", ["memory_scale.py", "skill_check.py"])
def test_each_benchmark_it_calls_accepts_its_options(name):
    text = SCRIPT.read_text()
    assert f"benchmarks/{name}" in text
    used = set(re.findall(r"(--[a-z][a-z-]+)", text))
    shown = subprocess.run([sys.executable, str(REPO_DIR / "benchmarks" / name), "--help"], capture_output=True,
                           text=True, check=True).stdout
    accepted = set(re.findall(r"(--[a-z][a-z-]+)", shown))
    # the options the script passes to every python part: --device, --small, --out
    assert {"--device", "--small", "--out"} <= used & accepted, (name, sorted(used & accepted))
