"""TrainingMonitor flags divergence, NaN and exploding gradients; reports round-trip."""

import math

import pytest
import torch
from torch import nn

from qlora_lab.course.monitoring import TrainingMonitor, gradient_norm, monitored_steps, read_run_report, write_run_report


def monitor_with(losses, grad_norm=1.0, **kwargs):
    monitor = TrainingMonitor(**kwargs)
    for step, loss in enumerate(losses):
        rec = monitor.record(step, loss)
        rec.grad_norm = grad_norm
    return monitor


def test_a_healthy_run_has_no_alert():
    assert monitor_with([3.0, 2.5, 2.6, 2.2, 2.0]).alerts() == []


def test_monitored_steps_trains_a_tiny_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(16, 8), nn.Linear(8, 16))

    class Wrapped(nn.Module):  # the causal-LM calling convention: model(input_ids=, labels=).loss
        def __init__(self):
            super().__init__()
            self.net = model

        def forward(self, input_ids, labels):
            logits = self.net(input_ids[:, :-1])
            loss = nn.functional.cross_entropy(logits.reshape(-1, 16), labels[:, 1:].reshape(-1))
            return type("Out", (), {"loss": loss})()

    batch = torch.arange(16).repeat(2, 1)
    monitor = monitored_steps(Wrapped(), [batch] * 15, lr=0.05)
    summary = monitor.summary()
    assert summary["steps"] == 15 and summary["last_loss"] < 0.7 * summary["first_loss"]
    assert all(r.grad_norm > 0 for r in monitor.records) and summary["alerts"] == []


@pytest.mark.parametrize("losses, word", [([3.0, 2.0, 7.0], "dépasse"), ([3.0, float("nan")], "non finie"),
                                          ([3.0, math.inf], "non finie")])
def test_divergence_and_nan_are_flagged(losses, word):
    alerts = monitor_with(losses).alerts()
    assert len(alerts) == 1 and word in alerts[0]


def test_exploding_gradient_is_flagged():
    assert "gradient" in monitor_with([3.0, 2.9], grad_norm=1e4).alerts()[0]


def test_gradient_norm_is_the_global_l2_norm():
    model = nn.Linear(3, 2, bias=False)
    model.weight.grad = torch.tensor([[3.0, 0.0, 0.0], [0.0, 4.0, 0.0]])
    assert gradient_norm(model) == pytest.approx(5.0)


def test_summary_and_report_round_trip(tmp_path):
    monitor = monitor_with([3.0, 2.0, 1.5])
    summary = monitor.summary()
    assert (summary["first_loss"], summary["best_loss"], summary["steps"]) == (3.0, 1.5, 3)
    write_run_report(tmp_path, {"r": 16, "lr": 2e-4}, summary)
    report = read_run_report(tmp_path)
    assert report["config"]["r"] == 16 and report["results"]["last_loss"] == 1.5
    assert report["environment"]["torch"] == torch.__version__
    assert "Rapport" in (tmp_path / "README.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("kwargs", [dict(spike_factor=1.0), dict(max_grad_norm=0)])
def test_bad_thresholds_are_clear_errors(kwargs):
    with pytest.raises(ValueError):
        TrainingMonitor(**kwargs)
