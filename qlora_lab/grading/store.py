"""The gradebook, written by the grader alone: backups, and the scores of one submission.

Every grading run starts with a timestamped copy of gradebook.db (and of the last
grades.csv and report) in backups/<UTC time>/, then removes what a previous run left
(autograded/, feedback pages, grades.csv, report), so that nothing stale looks current.
Scores go into nbgrader's SQLite gradebook through nbgrader.api, so the formgrader
(manual grading), `nbgrader generate_feedback` and `nbgrader export` work as before;
manual scores already given are kept.
"""

from __future__ import annotations

import shutil
from datetime import datetime, timezone
from pathlib import Path

COURSE_ID = "qlora-lab"
REPORT_NAME = "grading_report.json"


def gradebook_url(labs_dir: Path) -> str:
    return f"sqlite:///{Path(labs_dir) / 'gradebook.db'}"


def backup(labs_dir: Path, csv_name: str = "grades.csv") -> Path | None:
    """Copy gradebook.db, grades.csv and the report to backups/<UTC time>/; None when there is no gradebook."""
    labs_dir = Path(labs_dir)
    files = [labs_dir / name for name in ("gradebook.db", csv_name, REPORT_NAME) if (labs_dir / name).is_file()]
    if not (labs_dir / "gradebook.db").is_file():
        return None
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
    target = labs_dir / "backups" / stamp
    target.mkdir(parents=True)
    for path in files:
        shutil.copy2(path, target / path.name)
    return target


def clear_previous_run(labs_dir: Path, feedback_mathjax: str, csv_name: str = "grades.csv") -> None:
    """Remove last run's autograded notebooks, feedback pages, CSV and report (backed up first)."""
    labs_dir = Path(labs_dir)
    shutil.rmtree(labs_dir / "autograded", ignore_errors=True)
    feedback = labs_dir / "feedback"
    if feedback.is_dir():
        for path in feedback.iterdir():
            if path.name != feedback_mathjax:
                shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
    for name in (csv_name, REPORT_NAME):
        (labs_dir / name).unlink(missing_ok=True)


def max_scores(labs_dir: Path, lab: str) -> dict[str, tuple[float, bool]]:
    """grade_id -> (points, graded by tests) of the lab's graded cells, from the gradebook."""
    from nbgrader.api import Gradebook

    with Gradebook(gradebook_url(labs_dir), COURSE_ID) as gradebook:
        notebook = gradebook.find_notebook(lab, lab)
        return {cell.name: (float(cell.max_score), cell.cell_type == "code") for cell in notebook.grade_cells}


def save_scores(labs_dir: Path, lab: str, student: str, auto: dict[str, float | None], review: bool) -> None:
    """Store one submission's automatic scores; manual scores stay. `review` marks every
    automatically graded cell as needing a look in the formgrader."""
    import warnings

    from nbgrader.api import Gradebook
    from sqlalchemy.exc import SAWarning

    with Gradebook(gradebook_url(labs_dir), COURSE_ID) as gradebook, warnings.catch_warnings():
        warnings.simplefilter("ignore", SAWarning)  # nbgrader's add_submission, harmless
        gradebook.update_or_create_student(student)
        timestamp = datetime.now(timezone.utc).isoformat()
        gradebook.update_or_create_submission(lab, student, timestamp=timestamp)
        for grade in gradebook.find_submission_notebook(lab, lab, student).grades:
            grade.auto_score = auto.get(grade.name)
            grade.needs_manual_grade = bool(grade.manual_score is not None or grade.auto_score is None
                                            or (review and grade.cell.cell_type == "code"))
        gradebook.db.commit()
