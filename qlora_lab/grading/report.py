"""What the grader hands back: leak-checked feedback, grades.csv with a "to review" column, a report.

* `hidden_lines`: the lines of a lab's hidden tests (labs/checks/<lab>.py and any
  hidden-test region of the source) that the released notebook does not show;
  `leaks` finds them in a feedback page (text of the HTML, tags removed).
* `write_csv`: nbgrader's export plus `to_review` (why a submission needs a look:
  dead kernel, timeout, unreadable notebook...), written whole then renamed.
* `write_report`: grading_report.json (read again by `export` alone) and a text summary.
"""

from __future__ import annotations

import csv
import html
import json
import os
import re
from pathlib import Path

import nbformat

from qlora_lab.grading.store import REPORT_NAME

MIN_LINE_CHARS = 12  # shorter lines (`for x in y:`, `)`) would match any page


def _lines(text: str) -> set[str]:
    return {line.strip() for line in text.splitlines() if len(line.strip()) > MIN_LINE_CHARS}


def hidden_lines(labs_dir: Path, lab: str) -> set[str]:
    """Hidden-test lines of a lab that are not in its released notebook."""
    labs_dir = Path(labs_dir)
    hidden = set()
    checks = labs_dir / "checks" / f"{lab}.py"
    if checks.is_file():
        hidden |= _lines(checks.read_text())
    source = labs_dir / "source" / lab / f"{lab}.ipynb"
    for cell in nbformat.read(str(source), as_version=4).cells:
        inside = re.findall(r"### BEGIN HIDDEN TESTS(.*?)### END HIDDEN TESTS", cell.source, re.S)
        hidden |= {line for region in inside for line in _lines(region)}
    released = labs_dir / "release" / lab / f"{lab}.ipynb"
    if released.is_file():
        return shown_elsewhere(hidden, released)
    return hidden


def shown_elsewhere(hidden: set[str], notebook: Path) -> set[str]:
    """The hidden lines that are not part of a line of `notebook` (released or the student's own)."""
    text = "\n".join(c.source for c in nbformat.read(str(notebook), as_version=4).cells)
    return {line for line in hidden if line not in text}


def page_text(page: str) -> str:
    """The text a reader sees in an HTML page (pygments splits code into spans)."""
    return html.unescape(re.sub(r"<[^>]+>", "", page))


def leaks(page: str, hidden: set[str]) -> list[str]:
    """Hidden-test lines found in a feedback page."""
    text = page_text(page)
    return sorted(line for line in hidden if line in text) + (["HIDDEN TESTS"] if "HIDDEN TESTS" in text else [])


def write_csv(exported: Path, target: Path, review: dict[tuple[str, str], str]) -> Path:
    """nbgrader's CSV plus a `to_review` column ((student, lab) -> reason), atomically."""
    with open(exported, newline="") as f:
        rows = list(csv.DictReader(f))
        fields = list(rows[0].keys()) if rows else ["assignment", "student_id", "raw_score", "max_score"]
    partial = target.with_suffix(".partial")
    with open(partial, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[*fields, "to_review"])
        writer.writeheader()
        for row in rows:
            writer.writerow({**row, "to_review": review.get((row["student_id"], row["assignment"]), "")})
    os.replace(partial, target)
    exported.unlink(missing_ok=True)
    return target


def read_review(labs_dir: Path) -> dict[tuple[str, str], str]:
    """(student, lab) -> reason, from the last grading report (empty without one)."""
    path = Path(labs_dir) / REPORT_NAME
    if not path.is_file():
        return {}
    entries = json.loads(path.read_text())["submissions"]
    return {(e["student"], e["lab"]): e["to_review"] for e in entries if e["to_review"]}


def write_report(labs_dir: Path, entries: list[dict], problems: list[str]) -> str:
    """Write grading_report.json and return the text summary printed for the instructor."""
    path = Path(labs_dir) / REPORT_NAME
    path.write_text(json.dumps({"submissions": entries, "problems": problems}, indent=1, ensure_ascii=False))
    lines = [f"{'student':20s} {'lab':26s} {'score':>7s} {'max':>5s} {'sandbox s':>9s}  to review"]
    for e in entries:
        lines.append(f"{e['student']:20s} {e['lab']:26s} {e['score']:7.1f} {e['max']:5.1f} {e['seconds']:9.1f}  "
                     f"{e['to_review'] or '-'}")
    flagged = sum(1 for e in entries if e["to_review"])
    lines.append(f"{len(entries)} submissions graded, {flagged} to review (see {path.name} and the to_review column)")
    return "\n".join(lines + [f"PROBLEM: {p}" for p in problems])
