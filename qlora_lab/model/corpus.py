"""The course's offline corpus: the Python standard library of the running interpreter.

Every Python install ships a few megabytes of well-written code, so a student without
network still has real data to pretrain and fine-tune on. The library is split
deterministically (a stable hash of each file's relative path, never `random`):

    train / validation             the stdlib minus tests, GUI code and `email/`
    domain_train / domain_validation   `email/`, held out entirely: the fine-tuning domain

    python -c "from qlora_lab import corpus; print(corpus.split_summary())"
"""

from __future__ import annotations

import hashlib
import json
import sys
import sysconfig
from functools import lru_cache
from pathlib import Path
from typing import Literal

from qlora_lab.paths import REPO_DIR

Split = Literal["train", "validation", "domain_train", "domain_validation"]
SPLITS: tuple[Split, ...] = ("train", "validation", "domain_train", "domain_validation")

# The package held out of pretraining, so that fine-tuning teaches the model something new.
DOMAIN_PACKAGE = "email"
# Fractions of files (by hash of the relative path) that go to the validation splits.
VALIDATION_FRACTION = 0.05
DOMAIN_VALIDATION_FRACTION = 0.2
# Top-level directories left out: GUI code, py2->3 converter, demos, bundled wheels.
EXCLUDED_TOP_DIRS = frozenset(
    {"idlelib", "tkinter", "lib2to3", "turtledemo", "ensurepip", "site-packages",
     "dist-packages", "config-3.11-x86_64-linux-gnu"}
)
# Directory names left out at any depth: test suites and bytecode caches.
EXCLUDED_DIR_NAMES = frozenset({"test", "tests", "__pycache__", "idle_test"})
_HASH_BUCKETS = 10_000


def stdlib_dir() -> Path:
    """The source directory of the running interpreter's standard library."""
    return Path(sysconfig.get_paths()["stdlib"])


def python_version() -> str:
    """The interpreter version whose stdlib is the corpus (a model card must say it)."""
    return ".".join(map(str, sys.version_info[:3]))


def is_excluded(relative: Path) -> bool:
    """True for files that are not course material: tests, GUI code, generated config."""
    parts = relative.parts
    if parts[0] in EXCLUDED_TOP_DIRS or parts[0].startswith("config-"):
        return True
    if any(part in EXCLUDED_DIR_NAMES for part in parts[:-1]):
        return True
    name = parts[-1]
    # test_*.py next to their package (idlelib-style), and the machine-specific sysconfig dump.
    return name.startswith("test_") or name.startswith("_sysconfigdata")


def hash_fraction(relative: Path) -> float:
    """A stable number in [0, 1) from the relative path: same split on every machine."""
    digest = hashlib.sha256(relative.as_posix().encode("utf-8")).hexdigest()
    return (int(digest[:8], 16) % _HASH_BUCKETS) / _HASH_BUCKETS


def split_of(relative: Path) -> Split:
    """Which split a stdlib file (path relative to the stdlib root) belongs to."""
    if relative.parts[0] == DOMAIN_PACKAGE:
        held_out = hash_fraction(relative) < DOMAIN_VALIDATION_FRACTION
        return "domain_validation" if held_out else "domain_train"
    return "validation" if hash_fraction(relative) < VALIDATION_FRACTION else "train"


@lru_cache(maxsize=1)
def _all_files() -> tuple[tuple[Path, Split], ...]:
    """Every corpus file of the stdlib with its split, sorted by relative path."""
    root = stdlib_dir()
    files = []
    for path in sorted(root.rglob("*.py")):
        relative = path.relative_to(root)
        if not is_excluded(relative) and path.is_file():
            files.append((path, split_of(relative)))
    return tuple(files)


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split={split!r} is not one of {SPLITS}")


def corpus_files(split: Split) -> list[Path]:
    """Absolute paths of the stdlib source files of `split`, in a fixed (sorted) order.

    Raises:
        ValueError: `split` is not one of SPLITS.
    """
    _check_split(split)
    return [path for path, s in _all_files() if s == split]


def read_text(path: Path) -> str:
    """A source file as text (the stdlib is UTF-8; undecodable bytes become U+FFFD)."""
    return path.read_bytes().decode("utf-8", errors="replace")


def read_texts(split: Split) -> list[str]:
    """The texts of a split, one string per file, in corpus_files order."""
    return [read_text(path) for path in corpus_files(split)]


def count_bytes(texts: list[str]) -> int:
    """UTF-8 bytes of `texts`: the denominator of bits per byte."""
    return sum(len(text.encode("utf-8")) for text in texts)


def split_summary() -> dict[str, dict[str, int]]:
    """Number of files and UTF-8 bytes per split (for model cards and lessons)."""
    return {
        split: {"files": len(corpus_files(split)), "bytes": count_bytes(read_texts(split))}
        for split in SPLITS
    }


def french_sample(notebooks_dir: Path | None = None) -> str:
    """The course's own French prose: the markdown cells of its notebooks, joined.

    Used as the French sample of the tokenization lessons (code vs French cost in tokens).

    Raises:
        FileNotFoundError: no notebook (or no markdown cell) under `notebooks_dir`.
    """
    notebooks_dir = Path(notebooks_dir) if notebooks_dir is not None else REPO_DIR / "notebooks"
    notebooks = sorted(notebooks_dir.glob("*.ipynb"))
    cells = []
    for notebook in notebooks:
        for cell in json.loads(notebook.read_text(encoding="utf-8")).get("cells", []):
            if cell.get("cell_type") == "markdown":
                source = cell.get("source", "")
                cells.append("".join(source) if isinstance(source, list) else source)
    if not cells:
        raise FileNotFoundError(
            f"no French course prose found: no markdown cell in any *.ipynb under "
            f"{notebooks_dir} (the notebooks supply the French sample; pass notebooks_dir=)"
        )
    return "\n\n".join(cells)
