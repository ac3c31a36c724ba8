"""Self-check of chapters 00 and 04-10: each checker against an independent computation."""

import math

import pytest

from qlora_lab.course.self_check import registry, verifier


def test_the_registry_holds_the_exercises_of_chapters_00_and_04_to_10():
    ids = set(registry())
    assert {f"{c}.{k}" for c in ("00", "04", "05", "06", "07", "10") for k in (1, 2, 3)} <= ids


def test_chapter_00_by_hand():
    assert verifier("00.1", 1024 * 1024 / 2 / 1024).juste  # two 4-bit codes per byte
    assert verifier("00.1", 4096).status == "faux"


def test_chapter_04_by_hand():
    dq = lambda b: 4 + 8 / b + 32 / (b * 256)  # QLoRA §3
    assert verifier("04.1", {32: dq(32), 128: dq(128), "même coût": 16}).juste
    assert verifier("04.1", {32: dq(32), 128: dq(128), "même coût": 64}).status == "partiel"
    assert verifier("04.2", 4 + 32 / 64).juste
    budget = 24 * 2**30 * 8
    assert verifier("04.3", {"NF4 + DQ": math.floor(budget / dq(64) / 1e9), "NF4": math.floor(budget / 4.5 / 1e9)}).juste


def test_chapter_05_word_pair_conditions():
    from qlora_lab.course.token_costs import n_tokens
    from qlora_lab.model.tokenization import load_tokenizer

    tok = load_tokenizer()
    assert n_tokens(tok, "éléments") > 5 and n_tokens(tok, "function") <= 2 and n_tokens(tok, "return") <= 2
    assert verifier("05.3", {"fr": "éléments", "en": "function"}).juste  # 8 characters each
    assert verifier("05.3", {"fr": "éléments", "en": "return"}).status == "partiel"  # lengths differ
    assert verifier("05.3", {"fr": "a", "en": "abc"}).status == "faux"
    assert verifier("05.3", "quantification").status == "faux"


def test_chapter_06_by_hand():
    from qlora_lab.model.models import load_model
    from qlora_lab.sizing.flops import matmul_params

    model, _ = load_model(quantization="none")
    n, cfg = matmul_params(model), model.config
    t = next(t for t in range(1, 100_000) if 4 * cfg.num_hidden_layers * t * cfg.hidden_size > 2 * n)
    assert verifier("06.1", t).juste and verifier("06.1", t - 1).status == "faux"
    intensity = lambda k: 2 * k * k / (4 * (k * k + 2 * k))
    assert verifier("06.3", {512: intensity(512), 4096: intensity(4096), "limite": 0.5}).juste
    # 70B has ~69e9 weights: even 4.127 bits need ~33 GiB, more than 24 GiB; 13B fits in int8 (~13 GB)
    assert verifier("06.2", {"13B": 4, "34B": 3, "70B": 0}).juste


def test_chapter_07_by_hand():
    from qlora_lab.model.llama_shapes import CODELLAMA

    s = CODELLAMA["13B"]
    per_rank = s.n_layers * (4 * 2 * s.hidden + 3 * (s.hidden + s.intermediate))  # q,k,v,o (no GQA) + MLP
    assert verifier("07.1", math.ceil(0.01 * s.n_params / per_rank)).juste
    assert verifier("07.3", {"eval": 0.0, "train identiques": "non"}).juste
    assert verifier("07.3", {"eval": 0.0, "train identiques": "oui"}).status == "partiel"


def test_chapter_10_by_hand():
    # 3.5 > 1.25 × 2.7, 3.3 > 1.25 × 2.6, NaN is never finite
    assert verifier("10.2", [4, 6, 7]).juste and verifier("10.2", [4]).status == "faux"
    from peft import LoraConfig, get_peft_model

    from qlora_lab.model.models import load_model

    model, _ = load_model(quantization="none")
    peft_model = get_peft_model(model, LoraConfig(r=8, target_modules="all-linear", task_type="CAUSAL_LM"))
    assert verifier("10.3", peft_model.get_nb_trainable_parameters()[0]).juste


@pytest.mark.parametrize("exercise", ["00.2", "05.2", "07.2", "10.1"])
def test_an_empty_answer_asks_for_one(exercise):
    assert verifier(exercise, None).status == "vide"
