"""The `gpu` marker's contract: deselected by default, and a FAILURE (not a skip) without CUDA."""

import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
ONE_TEST = "tests/test_gpu.py::test_paged_optimizer_fine_tune_on_cuda"


def run_pytest(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-rA", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)


def test_gpu_tests_are_deselected_by_default():
    """addopts ends with -m 'not gpu' (a later -m on the command line wins), and every test
    of tests/test_gpu.py carries the marker."""
    import shlex
    import tomllib

    import test_gpu

    addopts = shlex.split(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]["addopts"])
    assert addopts[addopts.index("-m") + 1] == "not gpu" and addopts.count("-m") == 1
    assert test_gpu.pytestmark.name == "gpu"


def test_gpu_tests_fail_not_skip_when_selected_without_cuda():
    result = run_pytest("-m", "gpu", ONE_TEST)
    if torch.cuda.is_available():  # on a GPU machine the test really runs
        assert result.returncode == 0, result.stdout[-3000:]
        return
    assert result.returncode == 1, result.stdout[-3000:]
    assert "CUDA is not available" in result.stdout and "skipped" not in result.stdout
