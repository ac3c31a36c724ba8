"""The course's repository address is one setting (`repository.url` in _config.yml).

It drives the book's repository/issues and Binder/Colab buttons (book/_ext/
repository_buttons.py: left out while the address is empty) and the commented "Sur Colab"
first cell of every notebook (tools/add_colab_cell.py writes it; this file checks it).
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted(ROOT.glob("notebooks/[0-9][0-9]_*.ipynb"))
HTML_DIR = ROOT / "_build" / "html"
LAUNCH_LINK = re.compile(r'href="(https://(?:mybinder\.org|colab\.research\.google\.com)[^"]*)"')


def load(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


colab = load(ROOT / "tools" / "add_colab_cell.py", "add_colab_cell")
buttons = load(ROOT / "book" / "_ext" / "repository_buttons.py", "repository_buttons")
URL, BRANCH = colab.repository()
LAUNCH = {"binderhub_url": "https://mybinder.org", "colab_url": "https://colab.research.google.com"}


# ------------------------------------------------------------------------- the book


@pytest.mark.parametrize(("url", "shown"), [("", False), ("  ", False), ("https://github.com/o/r", True)])
def test_buttons_follow_the_repository_address(url, shown):
    options = buttons.repository_buttons({"repository_url": url, "launch_buttons": LAUNCH,
                                          "use_repository_button": True})
    assert options["use_repository_button"] is shown and options["use_issues_button"] is shown
    assert options["launch_buttons"] == (LAUNCH if shown else {})


def test_the_address_is_set_in_one_place():
    config = (ROOT / "_config.yml").read_text(encoding="utf8")
    assert len(re.findall(r"^\s+url:", config, re.M)) == 1, "repository.url must be the only address"
    assert "use_repository_button" not in config and "use_issues_button" not in config
    assert re.search(r"^repository:\n  url: ", config, re.M)


def test_built_notebook_pages_launch_only_with_an_address():
    pages = sorted((HTML_DIR / "notebooks").glob("*.html"))
    if not pages:
        pytest.fail(f"the built book ({HTML_DIR}) is missing: run `make book` first", pytrace=False)
    links = {p.name: LAUNCH_LINK.findall(p.read_text("utf8")) for p in pages}
    if not URL:
        assert not any(links.values()), f"launch buttons without a repository address: {links}"
        return
    owner_repo = "/".join(URL.rstrip("/").split("/")[-2:])
    missing = [name for name, found in links.items() if not any(owner_repo in link for link in found)]
    assert not missing, f"pages without Binder/Colab buttons to {URL}: {missing}"


# ------------------------------------------------------------------ the Colab cell


def test_colab_cell_runs_nothing_and_names_the_repository():
    source = colab.colab_cell_source("https://github.com/o/r", "main")
    assert all(line.startswith("#") for line in source.splitlines())
    assert "git clone --depth 1 --branch main https://github.com/o/r " in source
    assert colab.PLACEHOLDER in colab.colab_cell_source("")
    assert source.startswith("# Sur Colab : décommentez")


def test_inserting_twice_gives_one_cell_first():
    notebook = {"cells": [{"cell_type": "markdown", "id": "t", "metadata": {}, "source": "# Titre"}]}
    old = colab.with_colab_cell(notebook, colab.colab_cell_source("https://github.com/o/old"))
    new = colab.with_colab_cell(old, colab.colab_cell_source("https://github.com/o/new"))
    assert [c["id"] for c in new["cells"]] == [colab.CELL_ID, "t"]
    assert colab.has_colab_cell(new, colab.colab_cell_source("https://github.com/o/new"))
    assert not colab.has_colab_cell(old, colab.colab_cell_source("https://github.com/o/new"))
    assert not colab.has_colab_cell(notebook, colab.colab_cell_source(""))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_notebook_starts_with_the_colab_cell(path):
    notebook = json.loads(path.read_text(encoding="utf8"))
    assert colab.has_colab_cell(notebook, colab.colab_cell_source(URL, BRANCH)), (
        f"{path.name}: its first cell is not the 'Sur Colab' cell for repository.url={URL!r}: "
        "run `.venv/bin/python tools/add_colab_cell.py`"
    )
