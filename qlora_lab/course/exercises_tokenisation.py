"""Self-check of chapter 05's exercises (tokenization: spaces, vocabulary size, word costs).

Expected values come from the course's tokenizer and from `build_bpe` trained on the
same 70 % of the course prose as the chapter, on first use. 05.3 has many right answers:
its checker tests the conditions instead of comparing with one value.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from qlora_lab.course.self_check import Checker, Verdict, exact, numeric, parts

SNIPPET = "def f(x):\n    if x:\n        return x\n    return 0\n"
BLANKS = {"Ġ", "Ċ"}  # how the byte-level BPE writes the space and the newline bytes
VOCAB_SIZES = (300, 4000)
FRENCH_MIN_TOKENS, ENGLISH_MAX_TOKENS = 6, 2


@lru_cache(maxsize=1)
def course_tokenizer():
    from qlora_lab.model.tokenization import load_tokenizer

    return load_tokenizer()


def snippet_counts() -> tuple[int, int]:
    """05.1: (all tokens, tokens made only of spaces and newlines) of SNIPPET, course's tokenizer."""
    tokens = course_tokenizer().tokenize(SNIPPET)
    return len(tokens), sum(1 for t in tokens if set(t) <= BLANKS)


@lru_cache(maxsize=None)
def held_out_chars_per_token(vocab_size: int) -> float:
    """05.2: characters per token, on the held-out prose, of a BPE learned on the other 70 %."""
    from qlora_lab.course.token_costs import french_split, n_tokens
    from qlora_lab.model.tokenization import build_bpe, wrap_for_transformers

    learn, held_out = french_split(0.7)
    tokenizer = wrap_for_transformers(build_bpe([learn], vocab_size=vocab_size))
    return len(held_out) / n_tokens(tokenizer, held_out)


def word_pair(answer: Any) -> Verdict:
    """05.3: a French word cut in > 5 tokens and an English word of the same length in ≤ 2."""
    from qlora_lab.course.token_costs import n_tokens

    if not isinstance(answer, dict) or set(answer) != {"fr", "en"} or \
            not all(isinstance(v, str) and v.strip() for v in answer.values()):
        return Verdict("faux", "la réponse attendue est un dictionnaire {\"fr\": mot, \"en\": mot}.")
    fr, en = answer["fr"].strip(), answer["en"].strip()
    tokenizer = course_tokenizer()
    problems = []
    if len(fr) != len(en):
        problems.append("les deux mots n'ont pas la même longueur")
    if n_tokens(tokenizer, fr) < FRENCH_MIN_TOKENS:
        problems.append("le mot français ne fait pas plus de cinq tokens")
    if n_tokens(tokenizer, en) > ENGLISH_MAX_TOKENS:
        problems.append("le mot anglais fait plus de deux tokens")
    if not problems:
        return Verdict("juste", "les deux conditions sont remplies.")
    return Verdict("partiel" if len(problems) == 1 else "faux", " ; ".join(problems).capitalize() + ".")


EXERCISES: dict[str, Checker] = {
    "05.1": parts({"tokens": exact(lambda: snippet_counts()[0]), "blancs": exact(lambda: snippet_counts()[1])}),
    "05.2": parts({v: numeric(lambda v=v: held_out_chars_per_token(v), rtol=0.01) for v in VOCAB_SIZES}),
    "05.3": word_pair,
}
