"""pass@1 of a model on the function benchmark: greedy completions, run against their tests.

    problems = make_problems("heldout", n=100)
    score = score_functions(model, tokenizer, problems)
    print(score.line())                      # pass@1 = 0.72 (72/100)

Generation is batched (left padding, so every row's last token is its prompt's end) and
greedy, as HumanEval's pass@1 with one sample. A completion stops at the first line that
is not indented (the function is over) or at the end-of-sequence token. Each completion
then runs with its tests in `qlora_lab.finetune.code_runner` (sandboxed, two at a time).
"""

from __future__ import annotations

import contextlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import torch

from qlora_lab.finetune.code_runner import DEFAULT_TIMEOUT_S, Outcome, run_candidate
from qlora_lab.finetune.functions_tasks import Problem
from qlora_lab.french import progression

DEFAULT_MAX_NEW_TOKENS = 48  # the longest reference body is ~25 tokens
RUNNERS = 2  # candidates executed at once (each is its own process)


@dataclass(frozen=True)
class FunctionResult:
    """One problem's completion (the body the model wrote) and how its tests went."""

    problem: Problem
    completion: str  # the body, cut where the function ends
    outcome: Outcome
    raw: str = ""  # everything the model generated, before the cut

    @property
    def passed(self) -> bool:
        return self.outcome.passed


@dataclass
class FunctionsScore:
    """How many problems passed all their tests, and each one's result."""

    passed: int
    total: int
    results: list[FunctionResult] = field(default_factory=list)

    @property
    def pass_at_1(self) -> float:
        return self.passed / self.total if self.total else 0.0

    def line(self) -> str:
        """The one-line summary the CLI ends with."""
        return f"pass@1 = {self.pass_at_1:.2f} ({self.passed}/{self.total})"

    def by_family(self) -> dict[str, tuple[int, int]]:
        """family -> (passed, total)."""
        out: dict[str, tuple[int, int]] = {}
        for r in self.results:
            passed, total = out.get(r.problem.family, (0, 0))
            out[r.problem.family] = (passed + r.passed, total + 1)
        return out


def cut_completion(text: str) -> str:
    """The function body: the text up to the first non-empty line that is not indented."""
    kept = []
    for line in text.splitlines():
        if line.strip() and not line[:1].isspace():
            break
        kept.append(line)
    while kept and not kept[-1].strip():
        kept.pop()
    return "\n".join(kept) + "\n" if kept else ""


@contextlib.contextmanager
def _left_padding(tokenizer):
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        yield
    finally:
        tokenizer.padding_side = side


def complete(model, tokenizer, prompts: list[str], max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS) -> list[str]:
    """Greedy continuations of a batch of prompts (left-padded), as generated (see `cut_completion`)."""
    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    was_training = model.training
    model.eval()
    try:
        with _left_padding(tokenizer), torch.no_grad():
            inputs = tokenizer(prompts, return_tensors="pt", padding=True).to(device)
            out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, temperature=None,
                                 top_p=None, top_k=None, pad_token_id=pad_id, eos_token_id=tokenizer.eos_token_id)
    finally:
        model.train(was_training)
    return tokenizer.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)


def score_functions(model, tokenizer, problems: list[Problem], batch_size: int = 16,
                    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS, progress: bool = True,
                    timeout_s: float = DEFAULT_TIMEOUT_S) -> FunctionsScore:
    """pass@1 of `model` on `problems`: one greedy completion each, run with its tests.

    Raises:
        ValueError: no problem, or batch_size < 1.
    """
    if not problems:
        raise ValueError("no problem to score")
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be at least 1")
    results: list[FunctionResult] = []
    bar = progression(total=len(problems), desc="problèmes", unit="pb", disable=not progress)
    with ThreadPoolExecutor(RUNNERS) as pool, bar:
        for start in range(0, len(problems), batch_size):
            batch = problems[start : start + batch_size]
            raws = complete(model, tokenizer, [p.prompt for p in batch], max_new_tokens)
            completions = [cut_completion(raw) for raw in raws]
            outcomes = pool.map(lambda pc: run_candidate(pc[0].prompt + pc[1], pc[0].tests, timeout_s),
                                zip(batch, completions))
            for problem, completion, outcome, raw in zip(batch, completions, outcomes, raws):
                results.append(FunctionResult(problem, completion, outcome, raw))
                bar.update(1)
    return FunctionsScore(passed=sum(r.passed for r in results), total=len(results), results=results)
