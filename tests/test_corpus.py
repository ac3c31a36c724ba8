"""The stdlib corpus: deterministic, disjoint splits, exclusions, and the French sample."""

import hashlib
import json
from pathlib import Path

import pytest

from qlora_lab.model import corpus


def relative(paths):
    root = corpus.stdlib_dir()
    return [p.relative_to(root) for p in paths]


@pytest.fixture(scope="module")
def splits():
    return {split: relative(corpus.corpus_files(split)) for split in corpus.SPLITS}


def test_splits_are_non_empty_and_disjoint(splits):
    seen = set()
    for split, files in splits.items():
        assert files, f"{split} is empty"
        assert seen.isdisjoint(files)
        seen.update(files)


def test_domain_package_is_held_out_of_pretraining(splits):
    for split in ("train", "validation"):
        assert all(p.parts[0] != corpus.DOMAIN_PACKAGE for p in splits[split])
    for split in ("domain_train", "domain_validation"):
        assert all(p.parts[0] == corpus.DOMAIN_PACKAGE for p in splits[split])


def test_validation_is_about_five_percent_of_files(splits):
    fraction = len(splits["validation"]) / (len(splits["validation"]) + len(splits["train"]))
    assert 0.02 < fraction < 0.10


@pytest.mark.parametrize("excluded", ["test", "tests", "idlelib", "tkinter", "lib2to3", "turtledemo",
                                      "ensurepip", "site-packages", "__pycache__"])
def test_excluded_directories_never_appear(splits, excluded):
    for files in splits.values():
        assert not any(excluded in p.parts for p in files)


@pytest.mark.parametrize(
    "path, excluded",
    [("idlelib/idle_test/test_calltip.py", True), ("unittest/test/test_case.py", True),
     ("ctypes/test/__init__.py", True), ("test_foo.py", True), ("tkinter/__init__.py", True),
     ("_sysconfigdata__linux_x86_64-linux-gnu.py", True), ("os.py", False),
     ("json/decoder.py", False), ("email/parser.py", False)],
)
def test_is_excluded(path, excluded):
    assert corpus.is_excluded(Path(path)) is excluded


def test_split_comes_from_a_stable_hash_of_the_relative_path():
    """Same split on every machine and every run: sha256 of the POSIX relative path."""
    path = Path("json/decoder.py")
    digest = hashlib.sha256(b"json/decoder.py").hexdigest()
    assert corpus.hash_fraction(path) == (int(digest[:8], 16) % 10_000) / 10_000
    expected = "validation" if corpus.hash_fraction(path) < corpus.VALIDATION_FRACTION else "train"
    assert corpus.split_of(path) == expected


def test_files_are_sorted_and_texts_match(splits):
    files = corpus.corpus_files("domain_validation")
    assert files == sorted(files)
    texts = corpus.read_texts("domain_validation")
    assert len(texts) == len(files) and all(texts)


def test_count_bytes_counts_utf8_bytes():
    assert corpus.count_bytes(["abc", "é", ""]) == 3 + 2


def test_split_summary_matches_files():
    summary = corpus.split_summary()
    assert summary["train"]["bytes"] > 5_000_000  # the stdlib is megabytes of code
    assert summary["domain_validation"]["files"] == len(corpus.corpus_files("domain_validation"))


def test_unknown_split_is_named():
    with pytest.raises(ValueError, match="'dev'"):
        corpus.corpus_files("dev")


def write_notebook(path, cells):
    path.write_text(json.dumps({"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))


def test_french_sample_joins_markdown_cells_only(tmp_path):
    write_notebook(tmp_path / "01_a.ipynb", [
        {"cell_type": "markdown", "metadata": {}, "source": ["# La quantification\n", "Un octet par poids."]},
        {"cell_type": "code", "metadata": {}, "source": "print('code')", "outputs": [], "execution_count": None},
    ])
    write_notebook(tmp_path / "02_b.ipynb", [{"cell_type": "markdown", "metadata": {}, "source": "À retenir"}])
    sample = corpus.french_sample(tmp_path)
    assert sample == "# La quantification\nUn octet par poids.\n\nÀ retenir"


def test_french_sample_without_notebooks_says_where_it_looked(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        corpus.french_sample(tmp_path)
