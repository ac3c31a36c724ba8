"""Checks on the committed course notebooks (all of them) and on the errata page.

Execution is nbval's job (`pytest notebooks/`); these checks read the JSON only, so
they run in a blink: no outputs committed, the closing sections, and every guide
erratum measured in a tagged cell that book/errata.md points to.
"""

import json
import re
from pathlib import Path

import pytest

from qlora_lab.paths import REPO_DIR

NOTEBOOKS = sorted((REPO_DIR / "notebooks").glob("[0-9][0-9]_*.ipynb"))
ERRATA_PAGE = REPO_DIR / "book" / "errata.md"
N_ERRATA = 17
TAG = re.compile(r"^erratum-(\d+)$")


def load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def source(cell: dict) -> str:
    text = cell.get("source", "")
    return "".join(text) if isinstance(text, list) else text


def erratum_locations() -> dict[int, set[str]]:
    """Erratum number -> stems of the notebooks holding a cell tagged erratum-N."""
    found: dict[int, set[str]] = {}
    for path in NOTEBOOKS:
        for cell in load(path)["cells"]:
            for tag in cell.get("metadata", {}).get("tags", []):
                match = TAG.match(tag)
                if match:
                    found.setdefault(int(match.group(1)), set()).add(path.stem)
    return found


def test_there_are_course_notebooks():
    assert len(NOTEBOOKS) >= 6, [p.name for p in NOTEBOOKS]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_without_outputs(path):
    code = [(i, cell) for i, cell in enumerate(load(path)["cells"]) if cell["cell_type"] == "code"]
    assert code, f"{path.name} has no code cell: nothing was checked"
    for i, cell in code:
        assert cell.get("outputs") == [], f"{path.name} cell {i} has outputs"
        assert cell.get("execution_count") is None, f"{path.name} cell {i} has an execution count"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_ends_with_takeaways_then_exercises(path):
    markdown = [source(c) for c in load(path)["cells"] if c["cell_type"] == "markdown"]
    headings = [line.strip() for text in markdown for line in text.splitlines() if line.startswith("#")]
    assert any(h.startswith("## À retenir") for h in headings), path.name
    assert headings[-1].startswith("## Exercices"), f"{path.name}: last heading is {headings[-1]!r}"
    retenir = max(i for i, h in enumerate(headings) if h.startswith("## À retenir"))
    assert retenir < len(headings) - 1


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_no_pip_install_cells(path):
    code = [source(cell) for cell in load(path)["cells"] if cell["cell_type"] == "code"]
    assert code, f"{path.name} has no code cell: nothing was checked"
    for text in code:
        assert not re.search(r"^\s*[!%]\s*pip\b", text, re.M), path.name


@pytest.mark.parametrize("number", range(1, N_ERRATA + 1))
def test_every_erratum_is_measured_in_a_tagged_cell(number):
    assert number in erratum_locations(), f"no notebook cell is tagged erratum-{number}"


@pytest.mark.parametrize("number", range(1, N_ERRATA + 1))
def test_errata_page_points_to_the_notebook_holding_the_tag(number):
    rows = {int(m.group(1)): m.group(0) for m in re.finditer(r"^\|\s*(\d+)\s*\|.*$", ERRATA_PAGE.read_text(encoding="utf-8"), re.M)}
    assert number in rows, f"book/errata.md has no table row for erratum {number}"
    for stem in erratum_locations().get(number, set()):
        assert f"{stem}.ipynb" in rows[number], f"erratum {number}: the page does not name {stem}.ipynb"
        assert f"erratum-{number}" in rows[number]
