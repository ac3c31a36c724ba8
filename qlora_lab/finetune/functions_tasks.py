"""A generated, offline skill benchmark: small Python functions from a docstring (HumanEval-style).

Each `Problem` is a signature and a one-line docstring (what the model sees), a reference
body, and `assert` tests. Problems come from task *families* (add a constant, filter a
list, upper-case a string...) drawn with random function names, argument names and
constants, so that a model must read the docstring and copy the right names and numbers.

    problems = make_problems("heldout", n=100, seed=0)
    print(problems[0].prompt + problems[0].solution)

Splits: "train" and "heldout" use the same `TRAIN_FAMILIES` but never the same problem
(a problem goes to held-out when the SHA-256 of its prompt says so, whatever the seed);
"heldout_families" uses `HELDOUT_FAMILIES`, never seen in training: what does not transfer.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from typing import Callable

SPLITS = ("train", "heldout", "heldout_families")
HELDOUT_SHARE = 4  # one prompt in 4 (by hash) is reserved for the held-out split
N_TESTS = 4  # asserts per problem

VERBS = ("compute", "get", "make", "find", "build", "apply", "calc", "process", "transform", "handle",
         "eval", "prepare", "derive", "produce", "update", "convert", "shape", "adjust", "pick", "form")
NOUNS = ("value", "result", "total", "item", "data", "score", "entry", "record", "number", "output",
         "amount", "answer", "level", "label", "token", "field", "count", "batch", "block", "chunk")
NUMBER_ARGS = ("x", "n", "a", "b", "k", "num", "value", "val", "size", "amount", "count", "m", "y", "z", "p", "q")
TEXT_ARGS = ("s", "text", "word", "name", "line", "label", "msg", "key", "title", "tag")
LIST_ARGS = ("xs", "items", "values", "nums", "seq", "data", "numbers", "lst", "arr", "elems")
WORDS = ("big", "small", "high", "low", "yes", "no", "ok", "bad", "hot", "cold", "on", "off", "red",
         "blue", "up", "down", "left", "right", "fast", "slow", "odd", "even", "pos", "neg")
LETTERS = "abcdefghijklmnopqrstuvwxyz"


@dataclass(frozen=True)
class Problem:
    """One task: `prompt` (signature + docstring) is completed by a body; `tests` are asserts."""

    name: str  # the function's name
    family: str
    prompt: str
    solution: str  # the reference body, indented, ending with a newline
    tests: str  # assert lines calling `name`

    @property
    def reference(self) -> str:
        """The whole reference function (prompt + body), which passes `tests`."""
        return self.prompt + self.solution


@dataclass(frozen=True)
class Family:
    """A task family: draws (arguments, docstring, body) and one test input."""

    name: str
    draw: Callable[[random.Random], tuple[list[str], str, list[str]]]  # args, docstring, body lines
    inputs: Callable[[random.Random], tuple]  # a random argument tuple for the tests


# --- random pieces -------------------------------------------------------------------------------

def _const(rng: random.Random) -> int:
    return rng.randint(2, 19)


def _word(rng: random.Random, *avoid: str) -> str:
    return rng.choice([w for w in WORDS if w not in avoid])


def _int(rng: random.Random) -> tuple:
    return (rng.randint(-20, 40),)


def _text(rng: random.Random) -> tuple:
    return ("".join(rng.choice(LETTERS[:8]) for _ in range(rng.randint(0, 7))),)


def _ints(rng: random.Random) -> tuple:
    return ([rng.randint(0, 20) for _ in range(rng.randint(0, 7))],)


def _two_ints(rng: random.Random) -> tuple:
    return (rng.randint(-20, 40), rng.randint(-20, 40))


# --- the families: each returns (argument names, docstring, body lines) -------------------------

def _add(rng):
    x, c = rng.choice(NUMBER_ARGS), _const(rng)
    return [x], f"Return {x} plus {c}.", [f"return {x} + {c}"]


def _mul(rng):
    x, c = rng.choice(NUMBER_ARGS), _const(rng)
    return [x], f"Return {x} multiplied by {c}.", [f"return {x} * {c}"]


def _affine(rng):
    x, a, b = rng.choice(NUMBER_ARGS), _const(rng), _const(rng)
    return [x], f"Return {x} times {a} minus {b}.", [f"return {x} * {a} - {b}"]


def _sum_two(rng):
    a, b = rng.sample(NUMBER_ARGS, 2)
    c = _const(rng)
    return [a, b], f"Return the sum of {a} and {b} plus {c}.", [f"return {a} + {b} + {c}"]


def _case(rng):
    s, case = rng.choice(TEXT_ARGS), rng.choice(("upper", "lower"))
    return [s], f"Return {s} in {case} case.", [f"return {s}.{case}()"]


def _prefix(rng):
    s, w = rng.choice(TEXT_ARGS), _word(rng)
    return [s], f"Return {s} with '{w}' added at the start.", [f"return '{w}' + {s}"]


def _repeat(rng):
    s, c = rng.choice(TEXT_ARGS), rng.randint(2, 5)
    return [s], f"Return {s} repeated {c} times.", [f"return {s} * {c}"]


def _count_char(rng):
    s, ch = rng.choice(TEXT_ARGS), rng.choice(LETTERS[:8])
    return [s], f"Return the number of times '{ch}' occurs in {s}.", [f"return {s}.count('{ch}')"]


def _filter(rng):
    xs, c = rng.choice(LIST_ARGS), rng.randint(2, 15)
    word, op = rng.choice((("greater", ">"), ("less", "<")))
    return [xs], f"Return the items of {xs} that are {word} than {c}.", [f"return [v for v in {xs} if v {op} {c}]"]


def _map_add(rng):
    xs, c = rng.choice(LIST_ARGS), _const(rng)
    return [xs], f"Return a list with {c} added to every item of {xs}.", [f"return [v + {c} for v in {xs}]"]


def _count_equal(rng):
    xs, c = rng.choice(LIST_ARGS), rng.randint(0, 9)
    return [xs], f"Return how many items of {xs} are equal to {c}.", [f"return {xs}.count({c})"]


def _choose(rng):
    x, c = rng.choice(NUMBER_ARGS), _const(rng)
    yes = _word(rng)
    no = _word(rng, yes)
    return ([x], f"Return '{yes}' if {x} is greater than {c}, otherwise '{no}'.",
            [f"if {x} > {c}:", f"    return '{yes}'", f"return '{no}'"])


# held-out families: never in training
def _reverse(rng):
    s = rng.choice(TEXT_ARGS)
    return [s], f"Return {s} reversed.", [f"return {s}[::-1]"]


def _smallest(rng):
    xs = rng.choice(LIST_ARGS)
    return [xs], f"Return the smallest item of {xs}, or 0 if it is empty.", [f"return min({xs}, default=0)"]


def _sum_filter(rng):
    xs, c = rng.choice(LIST_ARGS), rng.randint(2, 15)
    return [xs], f"Return the sum of the items of {xs} that are greater than {c}.", [f"return sum(v for v in {xs} if v > {c})"]


def _absdiff(rng):
    a, b = rng.sample(NUMBER_ARGS, 2)
    return [a, b], f"Return the absolute difference between {a} and {b}.", [f"return abs({a} - {b})"]


TRAIN_FAMILIES = (
    Family("add", _add, _int), Family("mul", _mul, _int), Family("affine", _affine, _int),
    Family("sum_two", _sum_two, _two_ints), Family("case", _case, _text), Family("prefix", _prefix, _text),
    Family("repeat", _repeat, _text), Family("count_char", _count_char, _text), Family("filter", _filter, _ints),
    Family("map_add", _map_add, _ints), Family("count_equal", _count_equal, _ints), Family("choose", _choose, _int),
)
HELDOUT_FAMILIES = (
    Family("reverse", _reverse, _text), Family("smallest", _smallest, _ints),
    Family("sum_filter", _sum_filter, _ints), Family("absdiff", _absdiff, _two_ints),
)


# --- assembling problems ---------------------------------------------------------------------------

def function_name(rng: random.Random) -> str:
    """A random snake_case name such as `derive_score`."""
    return f"{rng.choice(VERBS)}_{rng.choice(NOUNS)}"


def build_problem(family: Family, rng: random.Random) -> Problem:
    """One problem of `family`; its tests call the reference body on random inputs."""
    name = function_name(rng)
    args, doc, body = family.draw(rng)
    prompt = f"def {name}({', '.join(args)}):\n    \"\"\"{doc}\"\"\"\n"
    solution = "".join(f"    {line}\n" for line in body)
    namespace: dict = {}
    exec(compile(prompt + solution, f"<{family.name}>", "exec"), namespace)  # our own reference code
    reference = namespace[name]
    calls = []
    for _ in range(N_TESTS):
        inputs = family.inputs(rng)
        expected = reference(*[list(a) if isinstance(a, list) else a for a in inputs])
        calls.append(f"assert {name}({', '.join(map(repr, inputs))}) == {expected!r}\n")
    return Problem(name=name, family=family.name, prompt=prompt, solution=solution, tests="".join(calls))


def is_heldout(prompt: str) -> bool:
    """True for the prompts reserved to the held-out split (a fixed hash, whatever the seed)."""
    return int(hashlib.sha256(prompt.encode()).hexdigest(), 16) % HELDOUT_SHARE == 0


def make_problems(split: str, n: int, seed: int = 0) -> list[Problem]:
    """`n` distinct problems of `split` ("train", "heldout" or "heldout_families"), families in turn.

    Deterministic: the same (split, n, seed) gives the same problems. A train problem and a
    held-out one never share a prompt, whatever their seeds.

    Raises:
        ValueError: an unknown split, or n < 1.
    """
    if split not in SPLITS:
        raise ValueError(f"split={split!r}: choose one of {SPLITS}")
    if n < 1:
        raise ValueError(f"n={n} must be at least 1")
    families = HELDOUT_FAMILIES if split == "heldout_families" else TRAIN_FAMILIES
    rng = random.Random(f"{split}-{seed}")
    problems: list[Problem] = []
    seen: set[str] = set()
    attempts = 0
    while len(problems) < n:
        attempts += 1
        if attempts > 100 * n:
            raise ValueError(f"cannot draw {n} distinct problems for split {split!r}")
        problem = build_problem(families[len(problems) % len(families)], rng)
        if problem.prompt in seen or (split != "heldout_families" and is_heldout(problem.prompt) != (split == "heldout")):
            continue
        seen.add(problem.prompt)
        problems.append(problem)
    return problems
