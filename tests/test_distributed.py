"""Data-parallel fine-tuning: 2 CPU processes (Accelerate multi-CPU, gloo) on the embedded model.

One launch of `qlora-lab finetune --num-processes 2` is shared by several tests (module
fixture); it is compared with a single process that sees the same global batches. Then a
process is killed, or frozen, mid-run: the launch must fail with a clear message, fast.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch

from process_helpers import TIMEOUT_S, wait_for_steps
from qlora_lab.finetune.launch import free_port, launch_command
from qlora_lab.finetune.parallel import evenly_sharded, make_accelerator, rank_slice
from qlora_lab.finetune.adapters import attach_lora, lora_update_distance
from qlora_lab.finetune.batches import batch_indices
from qlora_lab.finetune.config import FinetuneConfig
from qlora_lab.finetune.loop import finetune
from qlora_lab.finetune.prepare import load_for_mode
from qlora_lab.finetune.rundir import read_metrics
from qlora_lab.model.llama_shapes import ModelShape
from qlora_lab.model.models import load_model
from qlora_lab.sizing.multi_gpu import per_device_memory, quant_constant_bytes

STEPS, PER_PROCESS_BATCH, SAVE_EVERY = 10, 2, 5
RUN = dict(max_steps=STEPS, seq_len=64, eval_examples=8, lora_dropout=0.0, save_every=SAVE_EVERY)


def _cli(output_dir, *extra):
    """`qlora-lab finetune ... --num-processes 2`, as a user types it (the CLI re-launches itself)."""
    args = FinetuneConfig(batch_size=PER_PROCESS_BATCH, output_dir=str(output_dir), **RUN).to_argv()
    return launch_command(1, [*args, "--num-processes", "2", *extra])



@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    started = time.perf_counter()
    proc = subprocess.run(_cli(out), capture_output=True, text=True, timeout=TIMEOUT_S)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out, proc, time.perf_counter() - started


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    """The same global batch (2 x 2 examples) in a single process."""
    out = tmp_path_factory.mktemp("single")
    finetune(FinetuneConfig(batch_size=2 * PER_PROCESS_BATCH, output_dir=str(out), **RUN))
    return out


# --- the pieces -----------------------------------------------------------------------------

def test_a_global_batch_is_split_into_disjoint_contiguous_shares():
    batch = [7, 3, 9, 1, 4, 8]
    shares = [rank_slice(batch, r, 3) for r in range(3)]
    assert shares == [[7, 3], [9, 1], [4, 8]]
    with pytest.raises(ValueError, match="cannot be split over 4 processes"):
        rank_slice(batch, 0, 4)


def test_validation_shards_have_equal_sizes_and_cover_the_kept_examples():
    shards = [evenly_sharded(list(range(9)), r, 2) for r in range(2)]
    assert [len(s) for s in shards] == [4, 4]
    assert sorted(shards[0] + shards[1]) == list(range(8))
    with pytest.raises(ValueError, match="cannot be shared by 2 processes"):
        evenly_sharded([1], 0, 2)


def test_the_launch_command_runs_accelerate_for_several_processes_and_python_for_one():
    assert launch_command(1, ["--max-steps", "3"])[1:] == ["-m", "qlora_lab.cli", "finetune", "--max-steps", "3"]
    assert launch_command(None, []) == launch_command(1, [])
    with pytest.raises(ValueError, match="num_processes=0"):
        launch_command(0, [])
    cmd = launch_command(2, ["--max-steps", "3"], port=29555)
    assert cmd[1:3] == ["-m", "accelerate.commands.launch"]
    assert cmd[cmd.index("--num_processes") + 1] == "2" and "--multi_gpu" in cmd
    assert cmd[-4:] == ["qlora_lab.cli", "finetune", "--max-steps", "3"]


def test_a_missing_accelerate_config_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="does not exist.*ddp.yaml.*fsdp_qlora.yaml"):
        launch_command(2, [], config_file=tmp_path / "nope.yaml")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_fsdp_without_gpu_is_refused_with_the_way_out(monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    with pytest.raises(ValueError, match="FSDP needs GPUs.*DDP"):
        make_accelerator()


def test_fsdp_storage_keeps_the_4_bit_codes_in_bf16_with_identical_outputs():
    """FSDP shards only floating tensors: the same codes in a bf16 container must compute the same."""
    ids = torch.randint(0, 8000, (2, 32), generator=torch.Generator().manual_seed(0))
    logits = {}
    for storage in (torch.uint8, torch.bfloat16):
        model, _ = load_model(None, quant_storage=storage)
        weight = model.model.layers[0].self_attn.q_proj.weight
        assert weight.dtype == storage
        assert weight.numel() * weight.element_size() == 320 * 320 // 2  # 4 bits per weight either way
        with torch.no_grad():
            logits[storage] = model(ids).logits
    assert torch.equal(logits[torch.uint8], logits[torch.bfloat16])


def _frozen_dtypes_per_layer(model) -> list[set]:
    """dtypes of each decoder layer's frozen tensors: what FSDP flattens into one unit."""
    return [{str(p.dtype) for name, p in layer.named_parameters() if "lora_" not in name}
            for layer in model.base_model.model.model.layers]


def test_sharded_qlora_keeps_one_dtype_per_layer_for_fsdp():
    config = FinetuneConfig(quant_storage="bf16")
    sharded = attach_lora(load_for_mode(config, torch.device("cpu"))[0], config, sharded=True)
    assert all(dtypes == {"torch.bfloat16"} for dtypes in _frozen_dtypes_per_layer(sharded))
    # without it, PEFT's k-bit preparation upcasts the norms: fp32 beside bf16 in one layer
    plain = attach_lora(load_for_mode(config, torch.device("cpu"))[0], config)
    assert all(dtypes == {"torch.bfloat16", "torch.float32"} for dtypes in _frozen_dtypes_per_layer(plain))


@pytest.fixture(scope="module")
def fsdp2_ranks(tmp_path_factory) -> list[dict]:
    """One 2-process FSDP2 run (tests/fsdp2_worker.py): what each rank reported."""
    out = tmp_path_factory.mktemp("fsdp2")
    worker = Path(__file__).with_name("fsdp2_worker.py")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_port", str(free_port()), str(worker), str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-4000:]
    return [json.loads((out / f"rank-{r}.json").read_text()) for r in range(2)]


def test_fsdp2_shards_the_bf16_stored_4_bit_base_over_two_cpu_processes_and_trains(fsdp2_ranks):
    """Accelerate runs FSDP only on GPUs; PyTorch's fully_shard runs on CPU: the same model preparation."""
    for r in fsdp2_ranks:
        assert r["linear4bit_storage"] == ["torch.bfloat16"]
        assert r["local_bytes"] == pytest.approx(r["full_bytes"] / 2, rel=0.01)  # each rank keeps half
        assert r["losses"][-1] < r["losses"][0] - 0.5
    assert fsdp2_ranks[0]["digest"] == fsdp2_ranks[1]["digest"]  # one model, sharded: gathered adapters agree


def test_fsdp_estimator_per_rank_equals_the_shards_each_rank_holds(fsdp2_ranks):
    """per_device_memory(..., 'fsdp', n_devices=2) item by item against the bytes FSDP2 left on each rank."""
    r0 = fsdp2_ranks[0]
    shape = ModelShape(**r0["shape"])
    estimate = per_device_memory(shape, "qlora", "fsdp", n_devices=2, r=r0["lora_r"],
                                 target_modules=r0["target_modules"])
    constants = quant_constant_bytes(shape)  # bitsandbytes' quant_state: on every rank, not sharded
    for r in fsdp2_ranks:  # every dimension splits evenly over 2 ranks here: the bytes are exact
        held = r["held"]
        assert held["frozen"] == estimate.weights - constants  # 4-bit codes in bf16 + bf16 embeddings, norms
        assert held["adapters"] == estimate.adapters  # fp32 LoRA A, B
        assert held["gradients"] == estimate.gradients
        assert held["optimizer"] == estimate.optimizer  # AdamW's m and v
        # nested absmax: whole 256-block floats per tensor (ceil) where the estimator counts a fraction
        assert r["quant_constants"] == pytest.approx(constants, rel=1e-3)


# --- two processes ------------------------------------------------------------------------

def test_each_process_trains_on_its_own_examples(two_processes):
    out, _, _ = two_processes
    for row in read_metrics(out):
        first, second = (set(r["examples"]) for r in row["ranks"])
        assert len(first) == len(second) == PER_PROCESS_BATCH and not first & second, row["step"]


def test_the_adapters_are_identical_on_both_processes_after_every_step(two_processes):
    out, _, _ = two_processes
    rows = read_metrics(out)
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    for row in rows:
        digests = [r["digest"] for r in row["ranks"]]
        assert [r["rank"] for r in row["ranks"]] == [0, 1]
        assert digests[0] == digests[1] and re.fullmatch(r"[0-9a-f]{40}", digests[0]), row["step"]
    assert len({r["ranks"][0]["digest"] for r in rows}) == STEPS  # and they do change every step


def test_the_validation_loss_falls(two_processes):
    out, _, _ = two_processes
    summary = json.loads((out / "summary.json").read_text())
    assert summary["num_processes"] == 2 and summary["distributed"] == "MULTI_CPU"
    assert summary["global_batch"] == 2 * PER_PROCESS_BATCH
    assert summary["val_loss_after"] < summary["val_loss_before"] - 0.005


def test_only_the_main_process_writes_and_reports(two_processes):
    out, proc, _ = two_processes
    assert sorted(p.name for p in out.iterdir()) == [".lock", "adapter", "checkpoints", "metrics.jsonl", "run.json",
                                                     "summary.json"]
    # the periodic checkpoint, and the final one (written before the adapter, so that it is never lost)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [f"step-{SAVE_EVERY:06d}", f"step-{STEPS:06d}"]
    assert len(read_metrics(out)) == STEPS  # one line per step, not one per process
    assert proc.stdout.count("validation loss") == 1
    assert proc.stderr.count("affinage QLoRA:   0%") == 1  # one progress bar


def test_two_processes_match_one_process_with_the_same_global_batch(two_processes, one_process):
    out, _, _ = two_processes
    n_train = json.loads((out / "summary.json").read_text())["train_examples"]
    for multi, single in zip(read_metrics(out), read_metrics(one_process), strict=True):
        together = multi["ranks"][0]["examples"] + multi["ranks"][1]["examples"]
        assert together == batch_indices(n_train, 2 * PER_PROCESS_BATCH, multi["step"] - 1, seed=0)
        assert multi["loss"] == pytest.approx(single["loss"], abs=0.02), multi["step"]
    assert lora_update_distance(out / "adapter", one_process / "adapter") < 0.05


# --- failures -------------------------------------------------------------------------------

def _start_long_run(output_dir, *extra):
    cmd = _cli(output_dir, "--max-steps", "400", *extra)
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _worker(launcher_pid, rank):
    """The training process of `rank` under the launcher (found by its LOCAL_RANK)."""
    deadline = time.time() + TIMEOUT_S
    while time.time() < deadline:
        for child in psutil.Process(launcher_pid).children(recursive=True):
            try:
                if "qlora_lab.cli" in " ".join(child.cmdline()) and child.environ().get("LOCAL_RANK") == str(rank):
                    return child
            except psutil.NoSuchProcess:
                continue
        time.sleep(0.2)
    raise TimeoutError(f"no training process of rank {rank}")



def test_a_killed_process_fails_the_run_at_once_and_the_run_resumes(tmp_path):
    launch = _start_long_run(tmp_path)
    wait_for_steps(tmp_path, SAVE_EVERY + 2)
    _worker(launch.pid, 1).kill()
    killed_at = time.perf_counter()
    output, _ = launch.communicate(timeout=TIMEOUT_S)
    assert time.perf_counter() - killed_at < 60
    assert launch.returncode != 0
    assert "the multi-process run failed" in output and "Signal 9 (SIGKILL)" in output
    assert re.search(r"The last checkpoint is \S+step-0000\d\d: continue with --resume", output)
    assert not (tmp_path / "adapter").exists()
    # nothing lost: both processes restart from the checkpoint and finish; each step logged once
    # (to a nearer end than the 400 steps first asked for, to keep the test short)
    resumed = subprocess.run(_cli(tmp_path, "--max-steps", "30", "--resume"), capture_output=True, text=True,
                             timeout=TIMEOUT_S)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert [r["step"] for r in read_metrics(tmp_path)] == list(range(1, 31))
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()


def test_a_frozen_process_fails_the_run_after_the_timeout_instead_of_hanging(tmp_path):
    launch = _start_long_run(tmp_path, "--dist-timeout-s", "5")
    wait_for_steps(tmp_path, 2)
    frozen = _worker(launch.pid, 1)
    frozen.send_signal(signal.SIGSTOP)
    try:
        output, _ = launch.communicate(timeout=180)
    finally:
        if frozen.is_running():
            frozen.kill()
    assert launch.returncode != 0
    assert "Timed out waiting 5000ms" in output and "the multi-process run failed" in output


def test_ctrl_c_stops_every_process_and_the_main_one_saves_a_checkpoint(tmp_path):
    launch = subprocess.Popen(_cli(tmp_path, "--max-steps", "400"), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, start_new_session=True)
    wait_for_steps(tmp_path, 3)
    os.killpg(launch.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole process group
    output, _ = launch.communicate(timeout=120)
    assert launch.returncode == 130, output[-3000:]
    assert output.count("Interrupted: checkpoint saved to") == 1  # the main process only
    saved = [p.name for p in (tmp_path / "checkpoints").iterdir()]
    assert len(saved) == 1 and int(saved[0].removeprefix("step-")) >= 3
    assert f"interrupted. The last checkpoint is {tmp_path / 'checkpoints' / saved[0]}" in output
