"""What a student reads in the built book: French outputs, one unit convention, real asserts.

`make test` builds the book before running tests/, so these checks scan a fresh
`_build/html` (they fail, not skip, when it is missing). Every course page is read as
text, in two parts: cell outputs (what the code printed or displayed) and prose (the
rest, code excluded). They look for:

- English progress bars and labels in outputs ("Loading weights", "s/step", "it/s",
  `process_peak_rss`), and method identifiers shown as labels (`full`, `lora`, `qlora`);
- raw dict reprs in outputs (`{'...`): results belong in a table;
- English thousands separators (297,984 or 1,234,567) outside code;
- SI byte units (Mo, Ko, MB...) on a page that also uses IEC units (Mio, Kio...);
  a quotation in « » keeps its source's words and is not judged;
- asserts in the notebooks' code that compare only literals (they cannot fail).

The API page (English docstrings) is left out. Figures are PNG: their axis labels are
not text and are not scanned here.
Run alone: `make book && .venv/bin/pytest tests/test_book_pages.py -p no:nbval`.
"""

from __future__ import annotations

import ast
import json
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest
from bs4 import BeautifulSoup

ROOT = Path(__file__).resolve().parents[1]
HTML_DIR = Path(os.environ.get("QLORA_LAB_BOOK_HTML", ROOT / "_build" / "html")).resolve()
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
PAGE_FOLDERS = ("book", "notebooks")  # the course; _modules/ (package source) is code
# The API reference is the package's docstrings: English by the project's rules.
ENGLISH_PAGES = frozenset({"book/api.html"})
QUOTATION = re.compile(r"«[^»]*»")  # a source's own words (« 8GB+ VRAM »), kept as written

ENGLISH_OUTPUT = re.compile(
    r"Loading weights|Loading checkpoint|Generating \w+ split|Map:|s/step|\bit/s\b|\bs/it\b"
    r"|\bprocess_peak_rss\b|\bpeak_rss\b|\bfine-tune\b|\bsteps?/s\b"
)
RAW_DICT = re.compile(r"\{\s*['\"][^'\"]+['\"]\s*:")
METHOD_LABELS = frozenset({"full", "lora", "qlora"})
LABEL_SPLIT = re.compile(r"\s{2,}|\s*[|:=]\s*|\t")
# 1,234,567 / 297,984 / 1,234.5 — never French (French: 297 984 and 1,5). A lone
# d,ddd (4,127) is a French decimal and is left alone.
ENGLISH_THOUSANDS = re.compile(
    r"(?<![\d.,])(?:\d{1,3}(?:,\d{3}){2,}|[1-9]\d{1,2},\d{3}|\d{1,3}(?:,\d{3})+\.\d+)(?![\d,])"
)
IEC_UNIT = re.compile(r"\d\s?(?:Kio|Mio|Gio|Tio)\b")
INLINE_TAGS = ["span", "strong", "em", "b", "i", "a", "sub", "sup", "abbr", "small", "mark", "u", "s"]
SI_BYTE_UNIT = re.compile(r"\d[\d\u202f\u00a0 ,.]*\s?(?:ko|Ko|Mo|Go|To|kB|KB|MB|GB|TB)\b")


@dataclass(frozen=True)
class Leak:
    """One thing a student should not read, with where it is."""

    page: str
    kind: str
    snippet: str

    def __str__(self) -> str:
        return f"{self.page}: {self.kind}: {self.snippet!r}"


@dataclass(frozen=True)
class PageText:
    """A built page split into what the code showed and what the authors wrote."""

    name: str
    outputs: tuple[str, ...]
    prose: str


# ------------------------------------------------------------------------ reading pages


def course_pages(html_dir: Path = HTML_DIR) -> list[Path]:
    """The French pages of the built book (fails when there is no book)."""
    if not (html_dir / "index.html").is_file():
        pytest.fail(f"the built book ({html_dir}) is missing: run `make book` first", pytrace=False)
    pages = sorted(p for folder in PAGE_FOLDERS for p in (html_dir / folder).glob("*.html"))
    return [p for p in pages if p.relative_to(html_dir).as_posix() not in ENGLISH_PAGES]


def split_page(name: str, html: str) -> PageText:
    """Outputs (one string per output cell) and prose (everything else but code)."""
    soup = BeautifulSoup(html, "html.parser")
    article = soup.select_one("article") or soup.body or soup
    for tag in article.select("script, style, .headerlink"):
        tag.decompose()
    outputs = []
    for out in article.select(".cell_output"):
        outputs.append(output_text(out))
        out.decompose()
    for tag in article.select(".cell_input, div.highlight, pre, code, .math, mjx-container"):
        tag.decompose()
    return PageText(name, tuple(outputs), article.get_text(" "))


def output_text(out) -> str:
    """An output's text, one line per block (table cell, paragraph, line of a <pre>).

    Inline tags (ANSI colour spans, bold...) are merged into their text first, so that
    "Loading weights" split over two spans still reads as one line; inline code is an
    identifier, not a label, and is left out.
    """
    for tag in out.select(".math, mjx-container"):
        tag.decompose()
    for code in out.select("code"):
        if code.find_parent("pre") is None:
            code.decompose()
    for tag in out.find_all(INLINE_TAGS):
        tag.unwrap()
    out.smooth()
    return out.get_text("\n")


@cache
def read_pages() -> tuple[PageText, ...]:
    return tuple(split_page(p.relative_to(HTML_DIR).as_posix(), p.read_text("utf8"))
                 for p in course_pages())


def around(text: str, match: re.Match, width: int = 40) -> str:
    start, end = max(match.start() - width, 0), min(match.end() + width, len(text))
    return " ".join(text[start:end].split())


# ------------------------------------------------------------------------------ checks


def english_in_outputs(page: PageText) -> Iterator[Leak]:
    for text in page.outputs:
        for m in ENGLISH_OUTPUT.finditer(text):
            yield Leak(page.name, "English in an output", around(text, m))


def method_labels_in_outputs(page: PageText) -> Iterator[Leak]:
    """`full` / `lora` / `qlora` standing alone as a label (a table cell, a column)."""
    for text in page.outputs:
        for line in text.splitlines():
            tokens = {t.strip() for t in LABEL_SPLIT.split(line)}
            for label in sorted(tokens & METHOD_LABELS):
                yield Leak(page.name, f"method identifier {label!r} as a label", line.strip()[:100])


def raw_dicts_in_outputs(page: PageText) -> Iterator[Leak]:
    for text in page.outputs:
        for m in RAW_DICT.finditer(text):
            yield Leak(page.name, "raw dict repr in an output", around(text, m))


def unquoted(text: str) -> str:
    return QUOTATION.sub("«»", text)


def english_thousands(page: PageText) -> Iterator[Leak]:
    for where, text in [("output", unquoted(t)) for t in page.outputs] + [("prose", unquoted(page.prose))]:
        for m in ENGLISH_THOUSANDS.finditer(text):
            yield Leak(page.name, f"English thousands separator ({where})", around(text, m))


def mixed_byte_units(page: PageText) -> Iterator[Leak]:
    """SI byte units on a page that also writes IEC ones (the course uses IEC)."""
    texts = [("output", unquoted(t)) for t in page.outputs] + [("prose", unquoted(page.prose))]
    if not any(IEC_UNIT.search(t) for _, t in texts):
        return
    for where, text in texts:
        for m in SI_BYTE_UNIT.finditer(text):
            yield Leak(page.name, f"SI byte unit beside IEC units ({where})", around(text, m))


PAGE_CHECKS = {
    "english_outputs": english_in_outputs,
    "method_labels": method_labels_in_outputs,
    "raw_dicts": raw_dicts_in_outputs,
    "english_thousands": english_thousands,
    "mixed_units": mixed_byte_units,
}


def scan(pages: Iterable[PageText], check) -> list[Leak]:
    return [leak for page in pages for leak in check(page)]


# ------------------------------------------------------------- asserts on literals only


def code_cells(path: Path) -> Iterator[tuple[int, str]]:
    """(index, source) of each code cell, IPython magics and shell lines blanked."""
    for i, cell in enumerate(json.loads(path.read_text("utf8"))["cells"]):
        if cell["cell_type"] == "code":
            text = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
            yield i, "\n".join("" if line.lstrip().startswith(("%", "!")) else line
                               for line in text.splitlines())


def is_literal(node: ast.AST) -> bool:
    try:
        ast.literal_eval(node)
        return True
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return False


def literal_names(trees: Iterable[ast.AST]) -> set[str]:
    """Names only ever bound to literals, and ALL_CAPS names imported (stored constants)."""
    literal, other = set(), set()
    for tree in trees:
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign | ast.AnnAssign | ast.AugAssign):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for target in targets:
                    fixed = (isinstance(target, ast.Name) and not isinstance(node, ast.AugAssign)
                             and node.value is not None and is_literal(node.value))
                    for name in ast.walk(target):
                        if isinstance(name, ast.Name):
                            (literal if fixed else other).add(name.id)
            elif isinstance(node, ast.For | ast.comprehension | ast.NamedExpr):
                other.update(n.id for n in ast.walk(node.target) if isinstance(n, ast.Name))
            elif isinstance(node, ast.withitem) and node.optional_vars is not None:
                other.update(n.id for n in ast.walk(node.optional_vars) if isinstance(n, ast.Name))
            elif isinstance(node, ast.ImportFrom):
                literal.update(a.asname or a.name for a in node.names if (a.asname or a.name).isupper())
    return literal - other


def is_static(node: ast.AST, constants: set[str]) -> bool:
    """A value fixed before anything runs: a literal, a literal name, a module CONSTANT."""
    if is_literal(node):
        return True
    if isinstance(node, ast.Name):
        return node.id in constants
    if isinstance(node, ast.Attribute):
        return node.attr.isupper()
    if isinstance(node, ast.UnaryOp):
        return is_static(node.operand, constants)
    if isinstance(node, ast.BinOp):
        return is_static(node.left, constants) and is_static(node.right, constants)
    return False


def literal_only_asserts(name: str, sources: list[tuple[int, str]]) -> Iterator[Leak]:
    trees = []
    for _, source in sources:
        try:
            trees.append(ast.parse(source))
        except SyntaxError:
            trees.append(ast.Module(body=[], type_ignores=[]))
    constants = literal_names(trees)
    for (index, _), tree in zip(sources, trees, strict=True):
        for node in ast.walk(tree):
            if not isinstance(node, ast.Assert):
                continue
            compares = [n for n in ast.walk(node.test) if isinstance(n, ast.Compare)]
            operands = [op for c in compares for op in (c.left, *c.comparators)]
            if is_static(node.test, constants) or (
                compares and all(is_static(op, constants) for op in operands)
            ):
                yield Leak(name, f"cell {index}: assert on literals only", ast.unparse(node)[:120])


# ------------------------------------------------------------------------------- tests


def report(leaks: list[Leak]) -> str:
    return f"{len(leaks)} found:\n" + "\n".join(f"  {leak}" for leak in leaks)


@pytest.mark.parametrize("check", sorted(PAGE_CHECKS))
def test_built_pages_have_no_leak(check):
    pages = read_pages()
    assert any(page.outputs for page in pages), "no page has a cell output: is the book executed?"
    leaks = scan(pages, PAGE_CHECKS[check])
    assert not leaks, report(leaks)


def test_notebook_asserts_check_computed_values():
    assert NOTEBOOKS, "no notebook found"
    leaks = [leak for path in NOTEBOOKS for leak in literal_only_asserts(path.name, list(code_cells(path)))]
    assert not leaks, report(leaks)


# ------------------------------------------------------ the checks on known examples

def page_of(outputs: tuple[str, ...] = (), prose: str = "") -> PageText:
    return PageText("exemple.html", outputs, prose)


@pytest.mark.parametrize(("check", "page", "found"), [
    (english_in_outputs, page_of(("Loading weights: 100%|██| 3/3",)), 1),
    (english_in_outputs, page_of(("qlora fine-tune 1.2 s/step",)), 2),
    (english_in_outputs, page_of(("12 it/s",)), 1),
    (english_in_outputs, page_of(("Chargement des poids : 100 %",), "it/s en prose"), 0),
    (method_labels_in_outputs, page_of(("méthode\nqlora\n",)), 1),
    (method_labels_in_outputs, page_of(("full     1,2 Gio\nlora     0,4 Gio",)), 2),
    (method_labels_in_outputs, page_of(("QLoRA complet : 1,2 Gio", "la qlora tourne")), 0),
    (raw_dicts_in_outputs, page_of(("{'fp16': 0.0, 'bf16': 1e-08}",)), 1),
    (raw_dicts_in_outputs, page_of(("{1, 2}", "ensemble {}"), "{'a': 1} en prose"), 0),
    (english_thousands, page_of(("297,984 paramètres",), "1,234,567 octets"), 2),
    (english_thousands, page_of(("12,345.6",)), 1),
    (english_thousands, page_of(("4,127 bits ; 0,125 ; 1,5 ; 297 984 ; (64, 256)",)), 0),
    (mixed_byte_units, page_of(("3,2 Mio", "512 Ko")), 1),
    (mixed_byte_units, page_of(("3,2 Mio",), "un GPU de 24 GB"), 1),
    (mixed_byte_units, page_of(("512 Ko",), "Mo"), 0),
    (mixed_byte_units, page_of(("3,2 Mio",), "le guide demande « 8GB+ VRAM »"), 0),
])
def test_checks_on_examples(check, page, found):
    """Each check finds what it should and nothing else."""
    assert len(list(check(page))) == found


@pytest.mark.parametrize(("source", "found"), [
    ("assert 1 + 1 == 2", 1),
    ("x = 165.2\nassert x == 165.2", 1),
    ("from qlora_lab.quant.gguf import Q4_0_BITS_PER_WEIGHT\nassert Q4_0_BITS_PER_WEIGHT == 4.5", 1),
    ("assert specs.DENSE == 165.2", 1),
    ("assert True", 1),
    ("x = 4.5\nx = measure()\nassert x == 4.5", 0),
    ("assert torch.finfo(torch.float16).max == 65504.0", 0),
    ("for x in range(3):\n    assert x == 1", 0),
    ("assert errors['block'] < errors['tensor']", 0),
])
def test_literal_only_asserts_on_examples(source, found):
    assert len(list(literal_only_asserts("exemple.ipynb", [(0, source)]))) == found
