"""The course's byte-level BPE tokenizer: training, saving, loading, round trips."""

import json

import pytest
from transformers import AutoTokenizer

from qlora_lab.model import corpus
from qlora_lab.paths import EMBEDDED_MODEL_DIR
from qlora_lab.model.tokenization import (
    BOS, EOS, PAD, SPECIAL_TOKENS, UNK, build_bpe, bytes_per_token, load_tokenizer, train_tokenizer,
)

SMALL_TEXTS = ["def add(a, b):\n    return a + b\n", "class Point:\n    x: int = 0\n"] * 50


@pytest.fixture(scope="module")
def shipped():
    return load_tokenizer()


def test_trained_tokenizer_saves_the_three_hugging_face_files(tmp_path):
    train_tokenizer(tmp_path, vocab_size=300, texts=SMALL_TEXTS)
    names = {p.name for p in tmp_path.iterdir()}
    assert {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"} <= names
    special = json.loads((tmp_path / "special_tokens_map.json").read_text())
    assert (special["bos_token"], special["eos_token"], special["unk_token"], special["pad_token"]) == (BOS, EOS, UNK, PAD)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    assert reloaded.convert_tokens_to_ids(SPECIAL_TOKENS) == [0, 1, 2, 3]


def test_training_is_reproducible():
    first = build_bpe(SMALL_TEXTS, vocab_size=300).get_vocab()
    second = build_bpe(SMALL_TEXTS, vocab_size=300).get_vocab()
    assert first == second


@pytest.mark.parametrize("vocab_size", [0, 100, 259])
def test_too_small_vocabulary_is_named(vocab_size):
    with pytest.raises(ValueError, match=f"vocab_size={vocab_size}"):
        build_bpe(SMALL_TEXTS, vocab_size=vocab_size)


@pytest.mark.parametrize("text", ["def f(x):\n\treturn x  # café ☕\n", "    \n\n", "日本語 « guillemets »", ""])
def test_round_trip_is_lossless_byte_level(shipped, text):
    ids = shipped(text)["input_ids"]
    assert ids[0] == shipped.bos_token_id  # Llama convention: <s> first
    assert shipped.decode(ids, skip_special_tokens=True) == text
    assert shipped.unk_token_id not in ids  # byte-level: nothing is unknown


def test_shipped_tokenizer_fits_the_model_config(shipped):
    config = json.loads((EMBEDDED_MODEL_DIR / "config.json").read_text())
    assert len(shipped) == config["vocab_size"]
    assert (shipped.bos_token_id, shipped.eos_token_id, shipped.pad_token_id) == (
        config["bos_token_id"], config["eos_token_id"], config["pad_token_id"])


def test_indentation_is_cheap_in_tokens(shipped):
    """Runs of spaces merge: an 8-space indented line costs about as much as an unindented one."""
    flat = shipped("return value\n", add_special_tokens=False)["input_ids"]
    indented = shipped("        return value\n", add_special_tokens=False)["input_ids"]
    assert len(indented) <= len(flat) + 1


def test_shipped_tokenizer_compresses_held_out_code(shipped):
    texts = corpus.read_texts("validation")[:5]
    assert bytes_per_token(shipped, texts) > 3.0


def test_load_tokenizer_missing_path_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        load_tokenizer(tmp_path)
