"""FinetuneConfig documents and checks itself, and the CLI is generated from it."""

import argparse
import dataclasses

import pytest

from qlora_lab.cli import main
from qlora_lab.finetune.config import FinetuneConfig

# A valid value different from the default, for every field (a new field must be added here).
CHANGED = {
    "mode": "lora", "model": "/models/codellama", "data": "instructions", "lora_r": 4, "lora_alpha": 8,
    "lora_dropout": 0.125, "target_modules": ("q_proj", "v_proj"), "quant_type": "fp4", "double_quant": False,
    "quant_storage": "bf16", "learning_rate": 3.3e-4, "lr_schedule": "linear", "warmup_steps": 7, "max_steps": 0,
    "epochs": 1.5, "batch_size": 3, "gradient_accumulation": 2, "seq_len": 96, "gradient_checkpointing": True,
    "optimizer": "paged_adamw_8bit", "weight_decay": 0.01, "max_grad_norm": 0.5, "seed": 42, "eval_every": 5,
    "eval_examples": 9, "save_every": 3, "keep_checkpoints": 5, "output_dir": "runs/elsewhere", "resume": True,
    "overwrite": True, "dist_timeout_s": 30,
}


def test_every_field_is_covered_here_and_carries_its_help():
    fields = dataclasses.fields(FinetuneConfig)
    assert {f.name for f in fields} == set(CHANGED)
    defaults = FinetuneConfig()
    for f in fields:
        assert len(f.metadata["help"]) > 10, f.name
        assert CHANGED[f.name] != getattr(defaults, f.name), f.name


@pytest.mark.parametrize("name", sorted(CHANGED))
def test_config_to_argv_to_config_round_trips_each_field(name):
    config = FinetuneConfig(**{name: CHANGED[name]} | ({"epochs": 1.0} if name == "max_steps" else {}))
    assert FinetuneConfig.from_argv(config.to_argv()) == config


def test_a_config_with_every_field_changed_round_trips():
    config = FinetuneConfig(**CHANGED)
    again = FinetuneConfig.from_argv(config.to_argv())
    assert again == config
    assert [getattr(again, k) for k in CHANGED] == list(CHANGED.values())


def test_float_values_round_trip_bit_exactly():
    for lr in (1e-4, 2e-3 / 3, 0.1 + 0.2):
        assert FinetuneConfig.from_argv(FinetuneConfig(learning_rate=lr).to_argv()).learning_rate == lr


def test_the_cli_options_are_the_fields_with_their_help(capsys):
    parser = argparse.ArgumentParser()
    FinetuneConfig.add_arguments(parser)
    options = {a.dest: a for a in parser._actions if a.dest != "help"}
    assert set(options) == set(CHANGED)
    for f in dataclasses.fields(FinetuneConfig):
        assert f.metadata["help"] in options[f.name].help
    with pytest.raises(SystemExit):
        main(["finetune", "--help"])
    assert "LoRA alpha: the update is scaled by alpha / r" in capsys.readouterr().out


def test_boolean_options_take_a_value_or_stand_alone():
    assert FinetuneConfig.from_argv(["--resume"]).resume is True
    assert FinetuneConfig.from_argv(["--resume", "false"]).resume is False
    assert FinetuneConfig.from_argv(["--double-quant", "no"]).double_quant is False
    with pytest.raises(argparse.ArgumentError, match="expected true/false"):
        FinetuneConfig.from_argv(["--double-quant", "maybe"])


@pytest.mark.parametrize("bad, message", [
    ({"mode": "qlora2"}, "mode='qlora2': choose one of"), ({"quant_type": "int4"}, "quant_type='int4'"),
    ({"optimizer": "sgd"}, "optimizer='sgd'"), ({"lr_schedule": "step"}, "lr_schedule='step'"),
    ({"quant_storage": "int8"}, "quant_storage='int8'"), ({"lora_r": 0}, "lora_r=0"),
    ({"lora_dropout": 1.0}, "lora_dropout=1.0"), ({"max_steps": 0}, "max_steps=0 and epochs=0.0"),
    ({"max_steps": -1, "epochs": 1.0}, "cannot be negative"), ({"batch_size": 0}, "batch_size=0"), ({"seq_len": 4}, "seq_len=4"),
    ({"learning_rate": 0.0}, "learning_rate=0.0"), ({"target_modules": ()}, "target_modules is empty"),
    ({"eval_examples": 0}, "eval_examples=0"), ({"dist_timeout_s": 0}, "dist_timeout_s=0"),
    ({"gradient_accumulation": 0}, "gradient_accumulation=0"), ({"lora_alpha": 0}, "lora_alpha=0"),
    ({"warmup_steps": -1}, "warmup_steps=-1"), ({"eval_every": -5}, "eval_every=-5"),
    ({"save_every": -1}, "save_every=-1"), ({"keep_checkpoints": 0}, "keep_checkpoints=0"),
    ({"max_grad_norm": -1.0}, "max_grad_norm=-1.0 must be positive"), ({"max_grad_norm": 0.0}, "max_grad_norm=0.0"),
    ({"weight_decay": -0.1}, "weight_decay=-0.1"), ({"seed": -3}, "seed=-3"), ({"output_dir": ""}, "output_dir is empty"),
])
def test_a_bad_setting_is_refused_when_the_config_is_made(bad, message):
    with pytest.raises(ValueError, match=message):
        FinetuneConfig(**bad)


def test_a_setting_changed_after_construction_is_checked_again():
    config = FinetuneConfig()
    config.lora_r = -2
    with pytest.raises(ValueError, match="lora_r=-2"):
        config.validate()
