"""The built HTML book works offline, checked in a real headless Chromium.

`make test` builds the book first (`test: book` in the Makefile), so these tests always
look at a fresh `_build/html`. They serve it on 127.0.0.1 and open every course page:
math must be typeset by the local MathJax, notebook figures must load, ipywidgets views
must render from the embedded widget state, no JavaScript error may be logged, and the
browser may talk to no host but 127.0.0.1. Screenshots land in `_build/screenshots/`.

Run alone: `make book && .venv/bin/pytest tests/test_book.py -p no:nbval`.
"""

from __future__ import annotations

import functools
import http.server
import os
import re
import shutil
import socketserver
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import nbformat
import pytest
from playwright.sync_api import TimeoutError as PlaywrightTimeout
from playwright.sync_api import sync_playwright

ROOT = Path(__file__).resolve().parents[1]
# Another build folder can be checked with QLORA_LAB_BOOK_HTML=path/to/_build/html.
HTML_DIR = Path(os.environ.get("QLORA_LAB_BOOK_HTML", ROOT / "_build" / "html")).resolve()
SCREENSHOT_DIR = HTML_DIR.parent / "screenshots"
# Debian's package (`make browser` installs it); elsewhere: make CHROMIUM=/path/to/chrome test
CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PAGE_TIMEOUT_MS = 30_000
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
WIDGET_VIEW_JSON = "application/vnd.jupyter.widget-view+json"
# html-manager inserts a .widget-subarea before each view script, then renders into it.
WIDGET_VIEW = ".widget-subarea > .jupyter-widgets"
MATHJAX_STARTED = "() => window.MathJax && MathJax.startup && MathJax.startup.promise"
WAIT_TIMEOUT_MS = 10_000
SEARCH_HIT = "#search-results ul.search li"

# Any of these in a built page means a reader offline gets a broken page.
CDN_URL = re.compile(
    r"(?:https?:)?//(?:[a-z0-9-]+\.)*(?:"
    r"jsdelivr\.net|unpkg\.com|cdnjs\.cloudflare\.com|googleapis\.com|gstatic\.com"
    r"|bootstrapcdn\.com|code\.jquery\.com|mathjax\.org|polyfill\.io|cloudflare\.com"
    r"|fontawesome\.com/releases|kit\.fontawesome\.com|cdn\.[a-z0-9.-]+|[a-z0-9-]+cdn[a-z0-9-]*\.[a-z]+"
    r")",
    re.IGNORECASE,
)

# Text in the page (outside code) that still looks like TeX delimiters: math MathJax
# did not typeset.
RAW_TEX_JS = r"""() => {
  const skip = new Set(['PRE', 'CODE', 'SCRIPT', 'STYLE', 'TEXTAREA', 'MJX-CONTAINER']);
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT, {
    acceptNode(node) {
      for (let el = node.parentElement; el; el = el.parentElement) {
        if (skip.has(el.tagName)) return NodeFilter.FILTER_REJECT;
      }
      return NodeFilter.FILTER_ACCEPT;
    },
  });
  const raw = [];
  while (walker.nextNode()) {
    const text = walker.currentNode.textContent;
    if (/\\\(|\\\[|\$\$|\\begin\{/.test(text)) raw.push(text.trim().slice(0, 80));
  }
  return raw;
}"""

IMAGES_JS = """() => Array.from(document.images).map(img => ({
  src: img.getAttribute('src'), width: img.naturalWidth, height: img.naturalHeight,
  output: !!img.closest('.cell_output'),
}))"""


def _fail_missing(what: str, fix: str) -> None:
    pytest.fail(f"{what} is missing: run `{fix}` first", pytrace=False)


def course_pages() -> list[Path]:
    """Every page a student reads: home, book pages, notebook chapters, search."""
    if not (HTML_DIR / "book" / "index.html").is_file():
        return []
    pages = sorted((HTML_DIR / "book").glob("*.html"))
    pages += sorted((HTML_DIR / "notebooks").glob("*.html"))
    return pages + [HTML_DIR / "search.html"]


def built_html_files() -> list[Path]:
    return sorted(HTML_DIR.rglob("*.html"))


def _relative(page: Path) -> str:
    return page.relative_to(HTML_DIR).as_posix()


# --------------------------------------------------------------------------- grep test


def test_no_built_html_references_a_cdn():
    if not (HTML_DIR / "index.html").is_file():
        _fail_missing(f"the built book ({HTML_DIR})", "make book")
    files = built_html_files()
    offenders = {
        _relative(path): sorted(set(m.group(0) for m in CDN_URL.finditer(path.read_text("utf8"))))
        for path in files
    }
    offenders = {name: urls for name, urls in offenders.items() if urls}
    assert len(files) > 5, f"only {len(files)} HTML files built"
    assert not offenders, f"CDN URLs in built pages (they break offline): {offenders}"


@pytest.mark.parametrize(
    ("url", "is_cdn"),
    [
        ("https://cdn.jsdelivr.net/npm/mathjax@3/es5/tex-chtml.js", True),
        ("https://unpkg.com/thebe@0.8.2/lib/index.js", True),
        ("https://cdnjs.cloudflare.com/ajax/libs/require.js/2.3.4/require.min.js", True),
        ("https://fonts.googleapis.com/css?family=Roboto", True),
        ("//cdn.example.org/lib.js", True),
        ("_static/mathjax/tex-chtml-full.js", False),
        ("https://github.com/qlora-lab/qlora-lab", False),
        ("https://colab.research.google.com/github/qlora-lab/qlora-lab", False),
    ],
)
def test_cdn_pattern(url, is_cdn):
    """The grep above is only as good as its pattern: CDNs match, the book's links do not."""
    assert bool(CDN_URL.search(url)) is is_cdn


def test_every_public_module_is_documented_in_the_api_page():
    api = HTML_DIR / "book" / "api.html"
    if not api.is_file():
        _fail_missing(f"the built API page ({api})", "make book")
    html = api.read_text("utf8")
    modules = sorted(  # every .py below qlora_lab/ but private ones and __main__, subpackages included
        ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        for path in (ROOT / "qlora_lab").rglob("*.py")
        if not any(part.startswith("_") and part != "__init__.py" for part in path.relative_to(ROOT).parts)
    )
    modules.remove("qlora_lab")  # the package itself: the page's introduction describes it
    missing = [m for m in modules if f'id="module-{m}"' not in html]
    assert {"qlora_lab.quant.nf4", "qlora_lab.finetune.loop", "qlora_lab.sizing"} <= set(modules)
    assert not missing, f"modules without an autodoc section in book/api.html: {missing}"


def test_a_cell_error_fails_the_build(tmp_path):
    """With the book's own _config.yml, a notebook cell error stops `jupyter-book build`.

    jupyter-book 1 only warns about a failing notebook unless `execute.raise_on_error`
    is set: a published page would silently show a traceback.
    """
    book = tmp_path / "book-with-error"
    (book / "book").mkdir(parents=True)
    shutil.copy(ROOT / "_config.yml", book / "_config.yml")
    for needed in ("offline", "_ext", "favicon.svg"):  # paths that _config.yml names
        (book / "book" / needed).symlink_to(ROOT / "book" / needed)
    (book / "notebooks").mkdir()
    (book / "_toc.yml").write_text(
        "format: jb-book\nroot: book/index\nchapters:\n  - file: notebooks/00_casse\n"
    )
    (book / "book" / "index.md").write_text("# Accueil\n")
    notebook = nbformat.v4.new_notebook(
        cells=[nbformat.v4.new_markdown_cell("# Cassé"), nbformat.v4.new_code_cell("1 / 0")],
        metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
    )
    nbformat.write(notebook, book / "notebooks" / "00_casse.ipynb")
    result = subprocess.run(
        [str(Path(sys.executable).parent / "jupyter-book"), "build", str(book), "--builder", "html"],
        capture_output=True, text=True, timeout=300, cwd=book,
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0, f"the build succeeded despite a cell error:\n{output[-2000:]}"
    assert "ZeroDivisionError" in output, output[-2000:]


# ------------------------------------------------------------------------ browser test


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args) -> None:  # noqa: A002 (stdlib signature)
        pass


@pytest.fixture(scope="module")
def site() -> Iterator[str]:
    """The built book served on 127.0.0.1 (a free port) from a background thread."""
    if not (HTML_DIR / "index.html").is_file():
        _fail_missing(f"the built book ({HTML_DIR})", "make book")
    handler = functools.partial(_QuietHandler, directory=str(HTML_DIR))
    with socketserver.ThreadingTCPServer(("127.0.0.1", 0), handler) as server:
        server.daemon_threads = True
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        yield f"http://127.0.0.1:{server.server_address[1]}"
        server.shutdown()


@dataclass
class PageReport:
    """What one page did in the browser."""

    hosts: set[str] = field(default_factory=set)
    js_errors: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    math: int = 0
    raw_tex: list[str] = field(default_factory=list)
    images: list[dict] = field(default_factory=list)
    widget_views_expected: int = 0
    widget_views: int = 0
    search_hits: int = 0


@pytest.fixture(scope="module")
def browser_context(tmp_path_factory):
    """Headless Debian Chromium with a fresh profile, driven by Playwright."""
    if not CHROMIUM.is_file():
        _fail_missing(f"Chromium ({CHROMIUM})", "make browser")
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            user_data_dir=tmp_path_factory.mktemp("chromium-profile"),
            executable_path=str(CHROMIUM),
            args=CHROMIUM_FLAGS,
            headless=True,
            viewport={"width": 1280, "height": 900},
            locale="fr-FR",
        )
        yield context
        context.close()


def _visit(context, url: str, screenshot: Path | None = None) -> PageReport:
    """Open `url`, wait for MathJax and widgets, and report what happened."""
    report = PageReport()
    page = context.new_page()
    page.on("request", lambda request: report.hosts.add(urlsplit(request.url).hostname or request.url))
    page.on("console", lambda msg: msg.type == "error" and report.js_errors.append(msg.text))
    page.on("pageerror", lambda exc: report.js_errors.append(str(exc)))
    page.on("requestfailed", lambda request: report.failed.append(f"{request.url} ({request.failure})"))
    page.on("response", lambda resp: resp.status >= 400 and report.failed.append(f"{resp.url} ({resp.status})"))
    page.goto(url, wait_until="load", timeout=PAGE_TIMEOUT_MS)
    has_mathjax = page.evaluate("() => !!document.querySelector('script[src*=\"mathjax\"]')")
    report.widget_views_expected = page.locator(f'script[type="{WIDGET_VIEW_JSON}"]').count()
    try:
        if has_mathjax:
            page.wait_for_function(MATHJAX_STARTED, timeout=WAIT_TIMEOUT_MS)
            page.evaluate("() => MathJax.startup.promise")
        if report.widget_views_expected:
            page.wait_for_selector(WIDGET_VIEW, timeout=WAIT_TIMEOUT_MS)
        if "search.html?q=" in url:
            page.wait_for_selector(SEARCH_HIT, timeout=WAIT_TIMEOUT_MS)
    except PlaywrightTimeout as exc:  # reported by the tests below, page by page
        report.js_errors.append(f"timed out waiting for MathJax or widgets: {exc.message}")
    report.widget_views = page.locator(WIDGET_VIEW).count()
    report.search_hits = page.locator(SEARCH_HIT).count()
    report.math = page.locator("mjx-container").count()
    report.raw_tex = page.evaluate(RAW_TEX_JS)
    report.images = page.evaluate(IMAGES_JS)
    if screenshot is not None:
        # Show what this test is about: the first widget (or figure) of the page.
        for showcase in (WIDGET_VIEW, ".cell_output img"):
            if page.locator(showcase).count():
                page.locator(showcase).first.scroll_into_view_if_needed()
                page.mouse.wheel(0, -200)
                break
        screenshot.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(screenshot), full_page=False)
    page.close()
    return report


@pytest.fixture(scope="module")
def reports(site, browser_context) -> dict[str, PageReport]:
    """Visit every course page once; screenshot the home page and one notebook."""
    pages = course_pages()
    if not pages:
        _fail_missing(f"the built book ({HTML_DIR / 'book'})", "make book")
    notebooks = [p for p in pages if p.parent.name == "notebooks"]
    with_widgets = [p for p in notebooks if WIDGET_STATE in p.read_text("utf8")]
    showcase = (with_widgets or notebooks or pages)[0]
    if SCREENSHOT_DIR.exists():
        shutil.rmtree(SCREENSHOT_DIR)
    result = {}
    for page in pages:
        shot = None
        if page.name == "index.html" and page.parent.name == "book":
            shot = SCREENSHOT_DIR / "accueil.png"
        elif page == showcase:
            shot = SCREENSHOT_DIR / f"{page.stem}.png"
        query = "?q=quantification" if page.name == "search.html" else ""  # run a search
        result[_relative(page)] = _visit(browser_context, f"{site}/{_relative(page)}{query}", shot)
    return result


def test_browser_talks_only_to_localhost(reports):
    foreign = {name: sorted(r.hosts - {"127.0.0.1"}) for name, r in reports.items()}
    foreign = {name: hosts for name, hosts in foreign.items() if hosts}
    assert not foreign, f"pages requested other hosts: {foreign}"


def test_no_javascript_error_and_no_broken_resource(reports):
    errors = {name: r.js_errors + r.failed for name, r in reports.items() if r.js_errors or r.failed}
    assert not errors, f"JavaScript errors or failed requests: {errors}"


def test_math_is_typeset(reports):
    raw = {name: r.raw_tex for name, r in reports.items() if r.raw_tex}
    assert not raw, f"raw TeX left untypeset: {raw}"
    typeset = {name: r.math for name, r in reports.items() if r.math}
    assert typeset, "no page has MathJax output (mjx-container): is MathJax loading?"
    assert "book/index.html" in typeset, "the home page's formula was not typeset"


def test_notebook_figures_are_displayed(reports):
    broken = {
        name: [img["src"] for img in r.images if img["width"] == 0 or img["height"] == 0]
        for name, r in reports.items()
    }
    broken = {name: srcs for name, srcs in broken.items() if srcs}
    figures = {
        name: sum(img["output"] for img in r.images)
        for name, r in reports.items()
        if name.startswith("notebooks/")
    }
    assert not broken, f"images that did not load: {broken}"
    assert any(figures.values()), f"no notebook page shows an output figure: {figures}"


def test_widgets_render_offline(reports):
    with_state = {name: r for name, r in reports.items() if r.widget_views_expected}
    assert with_state, "no notebook page embeds ipywidgets state (notebook 01 has a slider)"
    missing = {
        name: (r.widget_views, r.widget_views_expected)
        for name, r in with_state.items()
        if r.widget_views < r.widget_views_expected
    }
    assert not missing, f"widget views rendered / expected: {missing}"


def test_search_finds_course_pages(reports):
    hits = reports["search.html"].search_hits
    assert hits >= 3, f"searching 'quantification' found {hits} pages"


def test_screenshots_saved(reports):
    shots = sorted(SCREENSHOT_DIR.glob("*.png"))
    assert len(shots) == 2, f"expected the home page and one notebook page, got {shots}"
    assert all(shot.stat().st_size > 10_000 for shot in shots), shots
