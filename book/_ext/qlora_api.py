"""Sphinx extension: fill book/api.md with one autodoc section per public module.

Several authors add modules to `qlora_lab/` at once; generating the `automodule`
blocks at build time keeps the API reference complete without anyone editing the
page. A module is public when its file name does not start with an underscore.
`tests/test_book.py` checks that the built page has a section for each of them.
"""

from __future__ import annotations

from pathlib import Path

API_DOCNAME = "book/api"
MARKER = "<!-- qlora-api-modules -->"
PACKAGE = "qlora_lab"


def public_modules(package_dir: Path) -> list[str]:
    """Dotted names of the package's public modules, sorted."""
    return sorted(
        f"{PACKAGE}.{path.stem}"
        for path in package_dir.glob("*.py")
        if not path.stem.startswith("_")
    )


def module_sections(modules: list[str]) -> str:
    """MyST source: a heading and an `automodule` per module.

    autodoc emits reStructuredText, so the directive must run inside `eval-rst`
    (under MyST it would be parsed as Markdown and print raw `.. py:module::`).
    """
    blocks = [
        f"## `{name}`\n\n```{{eval-rst}}\n.. automodule:: {name}\n```\n" for name in modules
    ]
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
