"""Self-check of the exercises: right, almost, wrong and unanswered, never giving the answer away."""

import json
import math
import re

import pytest
import torch

from qlora_lab.course import self_check
from qlora_lab.course.self_check import Verdict, choice, exact, numeric, parts, verifier
from qlora_lab.french import nombre
from qlora_lab.paths import REPO_DIR


def _revealed(verdict: Verdict, expected: float) -> bool:
    """Whether the message shows the expected value, written the French or the Python way."""
    html = re.sub(r'style="[^"]*"', "", verdict._repr_html_())  # colours hold digits
    text = repr(verdict) + html + verdict._repr_markdown_()
    spellings = {str(expected), nombre(expected)}
    if isinstance(expected, float):
        spellings |= {f"{expected:.{d}g}" for d in (2, 3, 4)} | {nombre(expected, d) for d in (1, 2, 3)}
    return any(s in text for s in spellings)


@pytest.fixture
def fake_registry(monkeypatch):
    checkers = {"99.1": numeric(lambda: math.pi, rtol=0.01, partial_rtol=0.2),
                "99.2": exact(lambda: 6),
                "99.3": choice(lambda: "zéro-point", ("absmax", "zéro-point")),
                "99.4": parts({"a": numeric(lambda: 2.5), "b": exact(lambda: 3)})}
    monkeypatch.setattr(self_check, "registry", lambda: checkers)
    return checkers


@pytest.mark.parametrize("answer, status", [(3.1416, "juste"), (torch.tensor(3.14), "juste"),
                                            (3.4, "partiel"), (2.9, "partiel"), (10.0, "faux"),
                                            (-3.14, "faux"), ("pi", "faux"), (float("nan"), "faux")])
def test_numeric_within_tolerance_is_right_near_is_almost(fake_registry, answer, status):
    verdict = verifier("99.1", answer)
    assert verdict.status == status
    assert verdict.exercise == "99.1"
    assert not _revealed(verdict, math.pi)


@pytest.mark.parametrize("answer", [None, ...])
def test_no_answer_yet_asks_for_one(fake_registry, answer):
    for exercise in fake_registry:
        verdict = verifier(exercise, answer)
        assert verdict.status == "vide" and "None" in verdict.message


def test_wrong_numbers_say_which_side_without_the_value(fake_registry):
    assert "trop grande" in verifier("99.1", 100.0).message
    assert "trop petite" in verifier("99.1", 0.001).message
    assert "trop grand" in verifier("99.2", 8).message.lower()
    assert "trop petit" in verifier("99.2", 4).message.lower()
    for wrong in (4, 8, 6.5, "six"):
        verdict = verifier("99.2", wrong)
        assert verdict.status == "faux" and not _revealed(verdict, 6)
    assert verifier("99.2", 6.0).juste and verifier("99.2", torch.tensor(6)).juste


def test_choice_ignores_case_and_accents_and_lists_the_options(fake_registry):
    assert verifier("99.3", "Zero-Point ").juste
    assert verifier("99.3", "absmax").status == "faux"
    unknown = verifier("99.3", "int8")
    assert unknown.status == "faux" and "absmax" in unknown.message


def test_parts_count_the_right_ones(fake_registry):
    assert verifier("99.4", {"a": 2.5, "b": 3}).juste
    half = verifier("99.4", {"a": 2.5, "b": 4})
    assert half.status == "partiel" and "« b »" in half.message and "« a »" not in half.message
    assert verifier("99.4", {"a": 9.0, "b": 4}).status == "faux"
    assert verifier("99.4", {"a": 2.5, "b": None}).status == "partiel"
    assert verifier("99.4", {"a": None, "b": None}).status == "vide"
    assert verifier("99.4", [2.5, 3]).status == "faux"


def test_solution_mode_raises_unless_right(fake_registry):
    assert verifier("99.2", 6, solution=True).juste
    with pytest.raises(AssertionError, match="99.2"):
        verifier("99.2", 5, solution=True)
    with pytest.raises(AssertionError):
        verifier("99.2", None, solution=True)


def test_unknown_exercise_and_bad_status():
    with pytest.raises(KeyError, match="00.0"):
        verifier("00.0", 1)
    with pytest.raises(ValueError, match="status"):
        Verdict("bof", "")


def test_expected_value_is_computed_once_on_first_use():
    calls = []
    check = numeric(lambda: calls.append(1) or 2.0)
    assert calls == []
    check(2.0), check(3.0)
    assert calls == [1]


def test_verdict_displays_as_french_html_and_markdown(fake_registry):
    verdict = verifier("99.1", 3.1416)
    assert "Juste" in verdict._repr_html_() and "qlora-verdict-juste" in verdict._repr_html_()
    assert verdict._repr_markdown_().startswith("**✅ Exercice 99.1 : Juste**")
    assert "<" not in Verdict("faux", "a < b")._repr_html_().split("</strong>")[1].replace("</div>", "")


def test_the_course_registry_holds_the_exercises_of_chapters_01_to_03():
    ids = self_check.registry()
    assert all(re.fullmatch(r"\d\d\.\d+", i) for i in ids)
    assert {"01.1", "01.2", "01.3", "02.1", "02.2", "02.3", "03.1", "03.2", "03.3"} <= set(ids)


def test_chapter_01_checkers_against_independent_computations():
    from qlora_lab.course.images import load_sample_image, psnr, quantize_image

    photo = load_sample_image()
    bits = next(b for b in range(1, 9) if psnr(photo, quantize_image(photo, b)) > 40)
    assert verifier("01.2", bits).juste
    assert verifier("01.2", bits + 1).status == "faux" and not _revealed(verifier("01.2", bits + 1), bits)
    # 01.1 by hand: absmax scale max|x|/7, zero-point scale (max-min)/15
    x = torch.randn(10_000, generator=torch.Generator().manual_seed(0))
    s = x.abs().max() / 7
    absmax_mse = ((torch.round(x / s) * s - x) ** 2).mean()
    s2 = (x.max() - x.min()) / 15
    z = torch.round(-x.min() / s2)
    zp_mse = (((torch.clamp(torch.round(x / s2) + z, 0, 15) - z) * s2 - x) ** 2).mean()
    ratio = float(absmax_mse / zp_mse)
    assert verifier("01.1", ratio).juste
    assert verifier("01.1", 1.0).status != "juste"


def test_chapter_02_and_03_cheap_checkers():
    assert verifier("02.3", {"qlora": 16 * (4096 + 4096), "qat": 4096 * 4096}).juste
    half = verifier("02.3", {"qlora": 16 * 4096, "qat": 4096 * 4096})
    assert half.status == "partiel" and not _revealed(half, 16 * 8192)
    from qlora_lab.backends import import_bnb

    symmetric = import_bnb().functional.create_normal_map(use_extra_value=False)
    levels = symmetric.unique()  # 256 entries, zeros as padding
    assert verifier("03.1", {"niveaux": levels.numel(), "positifs": int((levels > 0).sum())}).juste
    assert verifier("03.1", {"niveaux": 16, "positifs": 8}).status == "faux"


NOTEBOOKS = sorted((REPO_DIR / "notebooks").glob("[0-9][0-9]_*.ipynb"))
CALL = re.compile(r'verifier\("(\d\d\.\d+)", reponse(, solution=True)?\)')


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_exercises_follow_the_convention(path):
    """Student cell (reponse = None) then a hidden solution cell that the self-check must accept."""
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    student, solution = {}, {}
    for i, cell in enumerate(cells):
        for match in CALL.finditer("".join(cell["source"])):
            (solution if match.group(2) else student)[match.group(1)] = i
    assert set(student) == set(solution), f"{path.name}: exercises without both cells"
    assert set(student) <= set(self_check.registry()), f"{path.name}: unregistered exercises"
    for exercise, i in solution.items():
        assert exercise.startswith(path.name[:2] + "."), f"{path.name}: exercise {exercise}"
        meta = cells[i]["metadata"]
        assert "hide-input" in meta.get("tags", []) and meta.get("jupyter", {}).get("source_hidden") is True
        assert student[exercise] < i
        assert "reponse = None" in "".join(cells[student[exercise]]["source"]) or \
            "None}" in "".join(cells[student[exercise]]["source"])
