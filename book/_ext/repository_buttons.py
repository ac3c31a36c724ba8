"""Sphinx extension: the course's repository address is one setting, `repository.url`.

With an address in _config.yml, every page gets the repository and issues buttons and
each notebook page the launch buttons of `launch_buttons` (Binder, Colab). Without one
(`url: ""`, the default until the course has a public home), they are all left out
rather than pointing to a repository that does not exist. `tools/add_colab_cell.py`
reads the same setting for the notebooks' "Sur Colab" cell.
"""

from __future__ import annotations

from typing import Any

REPOSITORY_BUTTONS = ("use_repository_button", "use_issues_button")


def repository_buttons(theme_options: dict[str, Any]) -> dict[str, Any]:
    """The theme options with the repository and launch buttons on only if an address is set."""
    options = dict(theme_options)
    has_repository = bool(str(options.get("repository_url") or "").strip())
    for button in REPOSITORY_BUTTONS:
        options[button] = has_repository
    if not has_repository:
        # sphinx-book-theme would build launch links from a missing address (and fail).
        options["launch_buttons"] = {}
    return options


def _apply(app, config) -> None:
    config.html_theme_options = repository_buttons(config.html_theme_options)


def setup(app) -> dict[str, Any]:
    app.connect("config-inited", _apply)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
