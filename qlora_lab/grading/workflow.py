"""Instructor workflow for the graded labs: release, sandboxed grading, feedback, export.

    python -m qlora_lab.grading release labs   # source/ -> release/ (what students get)
    python -m qlora_lab.grading grade labs     # submitted/ -> autograded/, feedback/, grades.csv
    python -m qlora_lab.grading feedback labs  # feedback HTML only (after manual grading)
    python -m qlora_lab.grading export labs    # grades.csv only

`make labs-release` and `make labs-grade` call the first two. Release, feedback and
export run the real `nbgrader` commands in the labs folder (nbgrader_config.py), with the
venv's bin/ first on PATH (nbgrader calls `alembic` by name). Grading does not use
`nbgrader autograde`: each submission runs in its own sandbox (sandbox.py), its answers
are checked outside by the hidden tests of labs/checks/ (answers.py, grader.py), and the
scores go into nbgrader's gradebook (store.py), which only this process writes. One
submission that crashes, loops or cannot be read is flagged "to review" and never stops
the class. Every feedback page is checked for hidden-test lines before it is published.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from qlora_lab.grading import report, sandbox, store
from qlora_lab.grading.answers import load_checks
from qlora_lab.grading.grader import LabContext, Result, grade_submission
from qlora_lab.grading.preprocessors import HideHiddenTests  # noqa: F401  (re-exported for tests)


# Where the feedback HTML looks for MathJax (see HTMLExporter.mathjax_url in the config).
FEEDBACK_MATHJAX_DIR = "mathjax"


# ------------------------------------------------------------------- running nbgrader


def venv_bin_dir() -> Path:
    """The bin/ folder of the running interpreter (the course's .venv)."""
    return Path(sys.executable).parent


def nbgrader_env() -> dict[str, str]:
    """The environment with the venv's bin/ first on PATH (nbgrader runs `alembic`)."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(venv_bin_dir()), env.get("PATH", "")])
    return env


def run_nbgrader(labs_dir: Path, *args: str) -> subprocess.CompletedProcess:
    """Run `nbgrader ARGS` in `labs_dir`; raise CalledProcessError (with its log) on failure."""
    nbgrader = venv_bin_dir() / "nbgrader"
    command = [str(nbgrader) if nbgrader.exists() else "nbgrader", *args]
    result = subprocess.run(command, cwd=labs_dir, env=nbgrader_env(), capture_output=True, text=True)
    if result.returncode != 0:
        raise subprocess.CalledProcessError(result.returncode, command, result.stdout, result.stderr)
    return result


def lab_ids(labs_dir: Path) -> list[str]:
    """The labs: folders of source/ holding a notebook of the same name."""
    source = Path(labs_dir) / "source"
    return sorted(p.name for p in source.iterdir() if (p / f"{p.name}.ipynb").is_file())


def check_labs_dir(labs_dir: Path) -> Path:
    """The labs folder, checked: nbgrader needs its config and source/ there."""
    labs_dir = Path(labs_dir).resolve()
    if not (labs_dir / "nbgrader_config.py").is_file() or not (labs_dir / "source").is_dir():
        raise ValueError(f"labs_dir={labs_dir} must hold nbgrader_config.py and source/")
    return labs_dir


# ---------------------------------------------------------------------- the workflow


def release(labs_dir: Path) -> list[str]:
    """Generate the student version of every lab into release/ and register it in the gradebook."""
    labs_dir = check_labs_dir(labs_dir)
    labs = lab_ids(labs_dir)
    if not labs:
        raise ValueError(f"labs_dir={labs_dir} has no lab (expected source/<lab>/<lab>.ipynb)")
    run_nbgrader(labs_dir, "generate_assignment", "*", "--force")  # every lab, one process
    return labs


def cell_timeout_function(labs_dir: Path):
    """The per-cell time limit of nbgrader_config.py (Execute.timeout_func, else Execute.timeout)."""
    from traitlets.config.loader import PyFileConfigLoader

    config = PyFileConfigLoader("nbgrader_config.py", path=str(labs_dir)).load_config()
    default = float(config.Execute.get("timeout", 30))
    function = config.Execute.get("timeout_func")
    return function if callable(function) else (lambda cell: default)


def grading_workers() -> int:
    """Sandboxes run side by side: QLORA_LAB_GRADING_WORKERS, else one per CPU core (at most 4)."""
    return max(1, int(os.environ.get("QLORA_LAB_GRADING_WORKERS", min(4, os.cpu_count() or 1))))


def threads_per_sandbox(workers: int) -> int:
    """Each sandbox's share of the cores: torch with more threads than cores runs several times slower."""
    return max(1, (os.cpu_count() or 1) // max(1, workers))


def submissions(labs_dir: Path) -> list[tuple[str, str, Path]]:
    """(student, lab, notebook path) of every submitted/<student>/<lab>/ folder of a known lab."""
    labs = set(lab_ids(labs_dir))
    found = []
    for folder in sorted((labs_dir / "submitted").glob("*/*")):
        if folder.is_dir() and folder.name in labs:
            found.append((folder.parent.name, folder.name, folder / f"{folder.name}.ipynb"))
    return found


def lab_context(labs_dir: Path, lab: str, hidden: list[Path]) -> LabContext:
    """What every submission of `lab` shares (the release, the checks and their inputs)."""
    import nbformat

    release_nb = nbformat.read(str(labs_dir / "release" / lab / f"{lab}.ipynb"), as_version=4)
    checks = load_checks(labs_dir, lab)
    inputs = {gid: check.inputs() for gid, check in checks.items()}
    return LabContext(labs_dir, lab, release_nb, checks, inputs, cell_timeout_function(labs_dir), hidden,
                      threads_per_sandbox(grading_workers()))


def autograde(labs_dir: Path) -> list[Result]:
    """Grade every submission under submitted/, each in its own sandbox; write the report."""
    labs_dir = check_labs_dir(labs_dir)
    todo = submissions(labs_dir)
    if not todo:
        raise ValueError(f"no submission under {labs_dir / 'submitted'} (expected submitted/<student>/<lab>/<lab>.ipynb)")
    hidden = [labs_dir]
    sandbox.check_sandbox(hidden)
    saved = store.backup(labs_dir)
    store.clear_previous_run(labs_dir, FEEDBACK_MATHJAX_DIR)
    if saved:
        print(f"gradebook backed up in {saved}", file=sys.stderr)
    contexts = {lab: lab_context(labs_dir, lab, hidden) for lab in sorted({lab for _, lab, _ in todo})}

    def one(job: tuple[str, str, Path]) -> Result:
        student, lab, path = job
        result = grade_submission(contexts[lab], student, path)
        print(f"graded {student}/{lab} in {result.seconds:.1f} s" + (f" - TO REVIEW: {result.to_review}"
              if result.to_review else ""), file=sys.stderr)
        return result

    with ThreadPoolExecutor(max_workers=grading_workers()) as pool:
        results = list(pool.map(one, todo))
    maxima = {lab: store.max_scores(labs_dir, lab) for lab in contexts}
    entries = [{"student": r.student, "lab": r.lab, "score": sum(v or 0.0 for v in r.scores.values()),
                "max": sum(p for p, _ in maxima[r.lab].values()), "seconds": round(r.seconds, 2),
                "to_review": r.to_review, "cells": r.scores, "cell_seconds": r.cell_seconds} for r in results]
    print(report.write_report(labs_dir, entries, []))
    return results


def copy_mathjax(feedback_dir: Path) -> Path:
    """Put MathJax 2.7 (pip package jupyter-server-mathjax) in feedback/mathjax/, once."""
    import jupyter_server_mathjax

    source = Path(jupyter_server_mathjax.__file__).parent / "static"
    target = Path(feedback_dir) / FEEDBACK_MATHJAX_DIR
    if not (target / "MathJax.js").is_file():
        shutil.copytree(source, target, dirs_exist_ok=True)
    return target


class FeedbackLeak(RuntimeError):
    """A feedback page showed a hidden-test line: it was not published."""


def feedback(labs_dir: Path) -> list[Path]:
    """Feedback HTML for every graded submission, math offline, each page checked for hidden-test lines.

    nbgrader writes the pages to feedback.staging/; a page is moved to feedback/ only if
    it shows no hidden-test line. Raise FeedbackLeak (after publishing the clean ones) otherwise.
    """
    labs_dir = check_labs_dir(labs_dir)
    staging = labs_dir / "feedback.staging"
    shutil.rmtree(staging, ignore_errors=True)
    run_nbgrader(labs_dir, "generate_feedback", "*", "--force", f"--CourseDirectory.feedback_directory={staging.name}")
    hidden, leaked, published = {}, [], []
    for page in sorted(staging.glob("*/*/*.html")):
        student, lab = page.parent.parent.name, page.parent.name
        hidden.setdefault(lab, report.hidden_lines(labs_dir, lab))
        own = labs_dir / "autograded" / student / lab / f"{lab}.ipynb"  # the student's own code is no leak
        found = report.leaks(page.read_text(errors="replace"), report.shown_elsewhere(hidden[lab], own))
        if found:
            leaked.append(f"{student}/{lab}: {found[0]!r}")
            continue
        target = labs_dir / "feedback" / student / lab / page.name
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(page, target)
        published.append(target)
    shutil.rmtree(staging, ignore_errors=True)
    copy_mathjax(labs_dir / "feedback")
    if leaked:
        raise FeedbackLeak(f"feedback NOT published for {len(leaked)} submission(s), it showed hidden tests: "
                           + "; ".join(leaked))
    return published


def export(labs_dir: Path, csv_name: str = "grades.csv") -> Path:
    """Write the gradebook as CSV (one row per student and lab, plus `to_review`) and return its path."""
    labs_dir = check_labs_dir(labs_dir)
    exported = labs_dir / f".{csv_name}.nbgrader"
    run_nbgrader(labs_dir, "export", "--to", exported.name)
    return report.write_csv(exported, labs_dir / csv_name, report.read_review(labs_dir))


def registered_labs(labs_dir: Path) -> set[str]:
    """Labs the gradebook knows (generate_assignment registers them)."""
    database = Path(labs_dir) / "gradebook.db"
    if not database.is_file():
        return set()
    from nbgrader.api import Gradebook

    with Gradebook(f"sqlite:///{database}") as gradebook:
        return {assignment.name for assignment in gradebook.assignments}


def grade(labs_dir: Path) -> Path:
    """The whole grading pass: register the labs if needed, autograde, feedback, CSV export."""
    labs_dir = check_labs_dir(labs_dir)
    if not set(lab_ids(labs_dir)) <= registered_labs(labs_dir):
        release(labs_dir)
    autograde(labs_dir)
    try:
        feedback(labs_dir)
    finally:
        csv_path = export(labs_dir)  # every student gets a CSV row, even when a page leaked
    return csv_path


# --------------------------------------------------------------------------------- CLI

STEPS = {"release": release, "grade": grade, "autograde": autograde, "feedback": feedback, "export": export}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m qlora_lab.grading", description=__doc__.split("\n\n")[0])
    parser.add_argument("step", choices=sorted(STEPS), help="workflow step")
    parser.add_argument("labs_dir", nargs="?", default="labs", type=Path, help="folder holding nbgrader_config.py")
    args = parser.parse_args(argv)
    try:
        result = STEPS[args.step](args.labs_dir)
    except subprocess.CalledProcessError as error:
        print(error.stdout, error.stderr, sep="\n", file=sys.stderr)
        print(f"nbgrader failed: {' '.join(error.cmd)}", file=sys.stderr)
        return 1
    except (sandbox.SandboxUnavailable, FeedbackLeak, ValueError) as error:
        print(f"grading refused: {error}" if isinstance(error, sandbox.SandboxUnavailable) else str(error),
              file=sys.stderr)
        return 1
    if isinstance(result, list) and args.step != "autograde":
        print("\n".join(map(str, result)))
    elif result is not None:
        print(result)
    return 0
