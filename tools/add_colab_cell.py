"""Put the "Sur Colab" cell first in every course notebook (or check that it is there).

    python tools/add_colab_cell.py            # insert or update the cell in notebooks/*.ipynb
    python tools/add_colab_cell.py --check    # exit 1 and list the notebooks that disagree

The cell is commented out: it runs nothing in JupyterLab, nbval or the book build (no
live `!pip`, see tests/test_notebooks.py). On Colab a student uncomments it to clone the
course and install it. The address comes from the one setting of _config.yml,
`repository.url` (the same one the book's launch buttons use); while it is empty the cell
shows a placeholder. The cell is tagged `colab` (found again on update) and
`remove-cell` (the static book does not show it). tests/test_launch_buttons.py checks it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "_config.yml"
NOTEBOOK_GLOB = "notebooks/[0-9][0-9]_*.ipynb"
CELL_ID = "colab-install"
TAGS = ["colab", "remove-cell"]
PLACEHOLDER = "https://github.com/<organisation>/qlora-lab"  # until repository.url is set
CLONE_DIR = "/content/qlora-lab"  # Colab's working folder


def repository(config: Path = CONFIG) -> tuple[str, str]:
    """(address, branch) of the course's repository from _config.yml (address may be '')."""
    repo = (yaml.safe_load(config.read_text(encoding="utf-8")) or {}).get("repository") or {}
    return str(repo.get("url") or "").strip(), str(repo.get("branch") or "main").strip()


def colab_cell_source(url: str, branch: str = "main") -> str:
    """The cell's text: French instructions, every line a comment."""
    address = url or PLACEHOLDER
    return "\n".join([
        "# Sur Colab : décommentez les quatre lignes ci-dessous, puis exécutez la cellule",
        "# (une fois par session) : elles installent le cours depuis son dépôt.",
        "# Dans JupyterLab (`make lab`), le cours est déjà installé : laissez-la commentée.",
        f"# !git clone --depth 1 --branch {branch} {address} {CLONE_DIR}",
        f"# %pip install --quiet -e {CLONE_DIR}",
        "# import os",
        f'# os.chdir("{CLONE_DIR}/notebooks")',
    ])


def colab_cell(source: str) -> dict:
    return {"cell_type": "code", "execution_count": None, "id": CELL_ID,
            "metadata": {"tags": list(TAGS)}, "outputs": [], "source": source.splitlines(keepends=True)}


def is_colab_cell(cell: dict) -> bool:
    return cell.get("id") == CELL_ID or "colab" in cell.get("metadata", {}).get("tags", [])


def with_colab_cell(notebook: dict, source: str) -> dict:
    """The notebook with exactly one Colab cell, first (an older one is replaced)."""
    cells = [c for c in notebook["cells"] if not is_colab_cell(c)]
    return {**notebook, "cells": [colab_cell(source), *cells]}


def cell_text(cell: dict) -> str:
    text = cell.get("source", "")
    return "".join(text) if isinstance(text, list) else text


def has_colab_cell(notebook: dict, source: str) -> bool:
    """Is the first cell the Colab cell, with this text and these tags, and the only one?"""
    cells = notebook["cells"]
    first = cells[0] if cells else {}
    return (bool(cells) and is_colab_cell(first) and first["cell_type"] == "code"
            and cell_text(first) == source and first.get("metadata", {}).get("tags") == TAGS
            and sum(map(is_colab_cell, cells)) == 1)


def write_notebook(path: Path, notebook: dict) -> None:
    """JSON as Jupyter writes it (indent 1, non-ASCII kept, final newline), keys in their order."""
    path.write_text(json.dumps(notebook, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report notebooks that disagree")
    args = parser.parse_args(argv)
    source = colab_cell_source(*repository())
    stale = []
    for path in sorted(ROOT.glob(NOTEBOOK_GLOB)):
        notebook = json.loads(path.read_text(encoding="utf-8"))
        if has_colab_cell(notebook, source):
            continue
        stale.append(path.relative_to(ROOT).as_posix())
        if not args.check:
            write_notebook(path, with_colab_cell(notebook, source))
    verb = "to update" if args.check else "updated"
    print(f"{len(stale)} notebook(s) {verb}" + "".join(f"\n  {name}" for name in stale))
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
