"""The `qlora-lab` command line: dispatch, sysinfo, and clear errors."""

import json
import subprocess
import sys

from qlora_lab.cli import COMMANDS, main


def test_every_command_module_has_the_two_entry_points():
    import importlib

    for module_name, _ in COMMANDS.values():
        module = importlib.import_module(module_name)
        assert callable(module.configure_parser) and callable(module.run), module_name


def test_no_command_prints_help(capsys):
    assert main([]) == 2
    assert "finetune" in capsys.readouterr().out


def test_sysinfo_reports_a_working_4bit_path():
    out = subprocess.run([sys.executable, "-m", "qlora_lab.cli", "sysinfo", "--json"],
                         capture_output=True, text=True, check=True).stdout
    info = json.loads(out)
    assert info["four_bit_works"] is True
    assert info["libraries"]["bitsandbytes"].startswith("0.")
    assert info["device"] in ("cpu", "cuda")
    assert "Failed to load CPU gemm_4bit_forward" not in out


def test_finetune_bad_mode_is_one_clear_error():
    proc = subprocess.run([sys.executable, "-m", "qlora_lab.cli", "finetune", "--mode", "qlora2"],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert "mode='qlora2'" in proc.stderr and "Traceback" not in proc.stderr


def test_finetune_malformed_data_names_the_line(tmp_path):
    data = tmp_path / "bad.jsonl"
    data.write_text('{"text": "ok"}\n{oops\n')
    proc = subprocess.run([sys.executable, "-m", "qlora_lab.cli", "finetune", "--mode", "lora",
                           "--data", str(data), "--output-dir", str(tmp_path / "out")], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "line 2: not valid JSON" in proc.stderr and "Traceback" not in proc.stderr


def test_bitsandbytes_startup_noise_never_reaches_students():
    """transformers imports bitsandbytes on its own; importing qlora_lab first keeps it quiet."""
    code = "import qlora_lab.finetune.loop\nfrom transformers import get_scheduler\nimport bitsandbytes"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "Failed to load CPU gemm_4bit_forward" not in proc.stdout + proc.stderr
