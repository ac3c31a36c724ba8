"""What text costs in tokens: French vs English vs code, for any tokenizer.

A model's context window, its speed and an API's bill are counted in tokens, not in
words. A tokenizer trained mostly on English (or, here, on Python) cuts French into
more pieces, so the same idea costs more.

    from qlora_lab.course.token_costs import samples, cost_table
    cost_table(tokenizer, samples())
"""

from __future__ import annotations

import ast
from collections.abc import Mapping, Sequence

from qlora_lab.paths import PACKAGE_DIR

# The same sentences in French and in English, written for the course.
PARALLEL_SENTENCES: tuple[tuple[str, str], ...] = (
    ("Bonjour tout le monde", "Hello everyone"),
    ("La quantification réduit la mémoire occupée par les poids du modèle.",
     "Quantization reduces the memory taken by the model's weights."),
    ("Chaque bloc de soixante-quatre poids partage une constante d'échelle.",
     "Each block of sixty-four weights shares one scaling constant."),
    ("Les adaptateurs sont entraînés pendant que le modèle de base reste gelé.",
     "The adapters are trained while the base model stays frozen."),
    ("Un passage avant coûte environ deux opérations par paramètre et par token.",
     "A forward pass costs about two operations per parameter and per token."),
    ("Vérifiez toujours la perte de validation avant de conclure.",
     "Always check the validation loss before drawing conclusions."),
)


def english_sample() -> str:
    """English prose written by the course: the docstrings of the qlora_lab modules."""
    docs = []
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef)):
                doc = ast.get_docstring(node)
                if doc:
                    docs.append(doc)
    return "\n\n".join(docs)


def samples(max_chars: int = 30_000) -> dict[str, str]:
    """French prose (the notebooks), English prose (docstrings), Python code (stdlib validation).

    Each is cut to `max_chars` characters so that the three weigh the same.
    """
    from qlora_lab.model.corpus import french_sample, read_texts

    if max_chars <= 0:
        raise ValueError(f"max_chars must be positive, got {max_chars}")
    code = "\n\n".join(read_texts("validation"))
    return {"français": french_sample()[:max_chars], "anglais": english_sample()[:max_chars], "code Python": code[:max_chars]}


def french_split(fraction: float = 0.7) -> tuple[str, str]:
    """The course's French prose cut in two at a cell boundary: (to learn from, held out).

    A tokenizer must be scored on text it has not seen: on its own corpus it looks
    cheaper than it is. The held-out part is the end of the course.
    """
    from qlora_lab.model.corpus import french_sample

    if not 0 < fraction < 1:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    prose = french_sample()
    cut = prose.index("\n\n", int(fraction * len(prose)))
    return prose[:cut], prose[cut:]


def n_tokens(tokenizer, text: str) -> int:
    """Tokens of `text`, without the <s> the tokenizer adds in front."""
    return len(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])


def cost_table(tokenizer, texts: Mapping[str, str]) -> dict[str, dict[str, float]]:
    """Per sample: characters, tokens, characters per token and UTF-8 bytes per token."""
    table = {}
    for name, text in texts.items():
        tokens = n_tokens(tokenizer, text)
        table[name] = {
            "caractères": len(text),
            "tokens": tokens,
            "caractères/token": len(text) / max(tokens, 1),
            "octets/token": len(text.encode("utf-8")) / max(tokens, 1),
        }
    return table


def parallel_costs(tokenizer, pairs: Sequence[tuple[str, str]] = PARALLEL_SENTENCES) -> list[dict[str, object]]:
    """Tokens of each French sentence and of its English translation."""
    return [{"fr": fr, "en": en, "tokens_fr": n_tokens(tokenizer, fr), "tokens_en": n_tokens(tokenizer, en)}
            for fr, en in pairs]


def plot_chars_per_token(tables: Mapping[str, Mapping[str, Mapping[str, float]]]):
    """Grouped bars: characters per token of each sample, one colour per tokenizer."""
    from qlora_lab.course.viz import plot_grouped_bars

    groups = {sample: {tok: table[sample]["caractères/token"] for tok, table in tables.items()}
              for sample in next(iter(tables.values()))}
    return plot_grouped_bars(groups, "caractères par token (plus = moins cher)",
                             "Ce que coûte un texte en tokens", fmt="{:.2f}")
