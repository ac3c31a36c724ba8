"""Fine-tuning data: the held-out stdlib package, instruction pairs, generated functions, or the user's JSONL.

Every source becomes a list of `Example`s (token ids + labels). Labels equal the ids,
except where the loss must not look: prompt tokens and padding get -100, the value
PyTorch's cross-entropy ignores. So an instruction fine-tune learns to *answer*, not to
repeat the question.

    train, val = build_examples("instructions", tokenizer, seq_len=128)
    batch = collate(train[:8], pad_id=tokenizer.pad_token_id)   # dict of (8, L) tensors
"""

from __future__ import annotations

import ast
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from qlora_lab.finetune.functions_tasks import make_problems

IGNORE_INDEX = -100  # torch.nn.CrossEntropyLoss(ignore_index=-100)
PROMPT_TEMPLATE = "### Instruction:\n{instruction}\n### Response:\n"
DATA_SOURCES = ("domain", "instructions", "functions")  # or a path to a .jsonl file
FUNCTIONS_TRAIN, FUNCTIONS_VAL = 4000, 64  # problems of qlora_lab.finetune.functions_tasks
MIN_BODY_LINES = 2  # skip one-line functions: nothing to learn from `pass`


class DataError(ValueError):
    """Unusable training data: empty, malformed, or too short for a single example."""


@dataclass(frozen=True)
class Example:
    """One training sequence: `labels[i]` is the target for position i (-100 = no loss)."""

    input_ids: list[int]
    labels: list[int]


# --- (1) domain adaptation: the held-out stdlib package ------------------------------------

def domain_examples(tokenizer, split: str, seq_len: int) -> list[Example]:
    """Packed windows of the held-out package (`corpus.DOMAIN_PACKAGE`); labels = ids."""
    from qlora_lab.model.corpus import read_texts
    from qlora_lab.model.packing import pack_texts

    windows = pack_texts(tokenizer, read_texts(split), seq_len)
    return [Example(w.tolist(), w.tolist()) for w in windows]


# --- (2) instruction tuning: signature + docstring -> body --------------------------------

def function_pairs(source: str) -> list[dict[str, str]]:
    """Instruction/response pairs from the documented functions of one Python source file.

    The instruction is the `def` line and the docstring; the response is the body without
    its docstring, dedented as it stands in the file.
    """
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return []
    lines = source.splitlines()
    pairs = []
    for node in ast.walk(tree):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        doc = ast.get_docstring(node)
        body = node.body[1:] if doc else []
        if not doc or len(body) == 0:
            continue
        signature = lines[node.lineno - 1].strip()
        body_lines = lines[body[0].lineno - 1 : node.end_lineno]
        if len(body_lines) < MIN_BODY_LINES:
            continue
        indent = min(len(l) - len(l.lstrip()) for l in body_lines if l.strip())
        response = "\n".join(l[indent:] for l in body_lines) + "\n"
        pairs.append({"instruction": f"{signature}\n{doc.strip()}", "response": response})
    return pairs


def instruction_pairs(split: str) -> list[dict[str, str]]:
    """Instruction pairs from every file of a corpus split (default: the domain package)."""
    from qlora_lab.model.corpus import read_texts

    return [pair for text in read_texts(split) for pair in function_pairs(text)]


def encode_pair(tokenizer, instruction: str, response: str, seq_len: int) -> Example:
    """<s> prompt response </s>, truncated to seq_len; prompt tokens get label -100."""
    return encode_completion(tokenizer, PROMPT_TEMPLATE.format(instruction=instruction), response, seq_len)


def encode_completion(tokenizer, prompt_text: str, response: str, seq_len: int) -> Example:
    """<s> prompt_text response </s>, truncated to seq_len; the loss looks only at response and </s>.

    Prompt and response are tokenized apart, as generation sees them: the prompt alone,
    then the tokens the model writes.
    """
    prompt = tokenizer(prompt_text, add_special_tokens=True)["input_ids"]
    answer = tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    ids = (prompt + answer)[:seq_len]
    labels = ([IGNORE_INDEX] * len(prompt) + answer)[:seq_len]
    return Example(ids, labels)


# --- (3) the skill benchmark: generated functions, signature + docstring -> body ---------------

def function_examples(tokenizer, split: str, n: int, seq_len: int, seed: int = 0) -> list[Example]:
    """Problems of `qlora_lab.finetune.functions_tasks`: the prompt as it is, the reference body to learn."""
    return [encode_completion(tokenizer, p.prompt, p.solution, seq_len) for p in make_problems(split, n, seed)]


# --- (4) the user's own JSONL ---------------------------------------------------------------

def load_jsonl(path: str | Path) -> list[dict[str, str]]:
    """Records `{"instruction", "response"}` or `{"text"}`, one JSON object per line.

    Raises:
        DataError: missing or empty file, or a malformed line (its number is in the message).
    """
    path = Path(path)
    if path.is_dir():
        raise DataError(f"data file {path} is a folder, not a .jsonl file")
    if not path.is_file():
        raise DataError(f"data file {path} does not exist")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as error:
        raise DataError(f"{path} is not UTF-8 text (byte {error.start}): a binary file, or another encoding "
                        "such as UTF-16; save it as UTF-8 JSON lines") from None
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise DataError(f"{path}, line {number}: not valid JSON ({error.msg})") from None
        if not isinstance(record, dict):
            raise DataError(f"{path}, line {number}: expected a JSON object, got {type(record).__name__}")
        if {"instruction", "response"} <= record.keys():
            fields = ("instruction", "response")
        elif "text" in record:
            fields = ("text",)
        else:
            raise DataError(f"{path}, line {number}: needs keys 'instruction' and 'response', or 'text'; got {sorted(record)}")
        if not all(isinstance(record[f], str) and record[f].strip() for f in fields):
            raise DataError(f"{path}, line {number}: {' and '.join(fields)} must be non-empty strings")
        records.append({f: record[f] for f in fields})
    if not records:
        raise DataError(f"{path} is empty: no training record found")
    return records


def jsonl_examples(tokenizer, records: list[dict[str, str]], seq_len: int) -> list[Example]:
    """Instruction records are encoded with the prompt template; text records are packed."""
    from qlora_lab.model.packing import pack_texts

    examples = [encode_pair(tokenizer, r["instruction"], r["response"], seq_len) for r in records if "text" not in r]
    texts = [r["text"] for r in records if "text" in r]
    if texts:
        try:
            examples += [Example(w.tolist(), w.tolist()) for w in pack_texts(tokenizer, texts, seq_len)]
        except ValueError:  # shorter than one window: keep each text whole
            examples += [Example(ids, list(ids)) for ids in (
                tokenizer(t, add_special_tokens=True)["input_ids"][:seq_len] for t in texts)]
    return examples


# --- one entry point -----------------------------------------------------------------------

def split_holdout(items: list, fraction: float = 0.1) -> tuple[list, list]:
    """Deterministic split: every k-th item goes to validation (at least one each side)."""
    if len(items) < 2:
        raise DataError(f"need at least 2 examples to hold one out for validation, got {len(items)}")
    step = max(2, round(1 / fraction))
    val = items[::step]
    train = [x for i, x in enumerate(items) if i % step]
    return train, val


def check_source(source: str) -> None:
    """The data errors found without a tokenizer: an unknown source, a missing, unreadable or malformed file.

    Called before the model loads, so that these fail in a blink.
    """
    if source in DATA_SOURCES:
        return
    if source.endswith(".jsonl") or Path(source).exists():
        load_jsonl(source)
        return
    raise DataError(f"data={source!r}: use one of {DATA_SOURCES} or the path of a .jsonl file")


def build_examples(source: str, tokenizer, seq_len: int) -> tuple[list[Example], list[Example]]:
    """(train, validation) examples for 'domain', 'instructions', 'functions' or a JSONL path.

    Raises:
        DataError: the source gives no usable example.
    """
    if source == "domain":
        train, val = domain_examples(tokenizer, "domain_train", seq_len), domain_examples(tokenizer, "domain_validation", seq_len)
    elif source == "instructions":
        train = [encode_pair(tokenizer, p["instruction"], p["response"], seq_len) for p in instruction_pairs("domain_train")]
        val = [encode_pair(tokenizer, p["instruction"], p["response"], seq_len) for p in instruction_pairs("domain_validation")]
    elif source == "functions":  # validation: held-out problems (seed 1), not those pass@1 scores (seed 0)
        train = function_examples(tokenizer, "train", FUNCTIONS_TRAIN, seq_len)
        val = function_examples(tokenizer, "heldout", FUNCTIONS_VAL, seq_len, seed=1)
    elif source.endswith(".jsonl") or Path(source).exists():
        train, val = split_holdout(jsonl_examples(tokenizer, load_jsonl(source), seq_len))
    else:
        raise DataError(f"data={source!r}: use one of {DATA_SOURCES} or the path of a .jsonl file")
    n_examples = len(train)
    train = [e for e in train if any(l != IGNORE_INDEX for l in e.labels[1:])]
    if not train or not val:
        why = (f": in all {n_examples} examples the prompt fills the seq_len={seq_len} tokens and leaves no "
               "response token to learn; raise seq_len or shorten the prompts") if n_examples and not train else ""
        raise DataError(f"data={source!r} gave {len(train)} training and {len(val)} validation examples{why}")
    if not any(l != IGNORE_INDEX for e in val for l in e.labels[1:]):
        raise DataError(f"data={source!r}: no validation example has a response token within seq_len={seq_len}, "
                        "so no validation loss can be measured; raise seq_len or shorten the prompts")
    return train, val


def collate(examples: list[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a list of examples into (batch, longest) tensors for a causal LM."""
    longest = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), longest), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), longest), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(examples), longest), dtype=torch.long)
    for row, e in enumerate(examples):
        n = len(e.input_ids)
        ids[row, :n] = torch.tensor(e.input_ids)
        labels[row, :n] = torch.tensor(e.labels)
        mask[row, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}
