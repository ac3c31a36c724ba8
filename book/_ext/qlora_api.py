"""Sphinx extension: fill book/api.md with one section per subpackage of `qlora_lab`,
and an autodoc block for each of its public modules.

Several authors add modules at once; generating the `automodule` blocks at build time
keeps the API reference complete without anyone editing the page. A module is public
when no part of its dotted name starts with an underscore (`__init__` gives the
subpackage's own docstring, `__main__` is a script). `tests/test_book.py` checks that
the built page has a section for each of them.
"""

from __future__ import annotations

from pathlib import Path

API_DOCNAME = "book/api"
MARKER = "<!-- qlora-api-modules -->"
PACKAGE = "qlora_lab"


def public_modules(package_dir: Path) -> list[str]:
    """Dotted names of the package's public modules (subpackages included), sorted."""
    names = []
    for path in package_dir.rglob("*.py"):
        parts = path.relative_to(package_dir.parent).with_suffix("").parts
        if path.stem == "__init__":
            parts = parts[:-1]
        if not any(p.startswith("_") for p in parts):
            names.append(".".join(parts))
    return sorted(names)


def module_sections(modules: list[str]) -> str:
    """MyST source: a `##` heading per top-level module or subpackage, a `###` per module in it.

    autodoc emits reStructuredText, so the directive must run inside `eval-rst`
    (under MyST it would be parsed as Markdown and print raw `.. py:module::`).
    A subpackage's heading is followed by its docstring (what it holds, in what order).
    """
    blocks = []
    for name in modules:
        depth = name.count(".")
        if depth == 0:
            continue
        heading = "##" if depth == 1 else "###"
        directive = f".. automodule:: {name}"
        blocks.append(f"{heading} `{name}`\n\n```{{eval-rst}}\n{directive}\n```\n")
    return "\n".join(blocks)


def _fill_api_page(app, docname: str, source: list[str]) -> None:
    if docname != API_DOCNAME or MARKER not in source[0]:
        return
    modules = public_modules(Path(app.srcdir) / PACKAGE)
    source[0] = source[0].replace(MARKER, module_sections(modules))


def _always_reread_api_page(app, env, added, changed, removed) -> list[str]:
    # A new module changes the page although api.md did not change.
    return [API_DOCNAME] if API_DOCNAME in env.found_docs else []


def setup(app) -> dict:
    app.connect("source-read", _fill_api_page)
    app.connect("env-get-outdated", _always_reread_api_page)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
