"""Hidden tests out of the student's reach: answers computed in the sandbox, checked outside.

Each lab has a check module, labs/checks/<lab>.py (never released, never visible in the
sandbox), with CHECKS = {test cell grade_id: Check}. A Check has three parts:

* `inputs()`: the test inputs as plain data, drawn by the trusted grader;
* `kernel_code`: Python source run in the student's kernel, in place of the test cell,
  that defines `reponses(entrees)` (calls the student's functions on the inputs and
  returns plain data: numbers, strings, lists, dicts; `tenseur(t)` turns a tensor into
  {"dtype", "shape", "values"});
* `verify(inputs, answers)`: run by the trusted grader on the answers (JSON-decoded, so
  plain Python data whatever the student's code did); it computes the reference values
  itself and raises AssertionError when an answer is wrong. Exact types are checked with
  the helpers below (`expect_*`), never with a comparison the student could overload.
"""

from __future__ import annotations

import importlib.util
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

MARKER = "__qlora_lab_reponses__ "

# Run in the student's kernel before each answer cell's own code (and shown to nobody).
KERNEL_PRELUDE = '''
def tenseur(t):
    import torch
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"un tenseur torch était attendu, pas {type(t).__name__}")
    return {"dtype": str(t.dtype), "shape": list(t.shape), "values": t.detach().cpu().tolist()}
'''


@dataclass(frozen=True)
class Check:
    """One graded test cell: inputs (trusted), kernel code (sandbox), verify (trusted)."""

    inputs: Callable[[], Any]
    kernel_code: str
    verify: Callable[[Any, Any], None]


def load_checks(labs_dir: Path, lab: str) -> dict[str, Check]:
    """CHECKS of labs/checks/<lab>.py (trusted instructor code)."""
    path = Path(labs_dir) / "checks" / f"{lab}.py"
    if not path.is_file():
        raise ValueError(f"no hidden tests for {lab}: {path} is missing")
    spec = importlib.util.spec_from_file_location(f"qlora_lab_checks_{lab}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return dict(module.CHECKS)


def answer_cell_source(visible_test: str, check: Check, inputs: Any) -> str:
    """The cell run in the student's kernel in place of a test cell.

    The visible test runs first, errors ignored (students' later cells may use the names
    it defines); then `reponses(entrees)` and one printed line MARKER + JSON.
    """
    return "\n".join([
        "def __qlora_lab_cellule():",
        "    import json as _json",
        "    try:",
        f"        exec(compile({visible_test!r}, 'test', 'exec'), globals())",
        "    except Exception:",
        "        pass",
        "    espace = dict(globals())",
        f"    exec(compile({KERNEL_PRELUDE + check.kernel_code!r}, 'reponses', 'exec'), espace)",
        f"    entrees = _json.loads({json.dumps(inputs)!r})",
        f"    print({MARKER!r} + _json.dumps(espace['reponses'](entrees)))",
        "__qlora_lab_cellule()",
        "del __qlora_lab_cellule",
    ])


def parse_answers(outputs: Any, max_chars: int = 64 * 2**20) -> Any:
    """The answers printed by an answer cell (untrusted outputs); ValueError when there are none."""
    if not isinstance(outputs, list):
        raise ValueError("no outputs")
    found = []
    for output in outputs:
        if isinstance(output, dict) and output.get("output_type") == "stream" and output.get("name") == "stdout":
            text = output.get("text", "")
            text = "".join(text) if isinstance(text, list) else str(text)
            found += [line[len(MARKER):] for line in text.splitlines() if line.startswith(MARKER)]
    if len(found) != 1 or len(found[0]) > max_chars:
        raise ValueError(f"{len(found)} answer lines (exactly one expected)")
    return json.loads(found[0])


# ----------------------------------------------------- exact types, for verify()


def expect_type(value: Any, kind: type, what: str = "value") -> Any:
    """The value if its type is exactly `kind` (bool is not an int, int is not a float)."""
    if type(value) is not kind:
        raise AssertionError(f"{what}: {kind.__name__} expected, got {type(value).__name__}")
    return value


def expect_number(value: Any, what: str = "value") -> float:
    """An int or a float (not a bool), finite."""
    if type(value) not in (int, float) or not math.isfinite(value):
        raise AssertionError(f"{what}: a finite number expected, got {type(value).__name__}")
    return float(value)


def expect_list(value: Any, kind: type, length: int | None = None, what: str = "value") -> list:
    """A list whose items all have exactly type `kind` (and the given length)."""
    expect_type(value, list, what)
    if length is not None and len(value) != length:
        raise AssertionError(f"{what}: {length} items expected, got {len(value)}")
    for item in value:
        expect_type(item, kind, what)
    return value


def expect_tensor(value: Any, dtype: str, shape: tuple | list | None = None, what: str = "tensor"):
    """A tensor answer ({"dtype", "shape", "values"}) as a torch tensor of exactly that dtype/shape."""
    import torch

    expect_type(value, dict, what)
    if set(value) != {"dtype", "shape", "values"} or value["dtype"] != dtype:
        raise AssertionError(f"{what}: a {dtype} tensor expected, got {value.get('dtype')!r}")
    got_shape = expect_list(value["shape"], int, what=what)
    if shape is not None and list(shape) != got_shape:
        raise AssertionError(f"{what}: shape {list(shape)} expected, got {got_shape}")
    flat = _flatten(value["values"], len(got_shape), what)
    if len(flat) != math.prod(got_shape):
        raise AssertionError(f"{what}: {math.prod(got_shape)} values expected, got {len(flat)}")
    return torch.tensor(flat, dtype=getattr(torch, dtype.removeprefix("torch."))).reshape(got_shape)


def _flatten(values: Any, depth: int, what: str) -> list:
    """Nested lists of exactly `depth` levels of numbers, flattened."""
    if depth == 0:
        if type(values) not in (int, float, bool):
            raise AssertionError(f"{what}: numbers expected")
        return [values]
    expect_type(values, list, what)
    return [v for item in values for v in _flatten(item, depth - 1, what)]
