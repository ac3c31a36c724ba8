"""Project-level consistency: the pins users install from agree everywhere."""

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PIN = re.compile(r"^\s*(?:-\s+)?([A-Za-z0-9_.\-]+)==([^\s#]+)")


def _pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        if m := PIN.match(line):
            pins[m.group(1).lower().replace("_", "-")] = m.group(2)
    return pins


def test_environment_yml_pins_equal_requirements():
    req = _pins(ROOT / "requirements.txt")
    env = _pins(ROOT / "environment.yml")
    assert req, "requirements.txt has no pins"
    assert env == req


def test_constraints_agree_with_requirements():
    req = _pins(ROOT / "requirements.txt")
    con = _pins(ROOT / "constraints.txt")
    mismatched = {k: (v, con.get(k)) for k, v in req.items() if con.get(k) != v}
    assert not mismatched, f"requirements.txt and constraints.txt disagree: {mismatched}"


def test_dev_requirements_are_pinned_in_constraints():
    dev = _pins(ROOT / "requirements-dev.txt")
    con = _pins(ROOT / "constraints.txt")
    assert "mutmut" in dev
    mismatched = {k: (v, con.get(k)) for k, v in dev.items() if con.get(k) != v}
    assert not mismatched, f"requirements-dev.txt and constraints.txt disagree: {mismatched}"


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in readme
    assert re.search(r"^make test$", ci, re.M), ".ci/run must run exactly `make test`"


def test_console_script_declared():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["scripts"]["qlora-lab"] == "qlora_lab.cli:main"
