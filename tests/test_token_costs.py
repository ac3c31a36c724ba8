"""Token costs: French, English and code samples, counted with a real trained BPE."""

import pytest

from qlora_lab.course import token_costs
from qlora_lab.model.tokenization import build_bpe, wrap_for_transformers


@pytest.fixture(scope="module")
def english_bpe():
    """A small BPE trained on English prose only: English must then be the cheapest."""
    return wrap_for_transformers(build_bpe([token_costs.english_sample()], vocab_size=600))


def test_english_sample_is_english_prose():
    text = token_costs.english_sample()
    assert len(text) > 5_000 and " the " in text


def test_cost_table_counts_tokens(english_bpe):
    table = token_costs.cost_table(english_bpe, {"a": "hello hello hello", "b": ""})
    assert table["a"]["tokens"] == token_costs.n_tokens(english_bpe, "hello hello hello") > 0
    assert table["a"]["caractères/token"] == pytest.approx(17 / table["a"]["tokens"])
    assert table["b"]["tokens"] == 0


def test_french_costs_more_than_english_for_an_english_tokenizer(english_bpe):
    rows = token_costs.parallel_costs(english_bpe)
    assert sum(r["tokens_fr"] for r in rows) > 1.2 * sum(r["tokens_en"] for r in rows)


def test_bad_max_chars_is_a_clear_error():
    with pytest.raises(ValueError, match="max_chars"):
        token_costs.samples(max_chars=0)


def test_french_split_cuts_the_prose_at_a_cell_boundary():
    from qlora_lab.course.token_costs import french_split
    from qlora_lab.model.corpus import french_sample

    learn, held_out = french_split(0.7)
    assert learn + held_out == french_sample()
    assert held_out.startswith("\n\n") and 0.7 <= len(learn) / (len(learn) + len(held_out)) < 0.8
    with pytest.raises(ValueError, match="fraction"):
        french_split(1.0)
