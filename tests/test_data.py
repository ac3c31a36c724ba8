"""Fine-tuning data: instruction pairs, response-only labels, JSONL validation, padding."""

import json

import pytest

from qlora_lab.finetune.data import (IGNORE_INDEX, DataError, build_examples, collate, encode_pair, function_pairs,
                            load_jsonl, split_holdout)
from qlora_lab.model.tokenization import load_tokenizer

SOURCE = '''
def add(a, b):
    """Return the sum of a and b."""
    total = a + b
    return total

def undocumented(x):
    return x
'''


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer()


def test_function_pairs_take_documented_functions_only():
    pairs = function_pairs(SOURCE)
    assert len(pairs) == 1
    assert pairs[0]["instruction"] == "def add(a, b):\nReturn the sum of a and b."
    assert pairs[0]["response"] == "total = a + b\nreturn total\n"


def test_prompt_tokens_are_masked_and_response_is_learned(tokenizer):
    example = encode_pair(tokenizer, "def add(a, b):", "return a + b\n", seq_len=128)
    n_masked = sum(label == IGNORE_INDEX for label in example.labels)
    prompt_len = len(tokenizer("### Instruction:\ndef add(a, b):\n### Response:\n")["input_ids"])
    assert n_masked == prompt_len
    assert example.labels[n_masked:] == example.input_ids[n_masked:]
    assert example.input_ids[-1] == tokenizer.eos_token_id


def test_instruction_data_from_the_held_out_package(tokenizer):
    train, val = build_examples("instructions", tokenizer, seq_len=128)
    assert len(train) > 50 and len(val) > 5
    assert all(IGNORE_INDEX in e.labels for e in train[:20])


def test_empty_jsonl_is_reported(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("\n\n")
    with pytest.raises(DataError, match="empty"):
        load_jsonl(path)


@pytest.mark.parametrize("bad_line, message", [
    ("{not json", "line 2: not valid JSON"),
    ('["a list"]', "line 2: expected a JSON object"),
    ('{"prompt": "x"}', "line 2: needs keys"),
    ('{"instruction": "x", "response": ""}', "line 2: instruction and response must be non-empty"),
])
def test_malformed_jsonl_line_is_reported_with_its_number(tmp_path, bad_line, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"text": "ok"}) + "\n" + bad_line + "\n")
    with pytest.raises(DataError, match=message):
        load_jsonl(path)


def test_user_jsonl_becomes_train_and_validation(tmp_path, tokenizer):
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps({"instruction": f"double {i}", "response": f"{2 * i}"}) + "\n" for i in range(20)))
    train, val = build_examples(str(path), tokenizer, seq_len=64)
    assert len(train) + len(val) == 20 and len(val) >= 1


def test_unknown_source_is_rejected(tokenizer):
    with pytest.raises(DataError, match="data='nowhere'"):
        build_examples("nowhere", tokenizer, seq_len=64)


def test_split_holdout_needs_two_items():
    with pytest.raises(DataError):
        split_holdout([1])


def test_collate_pads_ids_and_masks_labels(tokenizer):
    a = encode_pair(tokenizer, "x", "y", 64)
    b = encode_pair(tokenizer, "a longer instruction here", "and a longer answer", 64)
    batch = collate([a, b], pad_id=tokenizer.pad_token_id)
    n = len(a.input_ids)
    assert batch["input_ids"].shape[1] == len(b.input_ids)
    assert (batch["attention_mask"][0, n:] == 0).all() and (batch["labels"][0, n:] == IGNORE_INDEX).all()
    assert (batch["input_ids"][0, n:] == tokenizer.pad_token_id).all()
