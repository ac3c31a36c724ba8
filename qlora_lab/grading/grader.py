"""Grade one submission: merge, run sandboxed, check the answers outside, store, keep the feedback notebook.

The student's kernel only computes answers (answers.py); the pass/fail decision, the
reference values and the points are computed here, in the trusted grader process. A
submission whose kernel died, stopped answering or ran out of time keeps the points of
the cells that ran before, scores 0 on the rest, and is flagged "to review".
"""

from __future__ import annotations

import threading
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import nbformat

from qlora_lab.grading import sandbox, store
from qlora_lab.grading.answers import Check, parse_answers
from qlora_lab.grading.submission import feedback_notebook, grade_id, is_test_cell, merge, prepare, read_submission

# Student-facing verdicts, in the test cells of the feedback.
PASSED = "Tests de correction : réussis."
FAILED = "Tests de correction : échoués (réponse incorrecte)."
NO_ANSWER = "Tests de correction : aucune réponse (exception ou délai dépassé dans cette cellule)."
NOT_RUN = "Tests de correction : non exécutés (le noyau s'est arrêté avant cette cellule)."
UNREADABLE = "Tests de correction : non exécutés (le notebook rendu est illisible)."
REVIEW = {"timeout": "kernel stopped answering after a timeout", "dead_kernel": "kernel died",
          "wall_timeout": "whole notebook ran out of time", "killed": "sandbox killed (limit reached?)",
          "error": "notebook could not be executed"}


# Sandboxes run in parallel; checking answers (which may load a reference model and put a
# student's weights in it) and writing the gradebook happen one submission at a time.
TRUSTED = threading.Lock()


@dataclass
class LabContext:
    """What every submission of one lab shares: release, checks and their inputs, timeouts."""

    labs_dir: Path
    lab: str
    release: Any
    checks: dict[str, Check]
    inputs: dict[str, Any]
    timeout_of: Callable[[Any], float]
    hidden: list[Path]
    threads: int | None = None  # compute threads per sandbox (the cores shared among the copies graded at once)


@dataclass
class Result:
    student: str
    lab: str
    scores: dict[str, float | None] = field(default_factory=dict)
    verdicts: dict[str, str] = field(default_factory=dict)
    to_review: str = ""
    seconds: float = 0.0
    cell_seconds: dict[str, float] = field(default_factory=dict)  # grade_id -> execution time


def verify(check: Check, inputs: Any, outputs: Any) -> str:
    """The verdict of one test cell from its (untrusted) outputs."""
    try:
        answers = parse_answers(outputs)
    except ValueError:
        return NO_ANSWER
    try:
        check.verify(inputs, answers)
    except Exception:  # noqa: BLE001 - AssertionError or any error on malformed answers: wrong
        return FAILED
    return PASSED


def _manual_unchanged(merged, release) -> set[str]:
    """Open answers left as released (nbgrader gives them 0 automatically)."""
    released = {grade_id(c): c.source.strip() for c in release.cells if grade_id(c)}
    return {grade_id(c) for c in merged.cells if c.cell_type == "markdown" and grade_id(c)
            and c.source.strip() == released.get(grade_id(c))}


def _scores(ctx: LabContext, merged, verdicts: dict[str, str]) -> dict[str, float | None]:
    """grade_id -> automatic score (None: an open answer waiting for the instructor)."""
    unchanged = _manual_unchanged(merged, ctx.release)
    scores = {}
    for gid, (points, by_tests) in store.max_scores(ctx.labs_dir, ctx.lab).items():
        if by_tests:
            scores[gid] = points if verdicts.get(gid) == PASSED else 0.0
        else:
            scores[gid] = 0.0 if gid in unchanged else None
    return scores


def run_submission(ctx: LabContext, merged) -> tuple[dict[str, str], str, float, dict[int, dict], dict[int, str]]:
    """Execute sandboxed and check: (verdicts, review reason, seconds, records by cell index, test cells)."""
    nb, tests = prepare(merged, ctx.checks, ctx.inputs)
    timeouts = [float(ctx.timeout_of(cell)) for cell in nb.cells]
    run = sandbox.run_notebook(nb, timeouts, ctx.hidden, ctx.threads)
    records = {r["index"]: r for r in run.records if 0 <= r["index"] < len(nb.cells)}
    verdicts = {}
    with TRUSTED:
        for index, gid in tests.items():
            if index not in records:
                verdicts[gid] = NOT_RUN
            elif gid in ctx.checks:
                verdicts[gid] = verify(ctx.checks[gid], ctx.inputs[gid], records[index].get("outputs"))
            else:
                verdicts[gid] = FAILED
    review = "" if run.status == "ok" else REVIEW.get(run.status, run.status) + (f" ({run.detail})" if run.detail else "")
    return verdicts, review, run.seconds, records, tests


def grade_submission(ctx: LabContext, student: str, path: Path) -> Result:
    """Grade one submitted notebook, store its scores, write its autograded notebook."""
    result = Result(student, ctx.lab)
    try:
        merged = merge(read_submission(path), ctx.release)
    except ValueError as error:
        merged, result.to_review = None, str(error)
    records, tests = {}, {}
    if merged is not None:
        try:
            result.verdicts, result.to_review, result.seconds, records, tests = run_submission(ctx, merged)
            result.cell_seconds = {grade_id(merged.cells[i]): round(float(r.get("seconds", 0)), 2)
                                   for i, r in records.items() if grade_id(merged.cells[i])}
        except Exception as error:  # noqa: BLE001 - one submission must never stop the class
            result.to_review = f"grader error: {type(error).__name__}: {error}"
            traceback.print_exc()
    base = merged if merged is not None else merge(nbformat.v4.new_notebook(), ctx.release)
    with TRUSTED:
        result.scores = _scores(ctx, base, result.verdicts)
        store.save_scores(ctx.labs_dir, ctx.lab, student, result.scores, review=bool(result.to_review))
    if merged is None:
        tests = {i: grade_id(c) for i, c in enumerate(base.cells) if is_test_cell(c)}
    target = ctx.labs_dir / "autograded" / student / ctx.lab / f"{ctx.lab}.ipynb"
    target.parent.mkdir(parents=True, exist_ok=True)
    missing = NOT_RUN if merged is not None else UNREADABLE
    verdicts = {gid: result.verdicts.get(gid, missing) for gid in tests.values()}
    nbformat.write(feedback_notebook(base, tests, records, verdicts), str(target))
    return result
