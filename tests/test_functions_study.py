"""Chapter 9's study summaries against hand computations on a small made-up study."""

import math

import pytest

from qlora_lab.course.functions_study import (mean_and_spread, mode_summary, paired_ratio, selection_by_criterion,
                                              sweep_rows)


def run(mode, seed, lr, pass_at_1, val_loss, s_per_step=1.0):
    return {"mode": mode, "seed": seed, "learning_rate": lr, "pass_at_1": pass_at_1, "val_loss": val_loss,
            "s_per_step": s_per_step, "load_avg_1min_before": 1.0, "peak_tensor_bytes": 100}


STUDY = {
    "kept_learning_rate": {"lora": 3e-3, "qlora": 3e-3},
    "runs": [run("lora", 0, 3e-3, 0.5, 1.0), run("lora", 1, 3e-3, 1.0, 0.8),
             run("qlora", 0, 3e-3, 0.6, 1.1), run("qlora", 1, 3e-3, 0.8, 0.9),
             run("qlora", 0, 1e-3, 0.9, 1.5),  # a swept rate, not kept
             run("lora", 2, 3e-3, 0.0, 2.0)],  # no QLoRA at seed 2: not paired
}


def test_mean_and_sample_spread():
    assert mean_and_spread([1.0, 3.0]) == (2.0, math.sqrt(2.0))  # (1-2)^2 + (3-2)^2 over n-1 = 1
    assert mean_and_spread([5.0]) == (5.0, 0.0)
    with pytest.raises(ValueError):
        mean_and_spread([])


def test_ratio_is_paired_by_seed_at_the_kept_rate():
    mean, spread, pairs = paired_ratio(STUDY, "qlora", "lora")
    # seed 0: 0.6 / 0.5 = 1.2 ; seed 1: 0.8 / 1.0 = 0.8 ; seed 2 has no QLoRA run
    assert pairs == 2 and mean == pytest.approx(1.0) and spread == pytest.approx(math.sqrt(0.08))


def test_ratio_without_a_usable_pair_is_a_clear_error():
    zero = {"kept_learning_rate": {"lora": 1.0, "qlora": 1.0},
            "runs": [run("lora", 0, 1.0, 0.0, 1.0), run("qlora", 0, 1.0, 0.5, 1.0)]}
    with pytest.raises(ValueError, match="non-zero lora"):
        paired_ratio(zero)


def test_mode_summary_keeps_the_kept_rate_only():
    rows = {r["mode"]: r for r in mode_summary(STUDY)}
    assert set(rows) == {"LoRA bf16", "QLoRA"}  # no full run: no row
    assert rows["QLoRA"]["seeds"] == 2 and rows["QLoRA"]["pass_at_1"] == pytest.approx(0.7)
    assert rows["LoRA bf16"]["val_loss"] == pytest.approx((1.0 + 0.8 + 2.0) / 3)


def test_sweep_rows_are_the_first_seed_with_the_kept_rate_marked():
    rows = sweep_rows(STUDY)
    assert [(r["mode"], r["learning_rate"], r["kept"]) for r in rows] == [
        ("LoRA bf16", 3e-3, True), ("QLoRA", 1e-3, False), ("QLoRA", 3e-3, True)]


def test_selection_by_criterion_names_where_loss_and_pass_at_1_disagree():
    rows = selection_by_criterion(STUDY)
    # only QLoRA has two rates at seed 0: loss picks 3e-3 (1.1 < 1.5), pass@1 picks 1e-3 (0.9 > 0.6)
    assert rows == [{"mode": "QLoRA", "rates": 2, "by_loss": 3e-3, "pass_by_loss": 0.6, "by_pass": 1e-3,
                     "pass_by_pass": 0.9, "agree": False}]
