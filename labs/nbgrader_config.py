"""nbgrader configuration of the qlora-lab course (run nbgrader from this folder).

Instructor workflow (see book/labs.md):
    make labs-release   # source/ -> release/ (student versions, no solution, no hidden test)
    make labs-grade     # submitted/ -> autograded/ -> feedback/ (HTML) + grades.csv

Grading does not run `nbgrader autograde`: qlora_lab.grading runs each submission in its
own bubblewrap sandbox with the timeouts below, and checks the answers outside it with the
hidden tests of checks/<lab>.py (never released).

nbgrader silently ignores this whole file when it raises: keep it to plain assignments
and imports that nbgrader itself needs (tests/test_labs.py loads it and checks the keys).
"""

import os

import nbgrader

c = get_config()  # noqa: F821  (injected by traitlets' PyFileConfigLoader)

# ---------------------------------------------------------------------- course layout
c.CourseDirectory.course_id = "qlora-lab"
# The labs are the folders of source/ (source/<lab>/<lab>.ipynb); generate_assignment
# registers each one in the SQLite gradebook (gradebook.db, next to this file).

# ------------------------------------------------------------------- student version
# French stubs in the released notebooks (replacing ### BEGIN/END SOLUTION regions).
c.ClearSolutions.code_stub = {"python": "# VOTRE CODE ICI\nraise NotImplementedError()"}
c.ClearSolutions.text_stub = "VOTRE RÉPONSE ICI"

# -------------------------------------------------------------------- autograding
# Every cell gets at most CELL_TIMEOUT_S seconds (qlora_lab.grading reads cell_timeout):
# an infinite loop is interrupted (0 on its tests) and grading goes on with the next cell.
# Lab 04 loads the embedded model ("preparation", ~10 s) and trains it then scores it twice
# ("q4_entrainement", ~3 min on a 2-core CPU): those two cells get more, for shared or slow machines.
CELL_TIMEOUT_S = 30
LONG_CELL_TIMEOUTS_S = {"preparation": 120, "q4_entrainement": 600}

c.ExecutePreprocessor.timeout = CELL_TIMEOUT_S
c.Execute.timeout = CELL_TIMEOUT_S


def cell_timeout(cell):
    """Per-cell limit for nbclient: the default, or the longer one of a named cell."""
    grade_id = cell.get("metadata", {}).get("nbgrader", {}).get("grade_id", "")
    return LONG_CELL_TIMEOUTS_S.get(grade_id, CELL_TIMEOUT_S)


c.Execute.timeout_func = cell_timeout
# A timed-out cell is interrupted; a kernel that ignores the interrupt is not waited for:
# the cells after it score 0 and the submission is flagged "to review" (grades.csv).
c.Execute.interrupt_on_timeout = True

# -------------------------------------------------------------------------- feedback
# The grader's notebooks behind the feedback hold the released (visible) test cells only,
# and the hidden tests live in checks/<lab>.py; as a second guard, any hidden-test region
# left in a test cell is removed from the feedback (its tracebacks cut to the message).
c.GenerateFeedback.preprocessors = [
    "nbgrader.preprocessors.GetGrades",
    "qlora_lab.grading.preprocessors.HideHiddenTests",
    "nbconvert.preprocessors.CSSHTMLHeaderPreprocessor",
]

# Math offline. nbgrader's feedback template calls nbconvert's `mathjax()` macro without
# an argument, so HTMLExporter.mathjax_url alone would leave the CDN address in the page:
# templates/feedback/mathjax.html.j2, first on the template path, gives that macro a
# local default, MathJax 2.7 from the pip package jupyter-server-mathjax, which
# `qlora_lab.grading` copies to feedback/mathjax/ (two levels above each
# feedback/<student>/<lab>/<lab>.html). nbgrader's own templates come next.
LABS_DIR = os.path.dirname(os.path.abspath(__file__))
NBGRADER_TEMPLATES = os.path.join(os.path.dirname(nbgrader.__file__), "server_extensions", "formgrader", "templates")
c.HTMLExporter.extra_template_basedirs = [os.path.join(LABS_DIR, "templates"), NBGRADER_TEMPLATES]
c.HTMLExporter.mathjax_url = "../../mathjax/MathJax.js?config=TeX-AMS-MML_HTMLorMML-full,Safe"

# --------------------------------------------------------------------------- export
# `nbgrader export` writes grades.csv here (one row per student and lab).
c.ExportPlugin.to = "grades.csv"
