"""Real fine-tunes of the embedded model on CPU: QLoRA learns, resume loses nothing, bad input fails clearly."""

from __future__ import annotations

import json

import pytest
import torch

from qlora_lab.finetune.data import DataError
from qlora_lab.finetune.adapters import load_adapter
from qlora_lab.finetune.config import FinetuneConfig
from qlora_lab.finetune.loop import finetune
from qlora_lab.finetune.rundir import read_metrics

# Small enough for 2 shared cores: batch 2 of 32 tokens.
FAST = dict(batch_size=2, seq_len=32, eval_examples=4, warmup_steps=2, lora_dropout=0.0)


def test_qlora_learns_with_frozen_4bit_base_and_survives_an_eval_pass(tmp_path):
    from qlora_lab.backends import import_bnb
    from qlora_lab.model.models import load_model

    bnb = import_bnb()
    model, tokenizer = load_model(None, quantization="nf4")
    base = {n: p.detach().clone() for n, p in model.named_parameters() if p.dtype == torch.uint8}
    assert base, "the QLoRA base holds no 4-bit weights"
    # eval_every=5: validation (eval mode, no grad) runs mid-training, the CPU packing hazard
    config = FinetuneConfig(mode="qlora", max_steps=20, eval_every=5, output_dir=str(tmp_path), **FAST)
    result = finetune(config, model=model, tokenizer=tokenizer)
    losses = [r["loss"] for r in result.metrics]
    assert len(losses) == 20
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5
    # learning continues after the evaluations: later steps still change the loss and grads flow
    after_eval = [r["grad_norm"] for r in result.metrics if r["step"] > 5]
    assert all(g > 0 for g in after_eval)
    lora_b = [p for n, p in result.model.named_parameters() if "lora_B" in n]
    assert lora_b and all(float(p.detach().abs().sum()) > 0 for p in lora_b)  # B starts at 0
    linear4bit = [m for m in result.model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(linear4bit) == 7 * result.model.config.num_hidden_layers
    checked = set()
    for n, p in result.model.named_parameters():
        key = n.replace("base_model.model.", "").replace(".base_layer", "")
        if key in base:
            assert isinstance(p, bnb.nn.Params4bit) and p.dtype == torch.uint8 and not p.requires_grad
            assert torch.equal(p.detach(), base[key])
            checked.add(key)
    # every 4-bit base weight was found under its PEFT name and compared (a rename would skip them all)
    assert checked == set(base) and len(checked) == len(linear4bit)
    assert result.summary["val_loss_after"] < result.summary["val_loss_before"]
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()


def test_interrupted_run_resumes_without_losing_or_repeating_a_step(tmp_path):
    common = dict(mode="lora", max_steps=8, save_every=3, **FAST)
    reference = finetune(FinetuneConfig(output_dir=str(tmp_path / "ref"), **common))

    def ctrl_c_at_step_4(row: dict) -> None:
        if row["step"] == 4:
            raise KeyboardInterrupt  # what Ctrl-C does: a checkpoint is saved at step 4

    run_dir = tmp_path / "run"
    stopped = finetune(FinetuneConfig(output_dir=str(run_dir), **common), callbacks=[ctrl_c_at_step_4])
    assert stopped.summary["interrupted"] and stopped.summary["steps"] == 4
    resumed = finetune(FinetuneConfig(output_dir=str(run_dir), resume=True, **common))
    steps = [r["step"] for r in read_metrics(run_dir)]
    assert steps == list(range(1, 9))
    assert resumed.metrics[-1]["loss"] == pytest.approx(reference.metrics[-1]["loss"], abs=1e-3)
    assert resumed.summary["val_loss_after"] == pytest.approx(reference.summary["val_loss_after"], abs=1e-3)


@pytest.mark.parametrize("bad, message", [
    (dict(mode="qat"), "mode="),
    (dict(lora_r=0), "lora_r="),
    (dict(max_steps=0), "max_steps="),
    (dict(optimizer="sgd"), "optimizer="),
])
def test_bad_settings_raise_one_clear_error(tmp_path, bad, message):
    with pytest.raises(ValueError, match=message):
        finetune(FinetuneConfig(output_dir=str(tmp_path), **bad))


def test_seq_len_above_context_is_refused(tmp_path):
    from qlora_lab.model.models import load_model

    model, tokenizer = load_model(None, quantization="none")
    too_long = model.config.max_position_embeddings + 1
    with pytest.raises(ValueError, match="seq_len"):
        finetune(FinetuneConfig(mode="lora", seq_len=too_long, output_dir=str(tmp_path)), model=model, tokenizer=tokenizer)


def test_unwritable_output_dir_is_refused_before_training(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(ValueError, match="not writable"):
        finetune(FinetuneConfig(output_dir=str(blocker / "run")))


@pytest.mark.parametrize("content, message", [("", "empty"), ('{"text": "x = 1"}\n{oops\n', "line 2")])
def test_bad_data_file_is_reported(tmp_path, content, message):
    data = tmp_path / "data.jsonl"
    data.write_text(content)
    with pytest.raises(DataError, match=message):
        finetune(FinetuneConfig(data=str(data), output_dir=str(tmp_path / "run")))


def test_adapter_for_another_base_is_refused(tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    from qlora_lab.finetune.adapters import BASE_FINGERPRINT, base_fingerprint
    from qlora_lab.model.models import load_model

    other = LlamaForCausalLM(LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=2, vocab_size=128))
    adapter = get_peft_model(other, LoraConfig(r=2, target_modules=["q_proj"]))
    adapter.save_pretrained(tmp_path)
    (tmp_path / BASE_FINGERPRINT).write_text(json.dumps(base_fingerprint(other)))
    model, _ = load_model(None, quantization="none")
    with pytest.raises(ValueError, match="another base model"):
        load_adapter(model, tmp_path)
