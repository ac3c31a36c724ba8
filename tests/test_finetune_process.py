"""The fine-tune as a process: a hard kill after a checkpoint, Ctrl-C, and the CPU packing hazard.

tests/test_finetune.py checks the engine in-process; here the CLI runs in a subprocess that
is SIGKILLed (steps after the last checkpoint are lost and must be redone, each logged
once) or gets SIGINT (a checkpoint is saved before exiting). The hazard test checks that
the *validation loss* keeps falling across mid-training evaluations, which is what the
AVX512 packing trap broke (gradients silently lost after an eval-mode forward).
"""

import json
import os
import signal
import subprocess

import pytest

from process_helpers import TIMEOUT_S, wait_for_steps
from qlora_lab.finetune.config import FinetuneConfig
from qlora_lab.finetune.launch import launch_command
from qlora_lab.finetune.loop import finetune
from qlora_lab.finetune.rundir import read_metrics


def _cli(*args):
    return launch_command(1, ["--mode=qlora", "--batch-size=4", "--seq-len=64", "--eval-examples=4", "--max-steps=12",
                              "--save-every=4", "--lora-dropout=0", *args])




def test_hard_killed_run_resumes_and_matches_an_uninterrupted_one(tmp_path):
    full, killed = tmp_path / "full", tmp_path / "killed"
    subprocess.run(_cli(f"--output-dir={full}"), check=True, capture_output=True, timeout=TIMEOUT_S)
    proc = subprocess.Popen(_cli(f"--output-dir={killed}"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_steps(killed, 6)  # past the step-4 checkpoint
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (killed / "checkpoints" / "step-000004").is_dir()
    assert not (killed / "summary.json").exists()
    subprocess.run(_cli(f"--output-dir={killed}", "--resume"), check=True, capture_output=True, timeout=TIMEOUT_S)
    resumed, reference = read_metrics(killed), read_metrics(full)
    assert [r["step"] for r in resumed] == list(range(1, 13))  # every step exactly once
    for a, b in zip(resumed, reference):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-2), a["step"]
    after = lambda d: json.loads((d / "summary.json").read_text())["val_loss_after"]  # noqa: E731
    assert after(killed) == pytest.approx(after(full), rel=1e-2)


def test_ctrl_c_saves_a_checkpoint_and_exits_130(tmp_path):
    proc = subprocess.Popen(_cli(f"--output-dir={tmp_path}", "--max-steps=500", "--save-every=0"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_steps(tmp_path, 2)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=TIMEOUT_S)
    assert proc.returncode == 130
    assert "Interrupted: checkpoint saved" in out
    steps_done = len(read_metrics(tmp_path))
    assert [p.name for p in (tmp_path / "checkpoints").glob("step-*")] == [f"step-{steps_done:06d}"]
    assert json.loads((tmp_path / "summary.json").read_text())["interrupted"] is True


def test_validation_loss_keeps_falling_across_eval_passes(tmp_path):
    result = finetune(FinetuneConfig(mode="qlora", max_steps=20, eval_every=5, batch_size=8, seq_len=64,
                                     eval_examples=8, warmup_steps=2, learning_rate=3e-3, output_dir=str(tmp_path)))
    val = [r["val_loss"] for r in result.metrics if "val_loss" in r]
    before, after = result.summary["val_loss_before"], result.summary["val_loss_after"]
    assert len(val) == 3  # eval-mode, no-grad forwards at steps 5, 10 and 15
    assert after < val[0] < before  # learning went on after the first eval pass
    assert val[2] < val[0]
