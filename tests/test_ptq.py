"""Dynamic INT8 PTQ demo: the quantized copy is smaller, keeps its accuracy, and says where the API went."""

import pytest
import torch
from torch import nn

from qlora_lab.quant.ptq import (accuracy, inference_seconds, make_mlp, make_task, ptq_report, quantize_dynamic_int8,
                           serialized_size_bytes, single_thread, speed_by_width, train_classifier)


@pytest.fixture(scope="module")
def trained():
    task = make_task(n_train=600, n_test=400, noise=1.0)
    model = make_mlp(32, task.n_classes, hidden=64, depth=3)
    losses = train_classifier(model, task, epochs=4)
    return task, model, losses


def test_task_is_seeded_and_shaped():
    a, b = make_task(n_train=50, n_test=20, seed=1), make_task(n_train=50, n_test=20, seed=1)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
    assert a.x_train.shape == (50, 32) and a.y_test.shape == (20,)
    assert int(a.y_train.max()) < a.n_classes


def test_training_learns(trained):
    task, model, losses = trained
    assert losses[-1] < losses[0]
    assert accuracy(model, task.x_test, task.y_test) > 0.8  # chance is 1/8


def test_dynamic_int8_replaces_every_linear_and_warns(trained):
    _, model, _ = trained
    qmodel, messages = quantize_dynamic_int8(model)
    kinds = [type(m).__name__ for m in qmodel.modules()]
    assert kinds.count("Linear") == 3 and all(isinstance(m, nn.Linear) for m in model if not isinstance(m, nn.ReLU))
    assert all(type(m).__module__.startswith("torch.ao.nn.quantized") for m in qmodel if not isinstance(m, nn.ReLU))
    assert any("torchao" in m or "deprecated" in m for m in messages)


def test_report_smaller_same_accuracy(trained):
    task, model, _ = trained
    rows, _ = ptq_report(model, task, repeats=2)
    fp32, int8 = rows
    assert int8.size_kib < 0.5 * fp32.size_kib  # 1 byte instead of 4 per weight, plus scales
    assert abs(int8.accuracy - fp32.accuracy) < 0.02
    assert fp32.ms_per_batch > 0 and int8.ms_per_batch > 0


def test_serialized_size_counts_weights():
    model = nn.Linear(100, 100)
    assert serialized_size_bytes(model) >= 4 * (100 * 100 + 100)


def test_speed_rows_and_timing_validation():
    rows = speed_by_width(widths=(32,), batch=4, repeats=1)
    assert rows[0].width == 32 and rows[0].speedup > 0
    with pytest.raises(ValueError, match="repeats"):
        inference_seconds(nn.Linear(2, 2), torch.zeros(1, 2), repeats=0)


def test_single_thread_restores_thread_count():
    before = torch.get_num_threads()
    with single_thread():
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


@pytest.mark.parametrize("kwargs", [{"depth": 0}, {"hidden": 0}])
def test_bad_mlp_raises(kwargs):
    with pytest.raises(ValueError):
        make_mlp(4, 2, **kwargs)
