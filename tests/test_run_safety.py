"""Every command answers a user error with one line and exit status 2; `--debug` shows the traceback.

In-process (`qlora_lab.cli.main`), so that each case costs milliseconds, or the load of the
embedded model when the check needs it (its context length, the data after tokenizing).
"""

from __future__ import annotations

import json

import pytest

from qlora_lab.cli import main
from qlora_lab.finetune.locking import run_dir_lock
from qlora_lab.finetune.rundir import METRICS_FILE


def error_line(capsys, argv: list[str]) -> str:
    """Run the command; it must exit 2 with its last stderr line an error and no traceback."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    line = err.strip().splitlines()[-1]
    assert line.startswith(f"qlora-lab {argv[0]}: error: ") and line.endswith("(--debug shows the traceback)")
    return line


@pytest.mark.parametrize("options, message", [
    (["--max-grad-norm", "-1"], "max_grad_norm=-1.0 must be positive"),
    (["--max-grad-norm", "0"], "max_grad_norm=0.0 must be positive"),
    (["--save-every", "-2"], "save_every=-2 cannot be negative"),
    (["--eval-every", "-1"], "eval_every=-1 cannot be negative"),
    (["--warmup-steps", "-4"], "warmup_steps=-4 cannot be negative"),
    (["--keep-checkpoints", "0"], "keep_checkpoints=0 must be at least 1"),
    (["--num-processes", "0"], "--num-processes 0: must be at least 1"),
    (["--mode", "full", "--merge-to", "merged"], "--merge-to merges a LoRA adapter"),
    (["--resume"], "holds no checkpoint"),
])
def test_finetune_refuses_a_bad_option_before_any_work(capsys, tmp_path, options, message):
    line = error_line(capsys, ["finetune", "--output-dir", str(tmp_path / "run"), *options])
    assert message in line
    assert not (tmp_path / "run" / METRICS_FILE).exists()


def test_an_unwritable_merge_target_is_refused_before_training(capsys, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    line = error_line(capsys, ["finetune", "--output-dir", str(tmp_path / "run"), "--merge-to", str(blocker / "m")])
    assert f"output_dir='{blocker / 'm'}' is not writable" in line
    assert not (tmp_path / "run" / METRICS_FILE).exists()


def test_an_output_dir_that_is_a_file_is_named(capsys, tmp_path):
    (tmp_path / "run").write_text("")
    assert "is a file, not a folder" in error_line(capsys, ["finetune", "--output-dir", str(tmp_path / "run")])


def test_a_fresh_run_in_a_folder_with_a_run_and_a_busy_folder_are_refused(capsys, tmp_path):
    (tmp_path / METRICS_FILE).write_text("{}\n")
    line = error_line(capsys, ["finetune", "--output-dir", str(tmp_path)])
    assert "already holds a run (metrics.jsonl): continue it with --resume, replace it with --overwrite" in line
    with run_dir_lock(tmp_path):
        line = error_line(capsys, ["finetune", "--output-dir", str(tmp_path), "--overwrite"])
    assert f"is in use by process {__import__('os').getpid()} on " in line


@pytest.mark.parametrize("content, message", [
    ("\ufeff{}".encode("utf-16"), "is not UTF-8 text (byte 0): a binary file, or another encoding such as UTF-16"),
    (bytes(range(256)), "is not UTF-8 text"),
    (None, "is a folder, not a .jsonl file"),
])
def test_unreadable_data_is_named(capsys, tmp_path, content, message):
    data = tmp_path / "data.jsonl"
    data.mkdir() if content is None else data.write_bytes(content)
    line = error_line(capsys, ["finetune", "--mode", "lora", "--data", str(data), "--output-dir", str(tmp_path / "r")])
    assert f"{data} {message}" in line


def test_prompts_longer_than_seq_len_say_why_there_is_no_example(capsys, tmp_path):
    data = tmp_path / "long.jsonl"
    data.write_text("".join(json.dumps({"instruction": "word " * 80, "response": "x"}) + "\n" for _ in range(4)))
    line = error_line(capsys, ["finetune", "--mode", "lora", "--data", str(data), "--seq-len", "16",
                               "--output-dir", str(tmp_path / "r")])
    assert "the prompt fills the seq_len=16 tokens and leaves no response token to learn" in line


@pytest.mark.parametrize("argv, message", [
    (["generate", "--prompt", "  "], "--prompt is empty"),
    (["generate", "--prompt", "def f(", "--max-new-tokens", "0"], "--max-new-tokens 0: must be at least 1"),
    (["generate", "--prompt", "def f(", "--temperature", "-1"], "--temperature -1.0: cannot be negative"),
    (["eval", "--max-files", "0"], "--max-files 0: must be at least 1"),
    (["eval", "--seq-len", "100000"], "--seq-len 100000 is above the model's context of"),
    (["compare", "--max-steps", "-1"], "max_steps=-1"),
])
def test_eval_generate_and_compare_refuse_bad_options(capsys, argv, message):
    assert message in error_line(capsys, argv)


def test_a_missing_incomplete_or_damaged_adapter_is_one_line(capsys, tmp_path):
    assert "holds no PEFT adapter" in error_line(capsys, ["eval", "--adapter", str(tmp_path / "none")])
    (tmp_path / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 8}))
    line = error_line(capsys, ["generate", "--prompt", "x", "--adapter", str(tmp_path)])
    assert "holds no adapter weights (adapter_model.safetensors or adapter_model.bin missing)" in line
    (tmp_path / "adapter_model.safetensors").write_bytes(b"not safetensors")
    assert "(damaged?)" in error_line(capsys, ["eval", "--adapter", str(tmp_path), "--max-files", "1"])


def test_debug_shows_the_traceback_instead(tmp_path):
    with pytest.raises(ValueError, match="max_grad_norm=-1.0"):
        main(["finetune", "--debug", "--max-grad-norm", "-1", "--output-dir", str(tmp_path)])
