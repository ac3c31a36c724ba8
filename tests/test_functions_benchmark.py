"""The function benchmark: generated problems, a sandboxed runner, and pass@1 (a short version).

Every reference body passes its tests and known-wrong bodies fail; an infinite loop is
killed, a memory bomb stopped; code that tries to escape (write outside its folder, read
the repository's tests, open a socket) fails; the generator is deterministic and its
splits are disjoint; the CLI ends with its pass@1 line.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from qlora_lab.cli import build_parser, main
from qlora_lab.cli.finetune import config_from_args
from qlora_lab.finetune import code_runner
from qlora_lab.finetune.code_runner import run_candidate, sandbox_kind
from qlora_lab.finetune.config import DATA_RECIPES, FinetuneConfig
from qlora_lab.finetune.data import FUNCTIONS_TRAIN, IGNORE_INDEX, build_examples, check_source
from qlora_lab.finetune.functions_eval import cut_completion, score_functions
from qlora_lab.finetune.functions_tasks import HELDOUT_FAMILIES, TRAIN_FAMILIES, make_problems

ROOT = Path(__file__).resolve().parents[1]


def one_per_family(split: str) -> list:
    families = HELDOUT_FAMILIES if split == "heldout_families" else TRAIN_FAMILIES
    return make_problems(split, len(families), seed=3)


def test_there_are_enough_families_and_each_split_draws_them_in_turn():
    assert len(TRAIN_FAMILIES) >= 8 and len(HELDOUT_FAMILIES) >= 3
    assert {p.family for p in one_per_family("train")} == {f.name for f in TRAIN_FAMILIES}
    assert {p.family for p in one_per_family("heldout_families")} == {f.name for f in HELDOUT_FAMILIES}


@pytest.mark.parametrize("split", ["heldout", "heldout_families"])
def test_every_reference_body_passes_its_tests(split):
    for problem in one_per_family(split):
        outcome = run_candidate(problem.reference, problem.tests)
        assert outcome.passed, (problem.reference, problem.tests, outcome)


def test_known_wrong_bodies_fail():
    for problem in one_per_family("heldout"):
        wrong = problem.prompt + "    return None\n"
        assert run_candidate(wrong, problem.tests).status == "failed", problem.reference
    syntax = run_candidate("def f(x):\n    return x +\n", "assert f(1) == 2\n")
    assert syntax.status == "error" and "SyntaxError" in syntax.detail
    # an early clean exit skips the tests: not a pass
    assert run_candidate("import os\nos._exit(0)\n", "assert False\n").status == "error"


def test_an_infinite_loop_is_killed_and_counted_failed():
    outcome = run_candidate("def f():\n    while True:\n        pass\n", "f()\n", timeout_s=1.0)
    assert outcome.status == "timeout" and not outcome.passed
    assert outcome.seconds < 10


def test_a_memory_bomb_is_stopped():
    bomb = "def f():\n    return bytearray(4 * 2**30)\n"
    outcome = run_candidate(bomb, "assert len(f()) > 0\n", memory_bytes=256 * 2**20)
    assert outcome.status == "memory" and not outcome.passed


ESCAPES = {
    "write": "open({outside!r}, 'w').write('intrus')\n",
    "read": "print(open({inside!r}).read()[:20])\n",
    "network": "import socket\nsocket.create_connection(('1.1.1.1', 53), timeout=2)\n",
}


@pytest.mark.parametrize("attempt", sorted(ESCAPES))
def test_an_escape_attempt_fails(attempt, tmp_path):
    assert sandbox_kind() == "bwrap", "bubblewrap is missing: run `make sandbox`"
    outside = ROOT / "tests" / "intrus_du_bac_a_sable.txt"
    code = ESCAPES[attempt].format(outside=str(outside), inside=str(ROOT / "tests" / "test_data.py"))
    outcome = run_candidate(code, "assert True\n")
    assert outcome.status == "error" and not outcome.passed, outcome
    assert not outside.exists()


def test_without_bwrap_the_fallback_still_limits_time_and_network(monkeypatch):
    which = shutil.which
    monkeypatch.setattr(code_runner.shutil, "which", lambda name: None if name == "bwrap" else which(name))
    sandbox_kind.cache_clear()
    try:
        assert sandbox_kind() in ("unshare", "unshare-user")  # unshare exists on this machine
        assert run_candidate("def f():\n    while True:\n        pass\n", "f()\n", timeout_s=1.0).status == "timeout"
        assert run_candidate(ESCAPES["network"], "assert True\n").status == "error"
        problem = one_per_family("heldout")[0]
        assert run_candidate(problem.reference, problem.tests).passed
    finally:
        sandbox_kind.cache_clear()


def test_the_generator_is_deterministic_and_the_seed_matters():
    assert make_problems("heldout", 30, seed=5) == make_problems("heldout", 30, seed=5)
    assert make_problems("heldout", 30, seed=5) != make_problems("heldout", 30, seed=6)
    with pytest.raises(ValueError, match="split='test'"):
        make_problems("test", 3)


def test_training_problems_never_appear_in_the_heldout_splits():
    train = {p.prompt for p in make_problems("train", FUNCTIONS_TRAIN)}
    assert len(train) == FUNCTIONS_TRAIN  # distinct
    for seed in (0, 1):  # seed 0: what pass@1 scores; seed 1: the validation loss
        heldout = {p.prompt for p in make_problems("heldout", 100, seed)}
        assert len(heldout) == 100 and not heldout & train
    trained = {f.name for f in TRAIN_FAMILIES}
    assert not {p.family for p in make_problems("heldout_families", 40)} & trained


def test_a_completion_stops_where_the_function_ends():
    text = "    if x > 3:\n        return 'a'\n    return 'b'\n\ndef other():\n    pass\n"
    assert cut_completion(text) == "    if x > 3:\n        return 'a'\n    return 'b'\n"
    assert cut_completion("\ndef f(x):\n") == ""


def test_functions_data_masks_the_prompt_and_learns_the_body():
    from qlora_lab.model.tokenization import load_tokenizer

    check_source("functions")
    tokenizer = load_tokenizer()
    train, val = build_examples("functions", tokenizer, seq_len=96)
    assert len(train) == FUNCTIONS_TRAIN and len(val) > 0
    problem = make_problems("train", 1)[0]
    first = train[0]
    target = tokenizer.decode([t for t in first.labels if t != IGNORE_INDEX], skip_special_tokens=True)
    assert target == problem.solution
    prompt_tokens = len(tokenizer(problem.prompt)["input_ids"])
    assert first.labels[:prompt_tokens] == [IGNORE_INDEX] * prompt_tokens


def test_finetune_data_functions_takes_its_recipe_unless_an_option_is_given():
    parser = build_parser("finetune")
    recipe = DATA_RECIPES["functions"]
    config = config_from_args(parser.parse_args(["finetune", "--data", "functions"]))
    assert config == FinetuneConfig(data="functions", **recipe)
    config = config_from_args(parser.parse_args(["finetune", "--data", "functions", "--max-steps", "7"]))
    assert config.max_steps == 7 and config.batch_size == recipe["batch_size"]
    assert config_from_args(parser.parse_args(["finetune"])) == FinetuneConfig()


def test_the_base_model_scores_zero_and_the_cli_ends_with_its_pass_at_1_line(tmp_path, capsys):
    report = tmp_path / "score.json"
    assert main(["eval", "--task", "functions", "--problems", "6", "--json", str(report)]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    saved = json.loads(report.read_text())
    assert re.fullmatch(r"pass@1 = \d\.\d\d \(\d+/6\)", last)
    assert last == f"pass@1 = {saved['pass_at_1']:.2f} ({saved['passed']}/6)"
    assert saved["passed"] == sum(r["status"] == "passed" for r in saved["results"])
    assert saved["passed"] == 0  # the base model writes no body (measured: a new `def` each time)
