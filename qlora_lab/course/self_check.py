"""Self-check for the exercises: `verifier("03.2", reponse)` says right / almost / not yet.

Why: a student working alone needs to know whether an answer holds without being shown
it. The verdict is a French sentence (HTML in JupyterLab and the book, text elsewhere)
that never contains the expected value; the expected value is *computed* by the
package's own functions, lazily and once, so it follows the code and is never a literal.

How chapters plug in: a module `qlora_lab/course/exercises_<topic>.py` defines
`EXERCISES: dict[str, Checker]`, built with the factories below (`numeric`, `exact`,
`choice`, `parts`). `verifier` gathers every such module on first use, so adding a
chapter touches no shared file.

Notebook convention (every chapter): the statement (markdown), a student cell

    reponse = None  # à compléter
    verifier("03.2", reponse)

then a solution cell (tags ["hide-input"], metadata jupyter.source_hidden) that computes
the answer and ends with `verifier("03.2", reponse, solution=True)`, which raises if the
solution is not judged right, so nbval proves every solution.
"""

from __future__ import annotations

import functools
import importlib
import math
import pkgutil
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from qlora_lab.french import nombre

# Status -> (symbol, French label, colour of the left border in HTML).
STATUSES = {
    "juste": ("✅", "Juste", "#2e7d32"),
    "partiel": ("🟡", "Presque", "#f9a825"),
    "faux": ("❌", "Pas encore", "#c62828"),
    "vide": ("✏️", "À compléter", "#757575"),
}
EXERCISE_MODULE_PREFIX = "exercises_"


@dataclass(frozen=True)
class Verdict:
    """The judgement of one answer: a status among `STATUSES` and a French message."""

    status: str
    message: str
    exercise: str = ""

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"status must be one of {sorted(STATUSES)}, got {self.status!r}")

    @property
    def juste(self) -> bool:
        return self.status == "juste"

    def _title(self) -> str:
        symbol, label, _ = STATUSES[self.status]
        where = f"Exercice {self.exercise} : " if self.exercise else ""
        return f"{symbol} {where}{label}"

    def _repr_html_(self) -> str:
        colour = STATUSES[self.status][2]
        text = _escape(self.message)
        return (f'<div class="qlora-verdict qlora-verdict-{self.status}" style="border-left:4px solid '
                f'{colour};padding:0.3em 0.8em"><strong>{_escape(self._title())}</strong> — {text}</div>')

    def _repr_markdown_(self) -> str:
        return f"**{self._title()}** — {self.message}"

    def __repr__(self) -> str:
        return f"{self._title()} — {self.message}"


Checker = Callable[[Any], Verdict]


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def is_unanswered(answer: Any) -> bool:
    """`None` and `...` (Ellipsis) mean the student has not answered yet."""
    return answer is None or answer is Ellipsis


def _as_float(answer: Any) -> float | None:
    try:
        value = float(answer)  # ints, floats, numpy and 0-d torch scalars
    except (TypeError, ValueError, RuntimeError):
        return None
    return None if math.isnan(value) else value


def numeric(expected: Callable[[], float], rtol: float = 0.02, partial_rtol: float = 0.25,
            atol: float = 0.0) -> Checker:
    """A checker for a number: right within `rtol` (relative) or `atol`, 'almost' within `partial_rtol`.

    `expected` is called once, on first use (it may load a model or run an experiment).
    A wrong answer is told whether it is too large or too small, never by how much.
    """
    target = functools.cache(expected)

    def check(answer: Any) -> Verdict:
        value = _as_float(answer)
        if value is None:
            return Verdict("faux", "la réponse attendue est un nombre (int ou float).")
        goal = float(target())
        gap = abs(value - goal)
        if gap <= max(atol, rtol * abs(goal)):
            return Verdict("juste", "c'est la bonne valeur, à la précision demandée.")
        side = "trop grande" if value > goal else "trop petite"
        if gap <= partial_rtol * abs(goal):
            return Verdict("partiel", f"l'ordre de grandeur est bon, mais la valeur est un peu {side} : "
                                      "vérifiez le calcul ou les arrondis.")
        return Verdict("faux", f"la valeur est {side}. Relisez l'énoncé et refaites la mesure.")

    return check


def exact(expected: Callable[[], Any], hint: str = "") -> Checker:
    """A checker for an exact answer (an integer, a tuple…), compared with `==`."""
    target = functools.cache(expected)

    def check(answer: Any) -> Verdict:
        goal = target()
        if isinstance(goal, int) and not isinstance(goal, bool):
            value = _as_float(answer)
            if value is None or not value.is_integer():
                return Verdict("faux", "la réponse attendue est un nombre entier.")
            answer = int(value)
        if answer == goal:
            return Verdict("juste", "c'est exactement ce qu'il fallait trouver.")
        side = ""
        if isinstance(goal, int) and not isinstance(goal, bool):
            side = " C'est trop grand." if answer > goal else " C'est trop petit."
        return Verdict("faux", "ce n'est pas la bonne réponse." + side + (f" {hint}" if hint else ""))

    return check


def normalise_text(text: str) -> str:
    """Lower case, no accents, no surrounding spaces: 'Zéro-point ' -> 'zero-point'."""
    decomposed = unicodedata.normalize("NFKD", str(text).strip().lower())
    return "".join(c for c in decomposed if not unicodedata.combining(c))


def choice(expected: Callable[[], str], options: tuple[str, ...]) -> Checker:
    """A checker for one word among `options` (case and accents ignored)."""
    target = functools.cache(expected)
    allowed = {normalise_text(o): o for o in options}

    def check(answer: Any) -> Verdict:
        if not isinstance(answer, str) or normalise_text(answer) not in allowed:
            listed = ", ".join(f"« {o} »" for o in options)
            return Verdict("faux", f"répondez par l'un des mots : {listed}.")
        if normalise_text(answer) == normalise_text(target()):
            return Verdict("juste", "c'est le bon choix.")
        return Verdict("faux", "ce n'est pas ce que montre la mesure. Refaites-la et comparez.")

    return check


def parts(checkers: Mapping[str, Checker]) -> Checker:
    """A checker for a dict answer with several parts: right when all are, 'almost' when some are."""

    def check(answer: Any) -> Verdict:
        keys = ", ".join(f"« {k} »" for k in checkers)
        if not isinstance(answer, Mapping) or set(answer) != set(checkers):
            return Verdict("faux", f"la réponse attendue est un dictionnaire de clés {keys}.")
        if all(is_unanswered(v) for v in answer.values()):
            return Verdict("vide", "remplacez les `None` par vos réponses, puis relancez la cellule.")
        verdicts = {k: (Verdict("vide", "") if is_unanswered(answer[k]) else c(answer[k]))
                    for k, c in checkers.items()}
        wrong = [k for k, v in verdicts.items() if not v.juste]
        if not wrong:
            return Verdict("juste", "toutes les parties sont justes.")
        right = len(checkers) - len(wrong)
        detail = " ".join(f"« {k} » : {verdicts[k].message or 'à compléter.'}" for k in wrong)
        status = "partiel" if right else "faux"
        return Verdict(status, f"{nombre(right)} partie(s) juste(s) sur {nombre(len(checkers))}. {detail}")

    return check


@functools.cache
def registry() -> dict[str, Checker]:
    """Every exercise of the course: id ('03.2') -> checker, gathered from the exercises_* modules."""
    import qlora_lab.course as course

    found: dict[str, Checker] = {}
    for module_info in sorted(pkgutil.iter_modules(course.__path__), key=lambda m: m.name):
        if not module_info.name.startswith(EXERCISE_MODULE_PREFIX):
            continue
        module = importlib.import_module(f"{course.__name__}.{module_info.name}")
        for exercise_id, checker in module.EXERCISES.items():
            if exercise_id in found:
                raise ValueError(f"exercise {exercise_id} is registered twice (in {module_info.name})")
            found[exercise_id] = checker
    return found


def verifier(exercice: str, reponse: Any, solution: bool = False) -> Verdict:
    """Judge `reponse` to exercise `exercice` ('NN.k'); the returned Verdict displays itself.

    With `solution=True` (the hidden solution cells), a verdict other than right raises
    AssertionError, so running the notebook proves the solution.
    """
    checkers = registry()
    if exercice not in checkers:
        raise KeyError(f"unknown exercise {exercice!r}; known: {', '.join(sorted(checkers))}")
    if is_unanswered(reponse):
        verdict = Verdict("vide", "remplacez `None` par votre réponse, puis relancez la cellule.")
    else:
        verdict = checkers[exercice](reponse)
    verdict = Verdict(verdict.status, verdict.message, exercise=exercice)
    if solution and not verdict.juste:
        raise AssertionError(f"the solution of exercise {exercice} is not judged right: {verdict!r}")
    return verdict
