"""The pretraining command's pieces: schedule, config checks, CLI options."""

import argparse

import pytest

from qlora_lab.cli.pretrain import configure_parser
from qlora_lab.model.pretrain import PretrainConfig, learning_rate


def test_warmup_then_cosine_to_the_floor():
    cfg = PretrainConfig(lr=1e-3, warmup_steps=10, min_lr_ratio=0.1)
    assert learning_rate(0.0, 0, cfg) == pytest.approx(1e-4)
    assert learning_rate(0.0, 9, cfg) == pytest.approx(1e-3)
    assert learning_rate(0.5, 500, cfg) == pytest.approx(1e-3 * (0.1 + 0.9 * 0.5))
    assert learning_rate(1.0, 1000, cfg) == pytest.approx(1e-4)
    assert learning_rate(1.7, 1000, cfg) == pytest.approx(1e-4)  # past the end: stays at the floor


@pytest.mark.parametrize(
    "changes, match",
    [({"hidden_size": 300}, "hidden_size=300"), ({"intermediate_size": 900}, "intermediate_size=900"),
     ({"num_attention_heads": 3}, "num_attention_heads=3"), ({"steps": 0}, "steps=0")],
)
def test_bad_config_is_named(changes, match):
    with pytest.raises(ValueError, match=match):
        PretrainConfig(**changes)


def test_default_config_fits_bnb_cpu_kernels():
    cfg = PretrainConfig()
    cfg.validate()
    assert cfg.hidden_size % 64 == 0 and cfg.intermediate_size % 64 == 0


def test_cli_exposes_every_config_field_with_its_default():
    parser = argparse.ArgumentParser()
    configure_parser(parser)
    args = parser.parse_args(["--steps", "7", "--no-autocast-bf16"])
    assert args.steps == 7 and args.autocast_bf16 is False
    assert args.hidden_size == PretrainConfig().hidden_size and args.max_minutes is None
