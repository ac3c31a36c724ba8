"""The package's shape is a test: layers, no import cycle, small modules and functions.

`import-linter` checks the layer contract of `.importlinter` (course and grading on top,
then cli, sizing, finetune, model, quant, hardware, and backends/paths at the bottom).
grimp, which import-linter is built on, reads every import statement, function-level
ones included, so a late `import` inside a function cannot hide a cycle.
"""

import ast
import importlib
import json
import re
import subprocess
import sys
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "qlora_lab"
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60  # body without its docstring
# Text templates: data, not logic (the French model card of the shipped model).
TEMPLATES = {("qlora_lab/model/model_card.py", "model_card")}


def test_the_layer_contracts_hold():
    lint = Path(sys.executable).parent / "lint-imports"
    proc = subprocess.run([str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "3 kept, 0 broken" in proc.stdout


def _cycle(graph: grimp.ImportGraph) -> list[str] | None:
    """One import cycle between modules, or None (depth-first search, three colours)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = 1
        stack.append(module)
        for imported in sorted(graph.find_modules_directly_imported_by(module)):
            if state.get(imported) == 1:
                return stack[stack.index(imported):] + [imported]
            if imported not in state and (found := visit(imported)):
                return found
        stack.pop()
        state[module] = 2
        return None

    for module in sorted(graph.modules):
        if module not in state and (found := visit(module)):
            return found
    return None


def test_no_import_cycle_between_any_two_modules():
    graph = grimp.build_graph("qlora_lab", cache_dir=None)
    assert len(graph.modules) > 50
    assert graph.direct_import_exists(importer="qlora_lab.cli.finetune", imported="qlora_lab.finetune.loop")
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))


def test_the_cycle_finder_finds_a_cycle():
    graph = grimp.ImportGraph()
    for module in ("p", "p.a", "p.b", "p.c"):
        graph.add_module(module)
    graph.add_import(importer="p.a", imported="p.b")
    graph.add_import(importer="p.b", imported="p.c")
    assert _cycle(graph) is None
    graph.add_import(importer="p.c", imported="p.a")
    assert _cycle(graph) == ["p.a", "p.b", "p.c", "p.a"]


def _body_lines(function: ast.FunctionDef) -> int:
    body = function.body
    if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant):
        body = body[1:]  # the docstring
    return body[-1].end_lineno - body[0].lineno + 1 if body else 0


def test_modules_and_functions_stay_small():
    too_long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        where = str(path.relative_to(ROOT))
        source = path.read_text()
        if len(source.splitlines()) > MAX_MODULE_LINES:
            too_long.append(f"{where}: {len(source.splitlines())} lines")
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and (where, node.name) not in TEMPLATES:
                if (n := _body_lines(node)) > MAX_FUNCTION_LINES:
                    too_long.append(f"{where}: {node.name}() has {n} lines")
    assert not too_long, too_long


def test_finetune_reads_as_its_phases():
    tree = ast.parse((PACKAGE / "finetune" / "loop.py").read_text())
    finetune = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "finetune")
    calls = [n.func.id for n in ast.walk(finetune) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)]
    assert calls == ["prepare", "resume", "train", "finish"]
    assert _body_lines(finetune) <= 5


def _code_sources():
    """(file, source) of every Python file and notebook/lab code cell outside the package."""
    for path in sorted([*ROOT.glob("tests/*.py"), *ROOT.glob("benchmarks/*.py"), *ROOT.glob("notebooks/*.ipynb"),
                        *ROOT.glob("labs/source/*/*.ipynb")]):
        if path.suffix == ".py":
            yield path, path.read_text()
        else:
            for cell in json.loads(path.read_text())["cells"]:
                if cell["cell_type"] == "code":
                    yield path, "".join(cell["source"])


def test_no_notebook_lab_test_or_benchmark_imports_a_private_module():
    private = re.compile(r"\bqlora_lab(\.\w+)*\._\w+")
    found = [f"{path.relative_to(ROOT)}: {m.group(0)}" for path, source in _code_sources()
             for m in private.finditer(source)]
    assert not found, found


def _resolves(dotted: str) -> bool:
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for attribute in parts[i:]:
            if not hasattr(obj, attribute):
                return False
            obj = getattr(obj, attribute)
        return True
    return False


def test_every_qlora_lab_name_in_the_course_exists():
    """Each `qlora_lab.<module>.<name>` in prose, notebooks, configs and code is a real module or object."""
    generated = ROOT / "benchmarks" / "results"  # tool output, e.g. mutmut's mutant names
    files = [p for p in ROOT.rglob("*") if p.is_file() and not {".venv", "_build", ".git", "mutants"} & set(p.parts)
             and generated not in p.parents
             and (p.suffix in {".py", ".md", ".ipynb", ".yml", ".yaml", ".toml", ".cfg"} or p.name == ".importlinter")]
    dotted = re.compile(r"qlora_lab(?:\.[A-Za-z_]\w*)+")
    stale = sorted({f"{p.relative_to(ROOT)}: {ref}" for p in files for ref in dotted.findall(p.read_text(errors="ignore"))
                    if not ref.endswith((".py", ".md", ".html")) and not _resolves(ref)})
    assert len(files) > 100
    assert not stale, stale
