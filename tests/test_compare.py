"""`qlora-lab compare`: the table the course uses to check the guide's KPIs."""

import json

from qlora_lab.cli import main
from qlora_lab.finetune.compare import compare_modes, compare_shapes


def test_compare_modes_on_the_embedded_model(tmp_path):
    rows = compare_modes(("full", "lora", "qlora"), steps=2, output_dir=tmp_path,
                         batch_size=2, seq_len=64, eval_examples=2)
    assert [r["mode"] for r in rows] == ["full", "lora", "qlora"]
    full, lora, qlora = rows
    assert full["trainable_params"] > 20 * lora["trainable_params"]
    assert lora["trainable_params"] == qlora["trainable_params"]
    assert all(r["peak_memory_mb"] > 0 and r["s_per_step"] > 0 and r["tokens_per_s"] > 0 for r in rows)
    table = (tmp_path / "compare.md").read_text()
    assert "| full |" in table and "| qlora |" in table
    assert json.loads((tmp_path / "compare.json").read_text())["rows"] == rows


def test_random_init_shape_runs_on_cpu_with_the_tiny_shape(tmp_path, capsys):
    assert main(["compare", "--shape", "codellama-7b", "--random-init", "--seq-len", "32",
                 "--modes", "qlora", "lora", "--output-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "measuring the 'tiny' shape instead" in out
    rows = json.loads((tmp_path / "compare.json").read_text())["rows"]
    assert [r["mode"] for r in rows] == ["qlora", "lora"]
    assert all(r["shape"] == "tiny" and not r["oom"] and r["peak_memory_mb"] > 0 for r in rows)


def test_unknown_shape_is_rejected():
    import pytest

    with pytest.raises(ValueError, match="shape='gpt5'"):
        compare_shapes("gpt5")
