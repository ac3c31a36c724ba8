"""The graded labs and their grader: nbgrader release/feedback/export, sandboxed grading.

One simulated class of three students hands in every lab, in a tmp copy of labs/:
"complet" (the instructor's source, solutions included), "vide" (the released notebook,
unchanged) and "partiel" (solutions, except one answer that loops forever or raises, and
one unanswered question whose test cell was edited to pass). The workflow's steps
(release, sandboxed autograde, feedback, export) then run once for the whole class, as
`make labs-grade` does. tests/test_grading_sandbox.py grades a class of cheats and faults.
"""

from __future__ import annotations

import csv
import json
import re
import shutil
import time
from dataclasses import dataclass
from html import unescape
from pathlib import Path

import nbformat
import pytest
from traitlets.config.loader import PyFileConfigLoader

from qlora_lab.grading import report
from qlora_lab.grading import workflow as grading
from qlora_lab.grading.answers import load_checks
from qlora_lab.grading.grader import FAILED, NO_ANSWER

ROOT = Path(__file__).resolve().parents[1]
LABS_DIR = ROOT / "labs"
LABS = grading.lab_ids(LABS_DIR)
STUDENTS = ("complet", "vide", "partiel")
COURSE_ID = "qlora-lab"

# What the "partiel" student breaks in each lab: a solution cell that loops forever or
# raises (its tests must score 0, the others keep their marks), and a question left
# unanswered whose test cell is replaced by `pass` (nbgrader must restore the test).
LOOP_FOREVER = "while True:\n    pass\n"
RAISES = 'raise RuntimeError("bogue de l\'étudiant")\n'
EDITED_TEST = "# tests supprimés par l'étudiant\npass\n"


@dataclass(frozen=True)
class Breakage:
    broken_solution: str  # grade_id of the solution cell replaced
    replacement: str  # LOOP_FOREVER or RAISES
    broken_tests: tuple[str, ...]  # test cells that must then score 0
    cheat_solution: str  # solution cell left as released (stub)
    cheat_tests: str  # its test cell, edited to pass


PARTIAL = {
    "01_quantification_blocs": Breakage("q2_code", LOOP_FOREVER, ("q2_tests",), "q4_code", "q4_tests"),
    "02_nf4_double_quant": Breakage("q3_code", RAISES, ("q3_tests",), "q4_code", "q4_tests"),
    "03_flops_memoire": Breakage("q2_code", RAISES, ("q2_tests",), "q4_code", "q4_tests"),
    "04_finetuning_qlora": Breakage("q4_entrainement", RAISES, ("q4_tests", "q4_competence"), "q2_code", "q2_tests"),
}


# ------------------------------------------------------------------------- helpers


def grade_id(cell) -> str | None:
    return cell.metadata.get("nbgrader", {}).get("grade_id")


def read_nb(path: Path):
    return nbformat.read(path, as_version=4)


def source_nb(lab: str):
    return read_nb(LABS_DIR / "source" / lab / f"{lab}.ipynb")


def autograded_cells(nb) -> dict[str, float]:
    """grade_id -> points of the cells nbgrader scores by running tests."""
    return {
        grade_id(c): float(c.metadata.nbgrader["points"])
        for c in nb.cells
        if c.metadata.get("nbgrader", {}).get("grade") and c.cell_type == "code"
    }


def manual_cells(nb) -> dict[str, float]:
    """grade_id -> points of the answers an instructor grades by hand."""
    return {
        grade_id(c): float(c.metadata.nbgrader["points"])
        for c in nb.cells
        if c.metadata.get("nbgrader", {}).get("grade") and c.cell_type == "markdown"
    }


def region_lines(nb, begin: str, end: str) -> list[str]:
    """Non-trivial lines between `### BEGIN x` and `### END x` markers, over all cells."""
    lines = []
    for cell in nb.cells:
        inside = False
        for line in cell.source.splitlines():
            if begin in line:
                inside = True
            elif end in line:
                inside = False
            elif inside and len(line.strip()) > 12:
                lines.append(line.strip())
    return lines


def partial_submission(lab: str, released) -> object:
    """The released notebook, filled in by a student who breaks what PARTIAL says."""
    plan = PARTIAL[lab]
    solutions = {grade_id(c): c.source for c in source_nb(lab).cells if grade_id(c)}
    nb = released
    for cell in nb.cells:
        gid = grade_id(cell)
        if gid == plan.broken_solution:
            cell.source = plan.replacement
        elif gid == plan.cheat_tests:
            cell.source = EDITED_TEST
        elif gid != plan.cheat_solution and cell.metadata.get("nbgrader", {}).get("solution"):
            cell.source = solutions[gid]
    return nb


def submit(work: Path, student: str, lab: str, nb) -> None:
    folder = work / "submitted" / student / lab
    folder.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, folder / f"{lab}.ipynb")


def scores_from_gradebook(work: Path) -> dict[tuple[str, str], dict[str, float | None]]:
    """(student, lab) -> {grade_id: auto score} read from nbgrader's SQLite gradebook."""
    from nbgrader.api import Gradebook

    scores = {}
    with Gradebook(f"sqlite:///{work / 'gradebook.db'}", COURSE_ID) as gb:
        for lab in LABS:
            for student in STUDENTS:
                notebook = gb.find_submission_notebook(lab, lab, student)
                scores[(student, lab)] = {g.name: g.auto_score for g in notebook.grades}
    return scores


# ------------------------------------------------------------------ the class, graded


@dataclass
class GradedClass:
    work: Path
    scores: dict
    grades_csv: Path
    feedback: list[Path]
    autograde_s: float
    course_ids: set[str]


@pytest.fixture(scope="module")
def graded(tmp_path_factory) -> GradedClass:
    work = tmp_path_factory.mktemp("labs")
    for name in ("nbgrader_config.py", "templates", "source", "checks"):
        src = LABS_DIR / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, work / name)
    timings = {}
    start = time.perf_counter()
    assert grading.release(work) == LABS
    timings["generate_assignment"] = time.perf_counter() - start
    for lab in LABS:
        released = work / "release" / lab / f"{lab}.ipynb"
        submit(work, "complet", lab, source_nb(lab))
        submit(work, "vide", lab, read_nb(released))
        submit(work, "partiel", lab, partial_submission(lab, read_nb(released)))
    start = time.perf_counter()
    grading.autograde(work)
    timings["autograde"] = autograde_s = time.perf_counter() - start
    start = time.perf_counter()
    feedback = grading.feedback(work)
    timings["generate_feedback"] = time.perf_counter() - start
    start = time.perf_counter()
    grades_csv = grading.export(work)
    timings["export"] = time.perf_counter() - start
    print("\nnbgrader wall time (s):", {step: round(s, 1) for step, s in timings.items()})
    from nbgrader.api import Assignment, Gradebook

    with Gradebook(f"sqlite:///{work / 'gradebook.db'}", COURSE_ID) as gb:
        course_ids = {a.course_id for a in gb.db.query(Assignment).all()}
    return GradedClass(work, scores_from_gradebook(work), grades_csv, feedback, autograde_s, course_ids)


# --------------------------------------------------------------------------- config


def test_config_loads_with_every_key():
    """An exception in nbgrader_config.py makes nbgrader ignore the whole file: load it."""
    config = PyFileConfigLoader("nbgrader_config.py", path=str(LABS_DIR)).load_config()
    assert config.CourseDirectory.course_id == COURSE_ID
    assert config.Execute.timeout == config.ExecutePreprocessor.timeout == 30
    assert config.Execute.interrupt_on_timeout is True
    timeout_of = config.Execute.timeout_func
    assert timeout_of({"metadata": {"nbgrader": {"grade_id": "q1_code"}}}) == 30
    assert timeout_of({"metadata": {"nbgrader": {"grade_id": "q4_entrainement"}}}) > 30
    assert "qlora_lab.grading.preprocessors.HideHiddenTests" in config.GenerateFeedback.preprocessors
    assert "MathJax.js" in config.HTMLExporter.mathjax_url and "://" not in config.HTMLExporter.mathjax_url
    for folder in config.HTMLExporter.extra_template_basedirs:
        assert Path(folder).is_dir(), folder
    assert config.ClearSolutions.code_stub["python"].endswith("raise NotImplementedError()")


def test_nbgrader_saw_the_course_id_and_registered_every_lab(graded):
    assert graded.course_ids == {COURSE_ID}
    assert grading.registered_labs(graded.work) == set(LABS)


# --------------------------------------------------------------------- source labs


@pytest.mark.parametrize("lab", LABS)
def test_every_graded_cell_has_id_points_and_heading(lab):
    nb = source_nb(lab)
    graded_cells = {**autograded_cells(nb), **manual_cells(nb)}
    assert len(manual_cells(nb)) == 1, "one open question, graded by hand, per lab"
    assert all(points > 0 for points in graded_cells.values())
    headings = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    announced = [int(p) for p in re.findall(r"^### Question \d+ \((\d+) points?", headings, re.M)]
    assert sum(announced) == sum(graded_cells.values()), "points in the headings = points of the cells"
    title_total = re.search(r"^# .*\((\d+) points\)", headings, re.M)
    assert title_total and int(title_total.group(1)) == sum(graded_cells.values())
    text = "\n".join(c.source for c in nb.cells)
    assert "### BEGIN SOLUTION" in text and "### BEGIN HIDDEN TESTS" in text
    # every automatically graded cell is graded by a hidden test of labs/checks/<lab>.py
    assert set(load_checks(LABS_DIR, lab)) == set(autograded_cells(nb))


@pytest.mark.parametrize("lab", LABS)
def test_release_has_no_solution_and_no_hidden_test(graded, lab):
    source = source_nb(lab)
    released = read_nb(graded.work / "release" / lab / f"{lab}.ipynb")
    text = "\n".join(c.source for c in released.cells)
    for marker in ("BEGIN SOLUTION", "END SOLUTION", "BEGIN HIDDEN TESTS", "END HIDDEN TESTS"):
        assert marker not in text
    hidden = region_lines(source, "BEGIN HIDDEN TESTS", "END HIDDEN TESTS")
    solution = region_lines(source, "BEGIN SOLUTION", "END SOLUTION")
    assert hidden and solution
    code = "\n".join(c.source for c in released.cells if c.cell_type == "code")
    # statements may quote an API call that a solution also uses: solutions are looked
    # for in the code cells, hidden tests everywhere
    leaked = [line for line in solution if line in code] + [line for line in hidden if line in text]
    assert not leaked, f"released notebook leaks: {leaked[:3]}"
    regions = sum(c.source.count("### BEGIN SOLUTION") for c in source.cells if c.cell_type == "code")
    assert text.count("# VOTRE CODE ICI") == regions


# ------------------------------------------------------------------------ grading


@pytest.mark.parametrize("lab", LABS)
def test_source_scores_full_marks(graded, lab):
    expected = autograded_cells(source_nb(lab))
    got = graded.scores[("complet", lab)]
    assert {gid: got[gid] for gid in expected} == expected
    # the open question is left to the instructor (no automatic score)
    assert all(got[gid] is None for gid in manual_cells(source_nb(lab)))


@pytest.mark.parametrize("lab", LABS)
def test_unchanged_release_scores_zero(graded, lab):
    got = graded.scores[("vide", lab)]
    nb = source_nb(lab)
    assert {gid: got[gid] for gid in autograded_cells(nb)} == dict.fromkeys(autograded_cells(nb), 0.0)
    # an unanswered open question is graded 0 automatically
    assert all(got[gid] == 0.0 for gid in manual_cells(nb))


@pytest.mark.parametrize("lab", LABS)
def test_partial_submission_keeps_its_other_marks(graded, lab):
    plan = PARTIAL[lab]
    expected = autograded_cells(source_nb(lab))
    for gid in (*plan.broken_tests, plan.cheat_tests):
        expected[gid] = 0.0
    got = graded.scores[("partiel", lab)]
    assert {gid: got[gid] for gid in expected} == expected


def test_infinite_loop_is_cut_at_the_configured_timeout(graded):
    lab = next(lab for lab, plan in PARTIAL.items() if plan.replacement == LOOP_FOREVER)
    entries = json.loads((graded.work / "grading_report.json").read_text())["submissions"]
    entry = next(e for e in entries if (e["student"], e["lab"]) == ("partiel", lab))
    seconds = entry["cell_seconds"][PARTIAL[lab].broken_solution]
    config = PyFileConfigLoader("nbgrader_config.py", path=str(LABS_DIR)).load_config()
    assert config.Execute.timeout - 1 <= seconds <= config.Execute.timeout + 15
    # the kernel answered the interrupt: later questions were graded, nothing to review
    assert entry["to_review"] == "" and entry["cell_seconds"].keys() >= set(autograded_cells(source_nb(lab)))


@pytest.mark.parametrize("lab", LABS)
def test_edited_test_cell_is_restored(graded, lab):
    """A locked cell always comes from the release, whatever the student did to it."""
    plan = PARTIAL[lab]
    released = read_nb(graded.work / "release" / lab / f"{lab}.ipynb")
    visible = {grade_id(c): c.source for c in released.cells if grade_id(c)}
    nb = read_nb(graded.work / "autograded" / "partiel" / lab / f"{lab}.ipynb")
    cell = next(c for c in nb.cells if grade_id(c) == plan.cheat_tests)
    assert cell.source == visible[plan.cheat_tests] != EDITED_TEST
    assert [o.text.strip() for o in cell.outputs] in ([FAILED], [NO_ANSWER])


# ---------------------------------------------------------------- feedback, export


def test_feedback_hides_hidden_tests_and_renders_math_offline(graded):
    assert len(graded.feedback) == len(LABS) * len(STUDENTS)
    hidden = {lab: report.hidden_lines(graded.work, lab) for lab in LABS}  # labs/checks/<lab>.py
    assert all(len(lines) > 20 for lines in hidden.values())
    for page in graded.feedback:
        html = page.read_text()
        lab = page.parent.name
        shown = unescape(re.sub(r"<[^>]+>", "", html))  # pygments splits code into spans
        assert "HIDDEN TESTS" not in shown
        # a hidden-test line the student wrote in their own answer is no leak
        own = graded.work / "autograded" / page.parent.parent.name / lab / f"{lab}.ipynb"
        assert not [line for line in report.shown_elsewhere(hidden[lab], own) if line in shown]
        scripts = re.findall(r'<script[^>]+src="([^"]+)"', html)
        mathjax = [s for s in scripts if "MathJax.js" in s]
        assert mathjax and not any("://" in s for s in scripts), scripts
        assert (page.parent / mathjax[0].split("?")[0]).resolve().is_file()


def test_grades_csv_has_every_student_and_lab(graded):
    with open(graded.grades_csv, newline="") as f:
        rows = {(r["student_id"], r["assignment"]): r for r in csv.DictReader(f)}
    assert set(rows) == {(s, lab) for s in STUDENTS for lab in LABS}
    assert all(row["to_review"] == "" for row in rows.values())
    print(f"\nautograde of {len(rows)} submissions: {graded.autograde_s:.0f} s")
    print(f"{'lab':26s}" + "".join(f"{s:>10s}" for s in STUDENTS) + "       max")
    for lab in LABS:
        nb = source_nb(lab)
        auto = sum(autograded_cells(nb).values())
        assert float(rows[("complet", lab)]["raw_score"]) == auto
        assert float(rows[("vide", lab)]["raw_score"]) == 0.0
        assert 0.0 < float(rows[("partiel", lab)]["raw_score"]) < auto
        assert float(rows[("complet", lab)]["max_score"]) == auto + sum(manual_cells(nb).values())
        print(f"{lab:26s}" + "".join(f"{float(rows[(s, lab)]['raw_score']):10.1f}" for s in STUDENTS)
              + f"{float(rows[('complet', lab)]['max_score']):10.1f}")


# ------------------------------------------------------------------- grading driver


@pytest.mark.parametrize("missing", ["nbgrader_config.py", "source"])
def test_driver_rejects_a_folder_that_is_not_a_labs_folder(tmp_path, missing):
    shutil.copy(LABS_DIR / "nbgrader_config.py", tmp_path / "nbgrader_config.py")
    (tmp_path / "source").mkdir()
    target = tmp_path / missing
    target.unlink() if target.is_file() else target.rmdir()
    with pytest.raises(ValueError, match="labs_dir"):
        grading.release(tmp_path)


def test_driver_refuses_to_grade_without_submissions(tmp_path):
    shutil.copy(LABS_DIR / "nbgrader_config.py", tmp_path / "nbgrader_config.py")
    (tmp_path / "source").mkdir()
    with pytest.raises(ValueError, match="no submission"):
        grading.autograde(tmp_path)


def test_hide_hidden_tests_keeps_visible_tests_and_the_error_message():
    cell = nbformat.v4.new_code_cell("assert f(1) == 2\n### BEGIN HIDDEN TESTS\nassert f(3) == 4\n### END HIDDEN TESTS\n")
    cell.outputs = [nbformat.v4.new_output("error", ename="AssertionError", evalue="f(3)", traceback=["assert f(3) == 4"])]
    cell, _ = grading.HideHiddenTests().preprocess_cell(cell, {}, 0)
    assert cell.source == "assert f(1) == 2"
    assert cell.outputs[0].traceback == ["AssertionError: f(3)"]


# ------------------------------------------------- lab 04: graded by running the model's code


def untrained_adapter_answers() -> dict:
    """What a kernel that never trained would hand in: the fresh adapters `finetune` attaches (B = 0)."""
    from qlora_lab.finetune.adapters import attach_lora
    from qlora_lab.finetune.config import FinetuneConfig
    from qlora_lab.model.models import load_model

    model, _ = load_model(quantization="nf4", double_quant=True)
    model = attach_lora(model, FinetuneConfig.for_data("functions"))
    return {name: {"dtype": "torch.float32", "shape": list(p.shape), "values": p.detach().float().tolist()}
            for name, p in model.named_parameters() if p.requires_grad}


def test_lab04_grader_measures_pass_at_1_itself(monkeypatch):
    """Untrained adapters cannot pass the skill check, and a pass@1 the weights do not give is caught."""
    checks = load_checks(LABS_DIR, "04_finetuning_qlora")
    grader_globals = checks["q4_tests"].verify.__globals__
    monkeypatch.setitem(grader_globals, "PROBLEMS", 8)  # 8 problems instead of 40: the same code path, faster
    lora = untrained_adapter_answers()
    with pytest.raises(AssertionError, match="pass@1 on problems never seen"):
        checks["q4_competence"].verify(None, {"lora": lora})
    # the base model passes ~0 of the problems: reporting 5 of 8 is a false report
    with pytest.raises(AssertionError, match="base model: 5 reported"):
        checks["q4_tests"].verify(None, {"avant": [5, 8], "apres": [7, 8], "lora": lora})
    with pytest.raises(AssertionError, match="scored on the notebook's 8 problems"):
        checks["q4_tests"].verify(None, {"avant": [0, 40], "apres": [7, 8], "lora": lora})
    wrong_names = {name.replace("lora_A", "lora_X"): value for name, value in lora.items()}
    with pytest.raises(AssertionError, match="only the LoRA adapters"):
        checks["q4_competence"].verify(None, {"lora": wrong_names})
