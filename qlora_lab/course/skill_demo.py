"""Tables of chapter 8: the function benchmark's families, and completions before/after a fine-tune.

    before_after_table(score_before, score_after, n=4)      # a Tableau, rendered in French
"""

from __future__ import annotations

import random

from qlora_lab.finetune.functions_eval import FunctionsScore
from qlora_lab.finetune.functions_tasks import HELDOUT_FAMILIES, TRAIN_FAMILIES, build_problem
from qlora_lab.french import Tableau, pourcentage

VERDICTS = {"passed": "réussi", "failed": "assert faux", "error": "erreur", "timeout": "trop long",
            "memory": "mémoire"}


def docstring(prompt: str) -> str:
    """The one-line docstring of a problem's prompt."""
    return prompt.split('"""')[1]


def verdict(result) -> str:
    """French label of one result's outcome, with the exception's name for an error."""
    label = VERDICTS[result.outcome.status]
    if result.outcome.status == "error" and result.outcome.detail:
        label += f" ({result.outcome.detail.split()[0]})"
    return label


def shown(text: str, width: int = 60) -> str:
    """A completion on one line for a table cell: newlines shown as ⏎, long text cut."""
    one = text.strip("\n").replace("\n", " ⏎ ") or "(rien)"
    return one if len(one) <= width else one[: width - 1] + "…"


def families_table(seed: int = 0) -> Tableau:
    """Every family with one drawn docstring, and whether training ever sees it."""
    rng = random.Random(seed)
    rows = [{"famille": f.name, "split": split, "exemple": docstring(build_problem(f, rng).prompt)}
            for families, split in ((TRAIN_FAMILIES, "entraînement"), (HELDOUT_FAMILIES, "jamais entraînée"))
            for f in families]
    return Tableau(rows, {"famille": "famille", "split": "rôle", "exemple": "docstring tirée au hasard"})


def before_after_table(before: FunctionsScore, after: FunctionsScore, n: int = 4) -> Tableau:
    """The first `n` problems failed before and passed after: docstring, both completions, both verdicts."""
    rows = []
    for b, a in zip(before.results, after.results):
        if not b.passed and a.passed and len(rows) < n:
            rows.append({"doc": docstring(b.problem.prompt), "avant": shown(b.raw), "verdict_avant": verdict(b),
                         "apres": shown(a.completion), "verdict_apres": verdict(a)})
    if not rows:
        raise ValueError("no problem failed before and passed after")
    return Tableau(rows, {"doc": "docstring", "avant": "avant (texte généré)", "verdict_avant": "tests avant",
                          "apres": "après (corps retenu)", "verdict_apres": "tests après"})


def family_table(before: FunctionsScore, after: FunctionsScore) -> Tableau:
    """pass@1 per family, before and after."""
    b, a = before.by_family(), after.by_family()
    rows = [{"famille": f, "n": b[f][1], "avant": b[f][0] / b[f][1], "apres": a[f][0] / a[f][1]} for f in b]
    return Tableau(rows, {"famille": "famille", "n": "problèmes", "avant": "pass@1 avant", "apres": "pass@1 après"},
                   {"avant": pourcentage, "apres": pourcentage})
