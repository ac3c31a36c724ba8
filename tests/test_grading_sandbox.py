"""A class that tries to fool or break the grader, graded with the README's commands.

In a tmp copy of labs/ (cells limited to 8 s instead of 30 to keep the test short), lab 1
is handed in by: an honest student (the instructor's source), an empty copy, a kernel
that dies (os._exit) after two answers, a loop that ignores the interrupt, an IPython
input transformer that turns every later cell into `pass`, a monkeypatcher (reference
functions, torch.testing.assert_close, answers whose comparisons are always true), a
reader of the sources/gradebook/checks, a gradebook forger with a process meant to
outlive its kernel, a vandal deleting whatever it can reach, a leaker printing the
kernel's input history, and an unreadable file. `python -m qlora_lab.grading release`
then `grade` (what `make labs-release` / `make labs-grade` run) grade the class.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import nbformat
import pytest

from qlora_lab.grading import grader, report, sandbox
from qlora_lab.grading import workflow as grading
from qlora_lab.grading.store import COURSE_ID, REPORT_NAME

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "qlora_lab"
LAB = "01_quantification_blocs"
AUTO = {"q1_tests": 3.0, "q2_tests": 3.0, "q3_tests": 3.0, "q4_tests": 2.0}
ZERO = dict.fromkeys(AUTO, 0.0)

TRANSFORMER = '''
def _tout_passer(lignes):
    return ["pass\\n"]
get_ipython().input_transformers_post.append(_tout_passer)
'''

ALWAYS_TRUE = '''
import torch, torch.testing
import qlora_lab.quant.absmax as reference

class ToujoursVrai:
    def __eq__(self, autre): return True
    __ne__ = __lt__ = __le__ = __gt__ = __ge__ = __eq__
    def __bool__(self): return True
    def __getattr__(self, nom): return ToujoursVrai()
    def __call__(self, *a, **k): return self
    def __getitem__(self, cle): return self
    def __iter__(self): return iter([self, self, self])
    def __abs__(self): return self
    def __sub__(self, autre): return self
    __rsub__ = __add__ = __radd__ = __mul__ = __rmul__ = __truediv__ = __rtruediv__ = __pow__ = __sub__
    def __int__(self): return 127
    def __float__(self): return 1.0
    def tolist(self): return [1.0]

torch.testing.assert_close = lambda *a, **k: None
reference.quantize = reference.dequantize = lambda *a, **k: ToujoursVrai()
reference.quantization_error = lambda *a, **k: {"mse": ToujoursVrai()}
def quantifier_absmax(x, bits=8): return ToujoursVrai(), ToujoursVrai()
def dequantifier_absmax(codes, echelle): return ToujoursVrai()
def quantifier_zeropoint(x, bits=8): return ToujoursVrai(), ToujoursVrai(), ToujoursVrai()
def dequantifier_zeropoint(codes, echelle, zero): return ToujoursVrai()
def quantifier_blocs(x, bits=8, blocksize=64): return ToujoursVrai(), ToujoursVrai()
def dequantifier_blocs(codes, echelles, forme): return ToujoursVrai()
def erreurs_tenseur_et_blocs(x, bits=4, blocksize=64): return {"tenseur": ToujoursVrai(), "blocs": ToujoursVrai()}
'''

READER = '''
import glob, json, sqlite3
motifs = ["../../../source/*/*.ipynb", "../../../gradebook.db", "../../../checks/*.py", "../*/*.ipynb",
          "{work}/source/*/*.ipynb", "{work}/gradebook.db", "{work}/checks/*.py", "{work}/submitted/*/*/*.ipynb",
          "{root}/labs/source/*/*.ipynb", "{root}/labs/checks/*.py", "{root}/.git/HEAD", "/work/*/labs/source/*/*.ipynb"]
trouves = sorted(f for motif in motifs for f in glob.glob(motif))
print("TROUVÉ :", trouves or "rien")
for chemin in trouves:
    if chemin.endswith("{lab}.ipynb"):
        for cellule in json.load(open(chemin))["cells"]:
            if cellule["cell_type"] == "code":
                try:
                    exec("".join(cellule["source"]), globals())
                except Exception:
                    pass
'''

FORGER = '''
import glob, sqlite3, subprocess, sys
for base in glob.glob("../../../gradebook.db") + glob.glob("{work}/gradebook.db"):
    try:
        connexion = sqlite3.connect(base)
        connexion.execute("update grade set auto_score = 99, manual_score = 99")
        connexion.commit()
        print("FORGÉ", base)
    except Exception as erreur:
        print("échec", erreur)
code = ("import time\\ntime.sleep(3)\\nfor p in ['{work}/grades.csv', '../../../grades.csv']:\\n"
        "    try:\\n        open(p, 'w').write('student_id,raw_score\\\\nfaussaire,99\\\\n')\\n"
        "    except OSError:\\n        pass\\n")
subprocess.Popen([sys.executable, "-c", code], start_new_session=True,
                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
print("processus lancé")
'''

VANDAL = '''
import os, shutil
for cible in ["../../..", "..", "{work}", "{work}/submitted", "{work}/feedback", "/tmp"]:
    shutil.rmtree(cible, ignore_errors=True)
for fichier in ["{work}/gradebook.db", "{work}/grades.csv", "../../../gradebook.db"]:
    try:
        open(fichier, "w").write("détruit")
    except OSError:
        pass
for dossier in ["{package}", "{venv}"]:
    try:
        open(os.path.join(dossier, "vandale.txt"), "w").write("x")
        print("ÉCRIT dans", dossier)
    except OSError:
        print("refusé :", dossier)
'''

LEAKER_LINE = '    print("\\n".join(In)); print(repr(globals())[:20000])\n'


@dataclass(frozen=True)
class Student:
    name: str
    expected: dict  # grade_id -> automatic score
    flagged: bool = False


STUDENTS = [
    Student("bavard", AUTO),
    Student("boucle", {**ZERO, "q1_tests": 3.0}, flagged=True),
    Student("crash", {**ZERO, "q1_tests": 3.0, "q2_tests": 3.0}, flagged=True),
    Student("faussaire", ZERO),
    Student("honnete", AUTO),
    Student("illisible", ZERO, flagged=True),
    Student("lecteur", ZERO),
    Student("monkeypatch", ZERO),
    Student("transformateur", ZERO),
    Student("vandale", AUTO),
    Student("vide", ZERO),
]


def grade_id(cell) -> str | None:
    return cell.metadata.get("nbgrader", {}).get("grade_id")


def submission(name: str, work: Path, release, source):
    """The notebook `name` hands in (None: an unreadable file)."""
    solutions = {grade_id(c): c.source for c in source.cells if grade_id(c)}
    nb = nbformat.reads(nbformat.writes(release), as_version=4)
    fill = {"bavard", "boucle", "crash", "honnete", "vandale"}
    for cell in nb.cells:
        if name in fill and cell.metadata.get("nbgrader", {}).get("solution") and cell.cell_type == "code":
            cell.source = solutions[grade_id(cell)]
    by_id = {grade_id(c): c for c in nb.cells if grade_id(c)}
    fmt = dict(work=work, root=ROOT, lab=LAB, package=PACKAGE, venv=Path(sys.prefix))
    top = {"lecteur": READER, "faussaire": FORGER, "vandale": VANDAL, "monkeypatch": ALWAYS_TRUE}
    if name in top:
        code = top[name]
        for key, value in fmt.items():  # not str.format: the cheats' code has braces
            code = code.replace("{" + key + "}", str(value))
        nb.cells.insert(0, nbformat.v4.new_code_cell(code))
    if name == "transformateur":
        by_id["q1_code"].source = TRANSFORMER + by_id["q1_code"].source
    if name == "crash":
        by_id["q3_code"].source = "import os\nos._exit(1)\n"
    if name == "boucle":
        by_id["q2_code"].source = "import signal, time\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nwhile True:\n    time.sleep(0.1)\n"
    if name == "bavard":
        by_id["q1_code"].source = by_id["q1_code"].source.replace("    qmax = 2 ** (bits - 1) - 1\n",
                                                                  LEAKER_LINE + "    qmax = 2 ** (bits - 1) - 1\n", 1)
    return nb


@dataclass
class GradedClass:
    work: Path
    scores: dict
    rows: dict
    seconds: float
    output: str


def printed(work: Path, student: str) -> str:
    """What the student's cells printed, as kept in the autograded notebook (before the first test)."""
    nb = nbformat.read(work / "autograded" / student / LAB / f"{LAB}.ipynb", as_version=4)
    return "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)


def run_step(step: str, work: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "qlora_lab.grading", step, str(work)], cwd=ROOT,
                          capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def graded(tmp_path_factory) -> GradedClass:
    sandbox.check_sandbox()  # bwrap is installed by `make sandbox` (a dependency of `make test`)
    work = tmp_path_factory.mktemp("classe")
    for name in ("templates", "source", "checks"):
        shutil.copytree(ROOT / "labs" / name, work / name)
    config = (ROOT / "labs" / "nbgrader_config.py").read_text()
    assert "CELL_TIMEOUT_S = 30\n" in config
    (work / "nbgrader_config.py").write_text(config.replace("CELL_TIMEOUT_S = 30\n", "CELL_TIMEOUT_S = 8\n"))
    released = run_step("release", work)
    assert released.returncode == 0, released.stderr[-3000:]
    release = nbformat.read(work / "release" / LAB / f"{LAB}.ipynb", as_version=4)
    source = nbformat.read(work / "source" / LAB / f"{LAB}.ipynb", as_version=4)
    for student in STUDENTS:
        folder = work / "submitted" / student.name / LAB
        folder.mkdir(parents=True)
        if student.name == "illisible":
            (folder / f"{LAB}.ipynb").write_text('{"cells": [ pas du json')
        else:
            nbformat.write(submission(student.name, work, release, source), folder / f"{LAB}.ipynb")
    (work / "feedback" / "ancien" / LAB).mkdir(parents=True)  # last run's page of a student gone since
    (work / "feedback" / "ancien" / LAB / f"{LAB}.html").write_text("périmé")
    start = time.perf_counter()
    graded_run = run_step("grade", work)
    seconds = time.perf_counter() - start
    print(f"\n`grade` of {len(STUDENTS)} submissions: {seconds:.0f} s\n{graded_run.stdout}")
    assert graded_run.returncode == 0, graded_run.stdout[-3000:] + graded_run.stderr[-3000:]
    time.sleep(4)  # the forger's background process would have rewritten grades.csv by now
    from nbgrader.api import Gradebook

    with Gradebook(f"sqlite:///{work / 'gradebook.db'}", COURSE_ID) as gb:
        scores = {s.name: {g.name: g.auto_score for g in gb.find_submission_notebook(LAB, LAB, s.name).grades}
                  for s in STUDENTS}
        manual = [g.manual_score for s in STUDENTS for g in gb.find_submission_notebook(LAB, LAB, s.name).grades]
    assert manual == [None] * len(manual), "nobody wrote a manual score"
    with open(work / "grades.csv", newline="") as f:
        rows = {(r["student_id"], r["assignment"]): r for r in csv.DictReader(f)}
    return GradedClass(work, scores, rows, seconds, graded_run.stdout + graded_run.stderr)


@pytest.mark.parametrize("student", STUDENTS, ids=[s.name for s in STUDENTS])
def test_each_student_gets_exactly_what_they_really_answered(graded, student):
    got = graded.scores[student.name]
    assert {gid: got[gid] for gid in AUTO} == student.expected
    row = graded.rows[(student.name, LAB)]
    assert float(row["raw_score"]) == sum(student.expected.values())
    assert bool(row["to_review"]) == student.flagged, row["to_review"]


def test_grades_csv_has_every_student_and_the_report_flags_the_broken_runs(graded):
    assert {s.name for s in STUDENTS} <= {student for student, _ in graded.rows}
    entries = json.loads((graded.work / REPORT_NAME).read_text())["submissions"]
    flagged = {e["student"]: e["to_review"] for e in entries if e["to_review"]}
    assert set(flagged) == {s.name for s in STUDENTS if s.flagged}
    assert "kernel died" in flagged["crash"] and "unreadable" in flagged["illisible"]
    assert "timeout" in flagged["boucle"] or "out of time" in flagged["boucle"]
    assert "to review" in graded.output


def test_nobody_reached_the_course_files_and_the_vandal_harmed_nobody(graded):
    work = graded.work
    for student in STUDENTS:
        assert (work / "submitted" / student.name / LAB / f"{LAB}.ipynb").is_file()
    assert (work / "source" / LAB / f"{LAB}.ipynb").is_file() and (work / "checks" / f"{LAB}.py").is_file()
    assert not list(PACKAGE.rglob("vandale.txt"))
    assert not list(Path(sys.prefix).glob("vandale.txt"))
    assert "TROUVÉ : rien" in printed(work, "lecteur")
    forger = printed(work, "faussaire")
    assert "FORGÉ" not in forger and "processus lancé" in forger
    vandal = printed(work, "vandale")
    assert "ÉCRIT" not in vandal and vandal.count("refusé") == 2


def test_feedback_for_every_readable_submission_none_stale_none_leaking(graded):
    pages = {p.parent.parent.name: p for p in (graded.work / "feedback").glob(f"*/{LAB}/{LAB}.html")}
    assert set(pages) == {s.name for s in STUDENTS}  # the unreadable one gets its zeros explained too
    hidden = report.hidden_lines(graded.work, LAB)
    assert len(hidden) > 20
    for name, page in pages.items():
        text = report.page_text(page.read_text())
        assert not [line for line in hidden if line in text], name
        assert "__qlora_lab" not in text and "reponses" not in text, name
    assert grader.UNREADABLE in report.page_text(pages["illisible"].read_text())
    crash = report.page_text(pages["crash"].read_text())
    assert crash.count(grader.PASSED) == 2 and crash.count(grader.NOT_RUN) == 2
    assert not (graded.work / "feedback" / "ancien").exists()
    backups = list((graded.work / "backups").glob("*/gradebook.db"))
    assert len(backups) == 1


def test_a_leaking_feedback_page_is_not_published(tmp_path):
    hidden = {"attendu = dequantize(quantize(x, bits=bits))"}
    page = "<pre><span>attendu</span> = dequantize(quantize(x, bits=bits))</pre>"
    assert report.leaks(page, hidden) == sorted(hidden)
    assert report.leaks("<p>rien</p>", hidden) == []


def test_grading_refuses_without_a_sandbox(tmp_path, monkeypatch):
    monkeypatch.setattr(sandbox.shutil, "which", lambda name: None)
    with pytest.raises(sandbox.SandboxUnavailable, match="bubblewrap"):
        sandbox.check_sandbox()


def test_sandbox_overhead_per_submission_is_small(tmp_path):
    """The same one-cell notebook through the runner, sandboxed and not: the difference is the
    sandbox's cost per submission. On a busy machine one sample can be noisy: a second try."""
    job = json.dumps({"notebook": nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x = 1")]),
                      "timeouts": [30]}).encode()
    argv = [sys.executable, "-m", "qlora_lab.grading.runner"]
    direct, boxed = [], []
    for _ in range(2):
        start = time.perf_counter()
        done = subprocess.run(argv, input=job, capture_output=True, cwd=tmp_path, timeout=120)
        direct.append(time.perf_counter() - start)
        assert b'"status": "ok"' in done.stdout
        code, out, _, seconds = sandbox.run_in_sandbox(argv, job, sandbox.Limits(wall_s=120, cpu_s=240), [])
        boxed.append(seconds)
        assert code == 0 and b'"status": "ok"' in out
        if min(boxed) - min(direct) <= 2.0:
            break
    overhead = min(boxed) - min(direct)
    print(f"\nsandbox overhead per submission: {overhead:+.2f} s (runner alone {min(direct):.2f} s)")
    assert overhead <= 2.0


ESCAPE = '''
import os, socket, subprocess, sys
seen = {}
try:
    socket.create_connection(("1.1.1.1", 53), timeout=2)
    seen["network"] = "open"
except OSError:
    seen["network"] = "closed"
seen["visible"] = [p for p in ["{root}/labs", "{root}/.git", "{root}/tests", "/root/.ssh"] if os.path.exists(p)]
try:
    open("{package}/intrus.txt", "w")
    seen["package"] = "writable"
except OSError:
    seen["package"] = "read-only"
try:
    bytearray(2 * 2**30)
    seen["memory"] = "2 GiB allocated"
except MemoryError:
    seen["memory"] = "limited"
children = []
try:
    for _ in range(64):
        children.append(subprocess.Popen(["sleep", "30"]))
    seen["processes"] = "unlimited"
except OSError:
    seen["processes"] = "limited"
for child in children:
    child.kill()
    child.wait()
subprocess.Popen(["sleep", "301"], start_new_session=True)  # must die with the sandbox
print(seen)
'''


def test_sandbox_isolation_and_limits():
    """No network, no course folder, read-only package, memory and process limits, tree killed."""
    code = ESCAPE.replace("{root}", str(ROOT)).replace("{package}", str(PACKAGE))
    limits = sandbox.Limits(wall_s=60, cpu_s=60, memory_bytes=2**30, processes=32)
    returncode, out, err, _ = sandbox.run_in_sandbox([sys.executable, "-c", code], b"", limits, [])
    assert returncode == 0, err.decode()
    seen = eval(out.decode().strip().splitlines()[-1])  # a dict literal printed by the script
    assert seen == {"network": "closed", "visible": [], "package": "read-only", "memory": "limited",
                    "processes": "limited"}
    assert not (PACKAGE / "intrus.txt").exists()
    survivors = subprocess.run(["pgrep", "-f", "sleep 301"], capture_output=True, text=True).stdout.split()
    assert not survivors, "a process of the sandbox outlived it"


def test_sandboxes_graded_side_by_side_share_the_cores():
    """A kernel's torch gets its share of the cores (oversubscribed torch runs several times slower)."""
    code = "import torch; print(torch.get_num_threads())"
    for threads in (1, 2):
        limits = sandbox.Limits(wall_s=60, cpu_s=60, threads=threads)
        returncode, out, err, _ = sandbox.run_in_sandbox([sys.executable, "-c", code], b"", limits, [])
        assert returncode == 0, err.decode()
        assert int(out.decode().split()[-1]) == threads
    cores = os.cpu_count() or 1
    assert grading.threads_per_sandbox(1) == cores
    assert grading.threads_per_sandbox(cores + 3) == 1  # never zero
    assert grading.threads_per_sandbox(2) * 2 <= max(cores, 2)


def test_grading_refuses_in_one_line_without_bwrap(tmp_path, monkeypatch, capsys):
    from qlora_lab.grading import workflow

    shutil.copy(ROOT / "labs" / "nbgrader_config.py", tmp_path / "nbgrader_config.py")
    shutil.copytree(ROOT / "labs" / "source" / LAB, tmp_path / "source" / LAB)
    (tmp_path / "submitted" / "quelquun" / LAB).mkdir(parents=True)
    monkeypatch.setattr(sandbox.shutil, "which", lambda name: None)
    assert workflow.main(["autograde", str(tmp_path)]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "bubblewrap" in lines[0] and "refuse" in lines[0]
    assert not (tmp_path / "backups").exists() and not (tmp_path / "autograded").exists()


def test_a_page_showing_a_hidden_line_is_not_published_and_the_run_fails(tmp_path, monkeypatch):
    from qlora_lab.grading import workflow

    for name in ("nbgrader_config.py", "source", "checks"):
        src = ROOT / "labs" / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, tmp_path / name)
    hidden = sorted(report.hidden_lines(tmp_path, LAB))[0]
    release = nbformat.read(ROOT / "labs" / "source" / LAB / f"{LAB}.ipynb", as_version=4)
    for student in ("propre", "fuite"):
        (tmp_path / "autograded" / student / LAB).mkdir(parents=True)
        nbformat.write(nbformat.v4.new_notebook(), tmp_path / "autograded" / student / LAB / f"{LAB}.ipynb")

    def fake_nbgrader(labs_dir, *args):  # what generate_feedback would write
        for student, text in (("propre", "rien de caché"), ("fuite", hidden)):
            page = tmp_path / "feedback.staging" / student / LAB / f"{LAB}.html"
            page.parent.mkdir(parents=True)
            page.write_text(f"<pre>{text}</pre>")

    monkeypatch.setattr(workflow, "run_nbgrader", fake_nbgrader)
    monkeypatch.setattr(workflow, "copy_mathjax", lambda folder: folder)
    with pytest.raises(workflow.FeedbackLeak, match="fuite"):
        workflow.feedback(tmp_path)
    assert (tmp_path / "feedback" / "propre" / LAB / f"{LAB}.html").is_file()
    assert not (tmp_path / "feedback" / "fuite").exists() and not (tmp_path / "feedback.staging").exists()
    assert release.cells  # the source itself is untouched


def test_a_new_run_keeps_manual_scores_and_backs_up_the_gradebook(tmp_path, monkeypatch):
    from nbgrader.api import Gradebook

    from qlora_lab.grading import store, workflow

    monkeypatch.setenv("PATH", workflow.nbgrader_env()["PATH"])  # nbgrader runs `alembic` by name

    with Gradebook(store.gradebook_url(tmp_path), COURSE_ID) as gb:
        gb.add_assignment(LAB)
        gb.add_notebook(LAB, LAB)
        gb.add_grade_cell("q1_tests", LAB, LAB, max_score=3, cell_type="code")
        gb.add_grade_cell("q5_reponse", LAB, LAB, max_score=2, cell_type="markdown")
    store.save_scores(tmp_path, LAB, "dupont", {"q1_tests": 3.0, "q5_reponse": None}, review=False)
    with Gradebook(store.gradebook_url(tmp_path), COURSE_ID) as gb:
        gb.find_grade("q5_reponse", LAB, LAB, "dupont").manual_score = 1.5
        gb.db.commit()
    saved = store.backup(tmp_path)
    store.save_scores(tmp_path, LAB, "dupont", {"q1_tests": 0.0, "q5_reponse": None}, review=True)
    with Gradebook(store.gradebook_url(tmp_path), COURSE_ID) as gb:
        q1, q5 = (gb.find_grade(g, LAB, LAB, "dupont") for g in ("q1_tests", "q5_reponse"))
        assert (q1.auto_score, q1.needs_manual_grade) == (0.0, True)
        assert (q5.manual_score, q5.score) == (1.5, 1.5)
    with Gradebook(f"sqlite:///{saved / 'gradebook.db'}", COURSE_ID) as gb:
        assert gb.find_grade("q1_tests", LAB, LAB, "dupont").auto_score == 3.0
