"""`make lab` as a student gets it, driven in a real headless Chromium.

The test starts the Makefile's own `make lab` (a free port and a token through
LAB_ARGS, as a student would pass them), opens chapter 01 in JupyterLab, runs every cell
from the French "Exécution" menu, moves the live bits slider and checks that the figure
is redrawn. It also checks what the student must not see: JupyterLab's English menus,
nbgrader's instructor UI, the Jupyter news toast, English progress bars, stderr output.
Playwright drives Debian's Chromium (`make browser`; CHROMIUM=/path/to/chrome elsewhere):
it downloads nothing. A screenshot lands in `_build/jupyterlab/`.

Run alone: `.venv/bin/pytest tests/test_jupyterlab.py -p no:nbval`.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from playwright.sync_api import Page, sync_playwright

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
NOTEBOOK = "01_fondamentaux_quantification.ipynb"
SCREENSHOT = ROOT / "_build" / "jupyterlab" / "01_jupyterlab.png"
# The venv is built by `make venv` before any test: -o keeps `make lab` from reinstalling
# it inside the test's time budget (what runs is still the Makefile's lab recipe).
STAMP = ".venv/.installed"
SERVER_START_S = 60
RUN_ALL_S = 150
REDRAW_MS = 30_000

# The student's UI must show none of these (whole words, case-sensitive): JupyterLab's
# English menus, nbgrader's menus and buttons, the news toast, English progress bars.
ENGLISH_UI = (
    "File", "Edit", "View", "Run", "Kernel", "Tabs", "Settings", "Help",
    "Nbgrader", "Validate", "Create Assignment", "Assignment List", "Course List",
    "Formgrader", "Would you like to receive official Jupyter news?",
    "Loading weights", "it/s", "s/it",
)
ENGLISH_UI_RE = re.compile("|".join(rf"(?<![\w/]){re.escape(w)}(?![\w/])" for w in ENGLISH_UI))
# The news toast asks in the UI's language: in French too.
NEWS_TOAST_RE = re.compile(r"nouvelles officielles de Jupyter|official Jupyter news")

# Test-only user settings (a temporary JUPYTERLAB_SETTINGS_DIR, never the repo's):
# no autosave, so the run never writes outputs into the committed notebook, and no
# windowing, so every cell is in the DOM.
TEST_USER_SETTINGS = {
    "@jupyterlab/docmanager-extension/plugin.jupyterlab-settings": {"autosave": False},
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
}

# Visible text outside code editors (what a reader sees, not the code they run).
VISIBLE_TEXT_JS = r"""() => {
  const out = [];
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  while (walker.nextNode()) {
    const node = walker.currentNode, el = node.parentElement;
    const text = node.textContent.trim();
    if (!text || !el || el.closest('.cm-editor, script, style')) continue;
    const box = el.getBoundingClientRect();
    if (box.width <= 1 || box.height <= 1 || !el.checkVisibility({visibilityProperty: true})) continue;
    out.push(text);
  }
  return out;
}"""

# The notebook as JupyterLab's model holds it (outputs included), found by its path.
NOTEBOOK_JSON_JS = """(name) => {
  for (const w of window.jupyterapp.shell.widgets('main')) {
    if (w.context && w.context.path.endsWith(name)) {
      const kernel = w.sessionContext.session && w.sessionContext.session.kernel;
      return {nb: w.context.model.toJSON(), kernel: kernel ? kernel.status : null};
    }
  }
  return null;
}"""

# Bits slider of the quantization explorer: the interact widget with a slider and a figure.
EXPLORER = ".widget-interact:has(.widget-slider):has(.widget-output img)"


@dataclass
class LabServer:
    """A running `make lab`: its base URL, token and log."""

    url: str
    token: str
    log: Path

    def get(self, path: str) -> bytes:
        sep = "&" if "?" in path else "?"
        with urllib.request.urlopen(f"{self.url}{path}{sep}token={self.token}", timeout=10) as resp:
            return resp.read()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_user_settings(folder: Path) -> None:
    for name, value in TEST_USER_SETTINGS.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(value), encoding="utf-8")


def wait_until_up(server: LabServer, proc: subprocess.Popen) -> None:
    """Poll the server's status API until it answers, or fail with its log."""
    deadline = time.monotonic() + SERVER_START_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"`make lab` exited with {proc.returncode}:\n{server.log.read_text()[-3000:]}")
        try:
            server.get("/api/status")
            return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.5)
    pytest.fail(f"`make lab` did not answer in {SERVER_START_S} s:\n{server.log.read_text()[-3000:]}")


def start_make(target: str, tmp: Path, lab_args: str) -> tuple[subprocess.Popen, Path]:
    """`make <target> LAB_ARGS=...` in its own process group, with test-only user settings."""
    write_user_settings(tmp / "user-settings")
    env = dict(os.environ, JUPYTERLAB_SETTINGS_DIR=str(tmp / "user-settings"),
               JUPYTERLAB_WORKSPACES_DIR=str(tmp / "workspaces"))
    log = tmp / f"{target}.log"
    with log.open("w") as out:
        proc = subprocess.Popen(["make", "-s", "-o", STAMP, target, f"LAB_ARGS={lab_args}"],
                                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    return proc, log


def stop(proc: subprocess.Popen) -> None:
    """Stop make, jupyter and its kernels: the whole process group this test started."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture(scope="module")
def lab(tmp_path_factory) -> Iterator[LabServer]:
    """The student's `make lab`, headless, on a free port with a fresh token."""
    tmp = tmp_path_factory.mktemp("make-lab")
    port, token = free_port(), secrets.token_hex(16)
    # expose_app_in_browser: window.jupyterapp, to read the notebook model once it ran.
    args = f"--port {port} --no-browser --IdentityProvider.token={token} --LabApp.expose_app_in_browser=True"
    proc, log = start_make("lab", tmp, args)
    server = LabServer(f"http://127.0.0.1:{port}", token, log)
    try:
        wait_until_up(server, proc)
        yield server
    finally:
        stop(proc)


def page_config(server: LabServer) -> dict:
    html = server.get("/lab").decode("utf8")
    match = re.search(r'<script id="jupyter-config-data" type="application/json">(.*?)</script>', html, re.S)
    assert match, "no page config in /lab"
    return json.loads(match.group(1))


def setting_defaults(server: LabServer, plugin: str) -> dict:
    """Defaults of a plugin's settings after overrides.json (schema defaults)."""
    data = json.loads(server.get(f"/lab/api/settings/{plugin}"))
    return {key: prop.get("default") for key, prop in data["schema"]["properties"].items()}


# --------------------------------------------------------------- configuration checks


def test_make_lab_is_french_without_news_and_without_nbgrader(lab):
    assert "@jupyter/nbgrader" in page_config(lab)["disabledExtensions"]
    assert setting_defaults(lab, "@jupyterlab/translation-extension:plugin")["locale"] == "fr_FR"
    notification = setting_defaults(lab, "@jupyterlab/apputils-extension:notification")
    assert (notification["fetchNews"], notification["checkForUpdates"]) == ("false", False)
    french = json.loads(lab.get("/lab/api/translations/fr_FR"))["data"]["jupyterlab"]
    assert french["menu\x04File"] == ["Fichier"], "the French language pack is not installed"
    with pytest.raises(urllib.error.HTTPError, match="404"):  # nbgrader's server side is off too
        lab.get("/formgrader")


def make_dry_run(target: str, uid: str, tmp: Path, lab_args: str = "") -> str:
    """The commands `make -n <target>` would run, with `id -u` answering `uid`."""
    fake_bin = tmp / f"uid{uid}"
    fake_bin.mkdir(exist_ok=True)
    (fake_bin / "id").write_text(f"#!/bin/sh\necho {uid}\n")
    (fake_bin / "id").chmod(0o755)
    env = dict(os.environ, PATH=f"{fake_bin}:{os.environ['PATH']}")
    result = subprocess.run(["make", "-n", "-s", "-o", STAMP, target, f"LAB_ARGS={lab_args}"],
                            cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    return result.stdout


@pytest.mark.parametrize(("uid", "allow_root"), [("0", True), ("1000", False)])
def test_allow_root_only_as_root_and_lab_args_passed_through(tmp_path, uid, allow_root):
    command = make_dry_run("lab", uid, tmp_path, "--port 8890 --no-browser")
    assert ("--allow-root" in command) is allow_root, command
    assert "--port 8890 --no-browser" in command
    assert f"JUPYTER_CONFIG_DIR={ROOT}/jupyter_config/student" in command
    formgrader = make_dry_run("formgrader", uid, tmp_path)
    assert ("--allow-root" in formgrader) is allow_root, formgrader
    assert f"JUPYTER_CONFIG_DIR={ROOT}/jupyter_config/instructor" in formgrader


@pytest.mark.slow
def test_make_formgrader_gives_the_instructor_nbgrader(tmp_path):
    port, token = free_port(), secrets.token_hex(16)
    proc, log = start_make("formgrader", tmp_path, f"--port {port} --no-browser --IdentityProvider.token={token}")
    server = LabServer(f"http://127.0.0.1:{port}", token, log)
    try:
        wait_until_up(server, proc)
        assert "@jupyter/nbgrader" not in page_config(server)["disabledExtensions"]
        assert b"formgrader" in server.get("/formgrader").lower()
        assert setting_defaults(server, "@jupyterlab/translation-extension:plugin")["locale"] == "fr_FR"
    finally:
        stop(proc)


# ------------------------------------------------------------------------ browser test


def run_all_cells(page: Page) -> dict:
    """Click "Exécution > Exécuter toutes les cellules"; return the notebook once it ran."""
    # Before its kernel is up, JupyterLab's "run all" does nothing: wait for it first.
    page.wait_for_function(f"() => {{ const s = ({NOTEBOOK_JSON_JS})({NOTEBOOK!r}); "
                           "return s && s.kernel === 'idle'; }", timeout=SERVER_START_S * 1000)
    page.locator("#jp-MainMenu .lm-MenuBar-itemLabel", has_text="Exécution").click()
    page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Exécuter toutes les cellules$")).click()
    deadline = time.monotonic() + RUN_ALL_S
    while time.monotonic() < deadline:
        state = page.evaluate(NOTEBOOK_JSON_JS, NOTEBOOK)
        code = [c for c in state["nb"]["cells"] if c["cell_type"] == "code"]
        errors = [o for c in code for o in c["outputs"] if o["output_type"] == "error"]
        if errors or (all(c["execution_count"] for c in code) and state["kernel"] == "idle"):
            return state["nb"]
        page.wait_for_timeout(1000)
    pytest.fail(f"chapter 01 did not finish in {RUN_ALL_S} s in JupyterLab")


def stderr_outputs(nb: dict) -> list[str]:
    """Every stderr stream and error, as 'cell N: first line'."""
    found = []
    for i, cell in enumerate(nb["cells"]):
        for out in cell.get("outputs", []):
            if out["output_type"] == "error":
                found.append(f"cell {i}: {out['ename']}: {out['evalue']}")
            elif out["output_type"] == "stream" and out["name"] == "stderr":
                text = "".join(out["text"]) if isinstance(out["text"], list) else out["text"]
                found.append(f"cell {i}: {text.strip()[:200]}")
    return found


def move_slider_and_wait_redraw(page: Page) -> tuple[str, str]:
    """Press → on the first slider of the explorer; return its readout before and after.

    Fails unless the figure below the sliders changes (a new PNG from the kernel).
    """
    explorer = page.locator(EXPLORER).first
    explorer.scroll_into_view_if_needed()
    figure = explorer.locator(".widget-output img").first
    before_png = figure.get_attribute("src")
    slider = explorer.locator(".widget-slider").first
    readout = slider.locator(".widget-readout")
    before = readout.inner_text()
    slider.locator(".noUi-handle").first.focus()
    page.keyboard.press("ArrowRight")
    page.wait_for_function(
        """([sel, old]) => { const img = document.querySelector(sel + ' .widget-output img');
                             return img && img.getAttribute('src') !== old; }""",
        arg=[EXPLORER, before_png], timeout=REDRAW_MS)
    return before, readout.inner_text()


@pytest.mark.slow
def test_chapter_01_runs_in_french_jupyterlab_and_its_sliders_are_live(lab):
    if not CHROMIUM.is_file():
        pytest.fail(f"Chromium is missing ({CHROMIUM}): run `make browser` first", pytrace=False)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS, headless=True)
        page = browser.new_page(viewport={"width": 1280, "height": 900}, locale="fr-FR")
        try:
            page.goto(f"{lab.url}/lab/tree/{NOTEBOOK}?token={lab.token}", wait_until="load")
            page.wait_for_selector(".jp-Notebook .jp-CodeCell", timeout=60_000)
            menus = page.locator("#jp-MainMenu .lm-MenuBar-itemLabel").all_inner_texts()
            nb = run_all_cells(page)
            before, after = move_slider_and_wait_redraw(page)
            SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(SCREENSHOT))
            visible = page.evaluate(VISIBLE_TEXT_JS)
        finally:
            browser.close()
    assert menus[:5] == ["Fichier", "Édition", "Affichage", "Exécution", "Noyau"], menus
    assert not stderr_outputs(nb), f"stderr or errors in chapter 01: {stderr_outputs(nb)}"
    assert after != before, f"the slider readout did not move: {before!r}"
    english = sorted({m.group(0) for text in visible for m in ENGLISH_UI_RE.finditer(text)})
    assert not english, f"English UI strings visible in JupyterLab: {english}"
    assert not [t for t in visible if NEWS_TOAST_RE.search(t)], "the Jupyter news toast is shown"


@pytest.mark.parametrize(("text", "leaks"), [
    ("Loading weights: 100%", True), ("12.3 it/s", True), ("File", True), ("Validate", True),
    ("Fichier", False), ("Runtime", False), ("Exécuter toutes les cellules", False),
])
def test_english_ui_pattern(text, leaks):
    """The pattern above is only as good as its words: whole words match, French does not."""
    assert bool(ENGLISH_UI_RE.search(text)) is leaks


def test_news_toast_pattern():
    """The toast's question as JupyterLab asks it, in French and in English."""
    assert NEWS_TOAST_RE.search("Souhaitez-vous être informé des nouvelles officielles de Jupyter ?")
    assert NEWS_TOAST_RE.search("Would you like to receive official Jupyter news?")
