"""Fault injection: crashes, kills, Ctrl-C, damaged checkpoints and a full disk lose nothing.

Every case ends the same way: the run is resumed and must log every step exactly once
and save an adapter byte-identical to the one of an uninterrupted run (CPU, same seed).
Runs are tiny (LoRA, 12 steps of 2 x 32 tokens on a small JSONL file) and reuse one
loaded base model, so the whole file stays around a minute on 2 cores.
"""

from __future__ import annotations

import copy
import errno
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import qlora_lab.finetune.atomic as atomic
from process_helpers import TIMEOUT_S
from qlora_lab.finetune.atomic import DiskFullError
from qlora_lab.finetune.config import FinetuneConfig
from qlora_lab.finetune.interrupts import SecondInterrupt
from qlora_lab.finetune.launch import launch_command
from qlora_lab.finetune.loop import finetune
from qlora_lab.finetune.rundir import checkpoint_dir, checkpoint_step, checkpoints, last_checkpoint, read_metrics

STEPS = 12
# lora_dropout > 0: the dropout masks draw from the RNG, so a resume is exact only if it is restored
RUN = dict(mode="lora", max_steps=STEPS, save_every=2, keep_checkpoints=2, batch_size=2, seq_len=32,
           eval_examples=4, warmup_steps=2, lora_dropout=0.1)


ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}  # as the in-process runs (see `one_thread`)


class Crash(BaseException):
    """A process dying: no `except Exception` and no Ctrl-C handler catches it."""


pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("data") / "pairs.jsonl"
    records = [{"instruction": f"Write a function that adds {i} to x.",
                "response": f"def add_{i}(x):\n    return x + {i}\n"} for i in range(40)]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


@pytest.fixture(scope="module")
def base():
    """The bf16 base, loaded once; each run trains a deep copy of it."""
    from qlora_lab.model.models import load_model

    return load_model(None, quantization="none")


def run(base, data_file, output_dir, callbacks=(), **overrides):
    model, tokenizer = base
    config = FinetuneConfig(**(RUN | {"data": data_file, "output_dir": str(output_dir)} | overrides))
    return finetune(config, model=copy.deepcopy(model), tokenizer=tokenizer, callbacks=list(callbacks))


def adapter_bytes(output_dir) -> bytes:
    return (Path(output_dir) / "adapter" / "adapter_model.safetensors").read_bytes()


def assert_same_as_reference(output_dir, reference):
    assert [r["step"] for r in read_metrics(output_dir)] == list(range(1, STEPS + 1))  # each step once
    assert adapter_bytes(output_dir) == adapter_bytes(reference)
    assert not list(Path(output_dir).rglob(".tmp-*"))


@pytest.fixture(scope="module")
def reference(base, data, tmp_path_factory):
    out = tmp_path_factory.mktemp("reference")
    run(base, data, out)
    return out


@pytest.fixture(scope="module")
def stopped_at_11(base, data, tmp_path_factory):
    """A run that died after step 11: checkpoints step-8 and step-10 are on disk."""
    out = tmp_path_factory.mktemp("stopped")
    with pytest.raises(Crash):
        run(base, data, out, callbacks=[crash_at(11)])
    assert [p.name for p in checkpoints(out)] == ["step-000008", "step-000010"]
    return out


def crash_at(step: int):
    def callback(row):
        if row["step"] == step:
            raise Crash
    return callback


def resume(base, data_file, output_dir, **overrides):
    return run(base, data_file, output_dir, resume=True, **overrides)


# --- crashes and kills ------------------------------------------------------------------------

def test_ten_crashes_at_seeded_random_points_then_resume_equal_an_uninterrupted_run(base, data, reference,
                                                                                    tmp_path, monkeypatch):
    """Crashes after a step, or in the middle of writing a checkpoint, the manifest or the metrics."""
    rng = random.Random(14)
    real_write = atomic._write
    out, kinds = tmp_path / "run", []
    for _ in range(10):
        saved = last_checkpoint(out)
        start = checkpoint_step(saved) if saved else 0
        kind = rng.choice(("step", "write"))
        # a step after the checkpoint it resumes from; or one of the 4 next writes (run.json,
        # metrics.jsonl on resume, state.pt and sha256.json of a checkpoint, summary.json)
        at = rng.randint(start + 1, STEPS) if kind == "step" else rng.randint(1, 4)
        writes = []

        def failing_write(path, data_bytes, at=at):
            writes.append(path)
            if len(writes) == at:  # half the bytes reach the disk, then the process dies
                path.write_bytes(data_bytes[: len(data_bytes) // 2])
                raise Crash
            real_write(path, data_bytes)

        monkeypatch.setattr(atomic, "_write", failing_write if kind == "write" else real_write)
        with pytest.raises(Crash):
            run(base, data, out, callbacks=[crash_at(at)] if kind == "step" else [], resume=saved is not None,
                overwrite=saved is None)
        kinds.append(kind)
    monkeypatch.setattr(atomic, "_write", real_write)
    assert set(kinds) == {"step", "write"}
    resume(base, data, out)
    assert_same_as_reference(out, reference)


KILLS = 10
KILL_RUN = RUN | {"max_steps": 40}
LAST_KILL_STEP = 30  # kills land at or before it: well before the end, never after the final save


@pytest.fixture(scope="module")
def kill_reference(base, data, tmp_path_factory):
    out = tmp_path_factory.mktemp("kill-reference")
    run(base, data, out, **KILL_RUN)
    return out


def test_ten_sigkills_at_seeded_random_times_then_resume_equal_an_uninterrupted_run(data, kill_reference, tmp_path):
    """Real SIGKILLs of the CLI process (no handler, no `finally`, no flush runs), at seeded random moments.

    Each kill lands after the run has logged a new step, at a random delay within a step, so
    it can hit a step, a checkpoint being written, the metrics line or the manifest. After
    each kill the run is continued with --resume (or restarted with --overwrite when no
    checkpoint was complete yet); at the end every step is logged once and the adapter is
    byte-identical to an uninterrupted run's.
    """
    rng, out = random.Random(1414), tmp_path / "run"
    base_cli = launch_command(1, FinetuneConfig(data=data, output_dir=str(out), **KILL_RUN).to_argv())
    kills = 0
    while kills < KILLS:
        start = last_checkpoint(out)
        cli = base_cli + (["--resume"] if start is not None else ["--overwrite"])
        logged = len(read_metrics(out)) if start is not None else 0
        log = (tmp_path / f"kill-{kills}.log").open("w")  # not a pipe: a full pipe would stall the run
        proc = subprocess.Popen(cli, stdout=subprocess.DEVNULL, stderr=log, env=ONE_THREAD)
        target = min(logged + 1, LAST_KILL_STEP) if start is not None else 1
        while len(read_metrics(out)) < target and proc.poll() is None:
            time.sleep(0.05)
        time.sleep(rng.uniform(0, 0.3))
        assert proc.poll() is None, f"the run ended before its kill: {Path(log.name).read_text()[-2000:]}"
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=TIMEOUT_S) == -signal.SIGKILL
        log.close()
        kills += 1
    assert not (out / "summary.json").exists()
    finished = subprocess.run(base_cli + ["--resume"], capture_output=True, text=True, timeout=TIMEOUT_S,
                              env=ONE_THREAD)
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert [r["step"] for r in read_metrics(out)] == list(range(1, KILL_RUN["max_steps"] + 1))
    assert adapter_bytes(out) == adapter_bytes(kill_reference)
    assert not list(Path(out).rglob(".tmp-*"))


# --- Ctrl-C -----------------------------------------------------------------------------------

def test_ctrl_c_mid_step_stops_at_the_step_boundary_and_resumes_exactly(base, data, reference, tmp_path,
                                                                       monkeypatch, capsys):
    """SIGINT lands in the middle of steps chosen at random; each run stops after that step."""
    import qlora_lab.finetune.loop as loop

    real_micro_batch = loop.micro_batch
    plan = sorted(random.Random(3).sample(range(1, STEPS), 3))
    stops = []
    for stop_step in plan + [None]:
        def micro_batch(train, config, micro_step, *args, stop_step=stop_step):
            if stop_step is not None and micro_step == stop_step - 1:  # inside step `stop_step`
                os.kill(os.getpid(), signal.SIGINT)
            return real_micro_batch(train, config, micro_step, *args)

        monkeypatch.setattr(loop, "micro_batch", micro_batch)
        result = run(base, data, tmp_path, resume=bool(stops))
        stops.append(result.summary["steps"])
    assert stops == plan + [STEPS]  # every interrupted run finished the step it was in, and no more
    assert "Ctrl-C: stopping after this step" in capsys.readouterr().err
    assert_same_as_reference(tmp_path, reference)


def test_a_second_ctrl_c_stops_at_once_and_keeps_the_last_checkpoint(base, data, reference, tmp_path):
    def two_ctrl_c(row):
        if row["step"] == 5:
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(SecondInterrupt, match="second Ctrl-C"):
        run(base, data, tmp_path, callbacks=[two_ctrl_c])
    assert [p.name for p in checkpoints(tmp_path)] == ["step-000002", "step-000004"]
    resume(base, data, tmp_path)
    assert_same_as_reference(tmp_path, reference)


# --- damaged checkpoints ----------------------------------------------------------------------

def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def flip_4k(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    start = len(raw) // 2
    raw[start : start + 4096] = bytes(b ^ 0xFF for b in raw[start : start + 4096])
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("damage, why", [
    (truncate, "state.pt does not match its SHA-256 (damaged)"),
    (Path.unlink, "state.pt unreadable (No such file or directory)"),
    (flip_4k, "state.pt does not match its SHA-256 (damaged)"),
])
def test_a_damaged_checkpoint_is_skipped_with_one_warning(base, data, reference, stopped_at_11, tmp_path,
                                                          capsys, damage, why):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(stopped_at_11, out)
    damage(checkpoint_dir(out, 10) / "state.pt")
    capsys.readouterr()
    resume(base, data, out)
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert warnings == [f"warning: checkpoint {checkpoint_dir(out, 10)} skipped: {why}; resuming from step-000008"]
    assert_same_as_reference(out, reference)


# --- a full disk ------------------------------------------------------------------------------

def disk_full_on(monkeypatch, name: str) -> None:
    """Writes of files called `name` fail with ENOSPC after half their bytes."""
    real_write = atomic._write

    def write(path, data_bytes):
        if path.name.startswith(f"{atomic.TMP_PREFIX}{name}"):
            path.write_bytes(data_bytes[: len(data_bytes) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write(path, data_bytes)

    monkeypatch.setattr(atomic, "_write", write)


def test_disk_full_during_a_checkpoint_is_one_line_and_loses_nothing(base, data, reference, tmp_path, monkeypatch):
    def fill_disk_after_step_5(row):
        if row["step"] == 5:
            disk_full_on(monkeypatch, "state.pt")

    with pytest.raises(DiskFullError) as caught:
        run(base, data, tmp_path, callbacks=[fill_disk_after_step_5])
    message = str(caught.value)
    assert "\n" not in message and message.startswith("disk full on /")
    assert "MB more needed" in message and f"the last good checkpoint is {checkpoint_dir(tmp_path, 4)}" in message
    assert not list(tmp_path.rglob(".tmp-*"))
    monkeypatch.undo()
    resume(base, data, tmp_path)
    assert_same_as_reference(tmp_path, reference)


def test_disk_full_during_the_final_save_keeps_the_trained_state(base, data, reference, tmp_path, monkeypatch):
    import peft.peft_model

    def save_file_on_a_full_disk(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"\0" * 100)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(peft.peft_model, "safe_save_file", save_file_on_a_full_disk)
    with pytest.raises(DiskFullError, match=f"the last good checkpoint is {checkpoint_dir(tmp_path, STEPS)}"):
        run(base, data, tmp_path)
    assert not (tmp_path / "adapter").exists() and not (tmp_path / "summary.json").exists()
    assert not list(tmp_path.rglob(".tmp-*"))
    monkeypatch.undo()
    resume(base, data, tmp_path)  # nothing left to train: it evaluates and saves
    assert_same_as_reference(tmp_path, reference)


# --- one run per folder, and a resume checked against run.json --------------------------------

def test_a_second_run_on_the_same_folder_is_refused_naming_the_first(base, data, tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from pathlib import Path\n"
        "from qlora_lab.finetune.locking import run_dir_lock\n"
        "with run_dir_lock(Path(sys.argv[1])):\n"
        "    print('locked', flush=True); time.sleep(60)\n"), str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(ValueError, match=rf"is in use by process {holder.pid} on "):
            run(base, data, tmp_path)
    finally:
        holder.kill()
        holder.wait()


def test_a_fresh_run_over_an_earlier_one_needs_resume_or_overwrite(base, data, reference, tmp_path):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(reference, out)
    with pytest.raises(ValueError, match=r"already holds a run \(run.json, metrics.jsonl, summary.json, "
                                         r"checkpoints, adapter\): continue it with --resume, replace it with --overwrite"):
        run(base, data, out)
    result = run(base, data, out, overwrite=True, max_steps=2)
    assert [r["step"] for r in result.metrics] == [1, 2]
    assert [p.name for p in checkpoints(out)] == ["step-000002"]  # the earlier run's are gone


# A value different from the run's for every field a resume may not change.
NOT_RESUMABLE = {
    "mode": "qlora", "model": "/elsewhere/model", "data": "instructions", "lora_r": 4, "lora_alpha": 8,
    "lora_dropout": 0.0, "target_modules": ("q_proj",), "quant_type": "fp4", "double_quant": False,
    "quant_storage": "bf16", "learning_rate": 1e-3, "lr_schedule": "linear", "warmup_steps": 3,
    "batch_size": 4, "gradient_accumulation": 2, "seq_len": 48, "gradient_checkpointing": True,
    "optimizer": "paged_adamw_8bit", "weight_decay": 0.01, "max_grad_norm": 0.5, "seed": 1, "eval_examples": 3,
}


def test_every_field_is_either_resumable_or_listed_here():
    from dataclasses import fields

    from qlora_lab.finetune.manifest import RESUMABLE

    assert {f.name for f in fields(FinetuneConfig)} == set(RESUMABLE) | set(NOT_RESUMABLE)


@pytest.mark.parametrize("name", sorted(NOT_RESUMABLE))
def test_a_resume_with_another_setting_is_refused_naming_it(base, data, stopped_at_11, name):
    old = RUN.get(name, getattr(FinetuneConfig(), name))
    old = data if name == "data" else old
    new = NOT_RESUMABLE[name]
    shown = lambda v: repr(list(v) if isinstance(v, tuple) else v)  # noqa: E731  (run.json holds lists)
    with pytest.raises(ValueError) as refused:
        run(base, data, stopped_at_11, **{"resume": True, name: new})
    message = str(refused.value)
    assert message.startswith(f"cannot resume {stopped_at_11}: settings differ from its run.json: ")
    assert f"{name} {shown(old)} -> {shown(new)}" in message and "\n" not in message


def test_a_resume_may_change_the_length_and_cadence_and_records_it(base, data, stopped_at_11, tmp_path):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(stopped_at_11, out)
    result = resume(base, data, out, max_steps=STEPS + 2, eval_every=3, save_every=0)
    assert result.summary["steps"] == STEPS + 2
    resumed = json.loads((out / "run.json").read_text())["resumed"]
    assert resumed == [{"from_step": 10, "changed": {"eval_every": [0, 3], "max_steps": [STEPS, STEPS + 2],
                                                     "output_dir": [str(stopped_at_11), str(out)],
                                                     "save_every": [2, 0]}}]
    with pytest.raises(ValueError, match="the run would end at step 4 .* before its checkpoint's step 14"):
        resume(base, data, out, max_steps=4)
