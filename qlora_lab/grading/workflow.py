"""Instructor workflow for the graded labs: release, autograde, feedback, export (nbgrader).

    python -m qlora_lab.grading release labs   # source/ -> release/ (what students get)
    python -m qlora_lab.grading grade labs     # submitted/ -> autograded/, feedback/, grades.csv
    python -m qlora_lab.grading feedback labs  # feedback HTML only (after manual grading)
    python -m qlora_lab.grading export labs    # grades.csv only

`make labs-release` and `make labs-grade` call the first two. Every step runs the real
`nbgrader` command in the labs folder (where nbgrader_config.py lives), with the venv's
bin/ first on PATH: nbgrader calls `alembic` by name to create its SQLite gradebook.
Each nbgrader command runs once over every student and lab (one process, not one per
submission). Course id, timeouts and the feedback settings are in labs/nbgrader_config.py.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path


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


def autograde(labs_dir: Path) -> None:
    """Autograde every submission under submitted/ (one nbgrader run for all of them)."""
    labs_dir = check_labs_dir(labs_dir)
    if not any((labs_dir / "submitted").glob("*/*/*.ipynb")):
        raise ValueError(f"no submission under {labs_dir / 'submitted'} (expected submitted/<student>/<lab>/<lab>.ipynb)")
    run_nbgrader(labs_dir, "autograde", "*", "--force")


def copy_mathjax(feedback_dir: Path) -> Path:
    """Put MathJax 2.7 (pip package jupyter-server-mathjax) in feedback/mathjax/, once."""
    import jupyter_server_mathjax

    source = Path(jupyter_server_mathjax.__file__).parent / "static"
    target = Path(feedback_dir) / FEEDBACK_MATHJAX_DIR
    if not (target / "MathJax.js").is_file():
        shutil.copytree(source, target, dirs_exist_ok=True)
    return target


def feedback(labs_dir: Path) -> list[Path]:
    """Feedback HTML for every autograded submission, hidden tests removed, math offline."""
    labs_dir = check_labs_dir(labs_dir)
    run_nbgrader(labs_dir, "generate_feedback", "*", "--force")
    copy_mathjax(labs_dir / "feedback")
    return sorted((labs_dir / "feedback").glob("*/*/*.html"))


def export(labs_dir: Path, csv_name: str = "grades.csv") -> Path:
    """Write the gradebook as CSV (one row per student and lab) and return its path."""
    labs_dir = check_labs_dir(labs_dir)
    run_nbgrader(labs_dir, "export", "--to", csv_name)
    return labs_dir / csv_name


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
    feedback(labs_dir)
    return export(labs_dir)


# ------------------------------------------------------------- feedback preprocessing


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
    if isinstance(result, list):
        print("\n".join(map(str, result)))
    elif result is not None:
        print(result)
    return 0
