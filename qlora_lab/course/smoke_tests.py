"""Progressive tests before a long run: each rung is cheap and must pass before the next.

The guide says "tests progressifs"; in practice that is a ladder of checks, from "the
model loads and generates" to "an adapter saved to disk gives back the same outputs",
run in seconds on the real model before any long fine-tune.

    results = run_ladder(model, tokenizer, batch)
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from qlora_lab.french import nombre, pourcentage, scientifique


@dataclass
class CheckResult:
    """One rung: its name (French), whether it passed, and the number that decided."""

    name: str
    passed: bool
    detail: str


def check_generates(model: nn.Module, tokenizer, prompt: str = "def main():", max_new_tokens: int = 8) -> CheckResult:
    """Rung 1: the model loads and produces new tokens."""
    ids = tokenizer(prompt, return_tensors="pt").to(model.device)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False)
    n_new = out.shape[1] - ids["input_ids"].shape[1]
    return CheckResult("le modèle génère", n_new > 0, f"{n_new} tokens générés")


def check_loss_is_sane(model: nn.Module, batch: torch.Tensor) -> CheckResult:
    """Rung 2: the loss is finite and clearly below ln(vocab), the loss of a uniform guess.

    "Clearly": under 90 % of ln(V), so that an untrained (random) model fails.
    """
    with torch.no_grad():
        loss = model(input_ids=batch, labels=batch).loss.item()
    uniform = math.log(model.config.vocab_size)
    return CheckResult("perte finie et meilleure que le hasard", math.isfinite(loss) and loss < 0.9 * uniform,
                       f"perte {nombre(loss, 3)} (hasard : ln(V) = {nombre(uniform, 3)})")


def check_overfits_one_batch(model: nn.Module, batch: torch.Tensor, steps: int = 8, lr: float = 1e-2,
                             min_drop: float = 0.1) -> CheckResult:
    """Rung 3: a few steps on one batch lower its loss by at least `min_drop` (10 %).

    If the trainable parameters cannot even memorise one batch, a long run will not learn
    either (frozen adapters, lost gradients, a wrong label shift...).
    """
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        return CheckResult("surapprend un batch", False, "aucun paramètre entraînable")
    optimizer = torch.optim.AdamW(params, lr=lr)
    model.train()
    losses = []
    for _ in range(steps):
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    model.eval()
    drop = 1 - losses[-1] / losses[0]
    return CheckResult("surapprend un batch", drop >= min_drop, f"perte {nombre(losses[0], 3)} → {nombre(losses[-1], 3)} (−{pourcentage(drop, 0)})")


def check_adapter_round_trip(model: nn.Module, batch: torch.Tensor, load_base: Callable[[], nn.Module]) -> CheckResult:
    """Rung 4: save the adapter, load it onto a fresh base model, get the same logits."""
    from peft import PeftModel

    with torch.no_grad():
        expected = model(input_ids=batch).logits.float()
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        reloaded = PeftModel.from_pretrained(load_base(), tmp).eval()
        with torch.no_grad():
            got = reloaded(input_ids=batch).logits.float()
    diff = (got - expected).abs().max().item()
    return CheckResult("l'adaptateur sauvegardé se recharge à l'identique", diff < 1e-3, f"écart max des logits {scientifique(diff)}")


def run_ladder(checks: list[Callable[[], CheckResult]]) -> list[CheckResult]:
    """Run the rungs in order; stop at the first failure (the next ones would be meaningless)."""
    results = []
    for check in checks:
        result = check()
        results.append(result)
        if not result.passed:
            break
    return results


def format_results(results: list[CheckResult]) -> str:
    """One line per rung: ✓/✗, name, deciding number."""
    return "\n".join(f"{'✓' if r.passed else '✗'} {r.name:50s} {r.detail}" for r in results)
