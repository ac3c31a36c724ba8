"""One submission, from the student's file to the notebook the sandbox runs and the feedback one.

* `merge`: the released notebook's cells, with the student's answers in the solution
  cells (and the student's own extra cells); locked cells (statements, tests) always come
  from the release, whatever the student did to them.
* `prepare`: every graded test cell becomes an answer cell (see `answers`).
* `feedback_notebook`: what the feedback shows. Test cells show their visible source
  and the grader's verdict only; outputs of cells run after the first test cell are
  dropped (they could print what the kernel saw of the tests).
"""

from __future__ import annotations

import copy
from typing import Any

import nbformat

from qlora_lab.grading.answers import Check, answer_cell_source

# Output types and MIME types a feedback page may show (no HTML, no script from students).
SAFE_MIME = ("text/plain", "image/png", "image/jpeg")


def nbgrader_meta(cell) -> dict:
    meta = cell.get("metadata", {}).get("nbgrader", {})
    return meta if isinstance(meta, dict) else {}


def grade_id(cell) -> str | None:
    return nbgrader_meta(cell).get("grade_id")


def is_test_cell(cell) -> bool:
    meta = nbgrader_meta(cell)
    return cell.cell_type == "code" and bool(meta.get("grade")) and not meta.get("solution")


def read_submission(path) -> Any:
    """The student's notebook; ValueError when it cannot be read as a notebook."""
    try:
        nb = nbformat.read(str(path), as_version=4)
        nbformat.validate(nb)
    except Exception as error:  # noqa: BLE001 - any unreadable file is the same case for the grader
        raise ValueError(f"unreadable notebook: {type(error).__name__}: {str(error)[:200]}") from None
    return nb


def _segments(cells, known: set[str]) -> tuple[dict[str, Any], dict[str | None, list]]:
    """(cells by known grade_id, unlabelled cells by the known grade_id they follow)."""
    labelled, segments, anchor = {}, {None: []}, None
    for cell in cells:
        gid = grade_id(cell)
        if gid in known and gid not in labelled:
            labelled[gid], anchor = cell, gid
            segments.setdefault(gid, [])
        elif cell.get("cell_type") in ("code", "markdown"):
            segments.setdefault(anchor, []).append(cell)
    return labelled, segments


def _fresh(cell, source: str):
    """A copy of a release cell (no output) holding `source`."""
    new = copy.deepcopy(cell)
    new.source = source
    if new.cell_type == "code":
        new.update(outputs=[], execution_count=None)
    return new


def merge(student, release):
    """The release with the student's answers and extra cells; locked cells from the release."""
    known = {grade_id(c) for c in release.cells if grade_id(c)}
    mine, my_segments = _segments(getattr(student, "cells", []), known)
    theirs, segments = _segments(release.cells, known)
    merged = nbformat.v4.new_notebook(metadata=copy.deepcopy(release.metadata))
    for anchor in [None, *[grade_id(c) for c in release.cells if grade_id(c) in theirs]]:
        if anchor is not None:
            cell, answer = theirs[anchor], mine.get(anchor)
            keep = answer is not None and not nbgrader_meta(cell).get("locked") and answer.cell_type == cell.cell_type
            merged.cells.append(_fresh(cell, answer.source if keep else cell.source))
        students = list(my_segments.get(anchor, []))
        for cell in segments.get(anchor, []):  # unlabelled release cells: the student's version, by place
            answer = students.pop(0) if students and students[0].cell_type == cell.cell_type else None
            merged.cells.append(_fresh(cell, answer.source if answer is not None else cell.source))
        for extra in students:  # the student's own cells
            merged.cells.append(nbformat.v4.new_code_cell(extra.source) if extra.cell_type == "code"
                                else nbformat.v4.new_markdown_cell(extra.source))
    return merged


def prepare(merged, checks: dict[str, Check], inputs: dict[str, Any]) -> tuple[dict, dict[int, str]]:
    """The notebook the sandbox runs (test cells -> answer cells) and {cell index: test grade_id}."""
    nb = copy.deepcopy(merged)
    tests = {}
    for index, cell in enumerate(nb.cells):
        if is_test_cell(cell):
            gid = grade_id(cell)
            tests[index] = gid
            cell.source = answer_cell_source(cell.source, checks[gid], inputs[gid]) if gid in checks else "pass"
    return nb, tests


def _safe_outputs(outputs: Any) -> list:
    """Stream, error and text/image outputs only, rebuilt by the grader (no student HTML/JS)."""
    safe = []
    for output in outputs if isinstance(outputs, list) else []:
        kind = output.get("output_type") if isinstance(output, dict) else None
        if kind == "stream" and output.get("name") in ("stdout", "stderr"):
            text = output.get("text", "")
            safe.append(nbformat.v4.new_output("stream", name=output["name"],
                                               text="".join(text) if isinstance(text, list) else str(text)))
        elif kind in ("execute_result", "display_data") and isinstance(output.get("data"), dict):
            data = {k: v for k, v in output["data"].items() if k in SAFE_MIME and isinstance(v, (str, list))}
            if data:
                safe.append(nbformat.v4.new_output("display_data", data=data))
        elif kind == "error":
            safe.append(nbformat.v4.new_output("error", ename=str(output.get("ename", "Error"))[:200],
                                               evalue=str(output.get("evalue", ""))[:2000], traceback=[]))
    return safe


def feedback_notebook(merged, tests: dict[int, str], records: dict[int, dict], verdicts: dict[str, str]):
    """The autograded notebook behind the feedback: outputs before the first test only."""
    nb = copy.deepcopy(merged)
    first_test = min(tests, default=len(nb.cells))
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        if index in tests:
            cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text=verdicts.get(tests[index], "") + "\n")]
        elif index < first_test and index in records:
            cell.outputs = _safe_outputs(records[index].get("outputs"))
        else:
            cell.outputs = []
    return nb
