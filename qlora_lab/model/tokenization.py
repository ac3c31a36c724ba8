"""A byte-level BPE tokenizer for the mini CodeLlama, trained on the stdlib train split.

CodeLlama uses a 32k SentencePiece BPE; a model of a few million parameters cannot
afford that many embedding rows, so the course trains its own, smaller BPE (GPT-2-style
byte-level: every byte sequence is encodable, no `<unk>` at run time) with the
Hugging Face `tokenizers` library, and saves it so that plain
`transformers.AutoTokenizer.from_pretrained(path)` loads it.

    python -c "from qlora_lab.model.tokenization import train_tokenizer; train_tokenizer('runs/tok')"
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from qlora_lab.paths import EMBEDDED_MODEL_DIR

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

DEFAULT_VOCAB_SIZE = 8192  # 8192 beats 4096 in bits/byte (fewer, longer tokens) at ~1M extra params
BOS, EOS, UNK, PAD = "<s>", "</s>", "<unk>", "<pad>"
SPECIAL_TOKENS = [UNK, BOS, EOS, PAD]  # ids 0..3, in this order
DEFAULT_MODEL_MAX_LENGTH = 512


def build_bpe(texts: Iterable[str], vocab_size: int = DEFAULT_VOCAB_SIZE) -> "Tokenizer":  # noqa: F821
    """Train a raw `tokenizers.Tokenizer` (byte-level BPE) on `texts`; deterministic.

    Raises:
        ValueError: vocab_size too small to hold the 256 bytes and the special tokens.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    minimum = 256 + len(SPECIAL_TOKENS)
    if vocab_size < minimum:
        raise ValueError(f"vocab_size={vocab_size} is below the {minimum} byte-level minimum")
    tokenizer = Tokenizer(models.BPE(unk_token=UNK))
    # Byte-level: text -> bytes mapped to printable characters; runs of spaces stay together,
    # so Python's indentation becomes a handful of tokens.
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    # Llama convention: every encoded text starts with <s>.
    bos_id = tokenizer.token_to_id(BOS)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
    )
    return tokenizer


def wrap_for_transformers(tokenizer, model_max_length: int = DEFAULT_MODEL_MAX_LENGTH) -> "PreTrainedTokenizerFast":
    """A `transformers` tokenizer around a raw `tokenizers.Tokenizer`, with its special tokens."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=UNK,
        pad_token=PAD,
        model_max_length=model_max_length,
        clean_up_tokenization_spaces=False,
    )


def train_tokenizer(
    output_dir: str | Path | None = None,
    vocab_size: int = DEFAULT_VOCAB_SIZE,
    texts: Iterable[str] | None = None,
    model_max_length: int = DEFAULT_MODEL_MAX_LENGTH,
) -> "PreTrainedTokenizerFast":
    """Train the course tokenizer (default: on the stdlib train split) and optionally save it.

    Args:
        output_dir: where to write tokenizer.json, tokenizer_config.json and
            special_tokens_map.json; None keeps it in memory.
        vocab_size: BPE vocabulary size, special tokens included.
        texts: training texts; None means `corpus.read_texts("train")`.
        model_max_length: the context length recorded in tokenizer_config.json.
    """
    if texts is None:
        from qlora_lab.model.corpus import read_texts

        texts = read_texts("train")
    tokenizer = wrap_for_transformers(build_bpe(texts, vocab_size), model_max_length)
    if output_dir is not None:
        save_tokenizer(tokenizer, output_dir)
    return tokenizer


def save_tokenizer(tokenizer: "PreTrainedTokenizerFast", output_dir: str | Path) -> None:
    """Save in the Hugging Face layout, special_tokens_map.json included (older loaders read it)."""
    tokenizer.save_pretrained(str(output_dir))
    special = Path(output_dir) / "special_tokens_map.json"
    special.write_text(json.dumps(tokenizer.special_tokens_map, indent=2) + "\n", encoding="utf-8")


def load_tokenizer(path: str | Path | None = None) -> "PreTrainedTokenizerFast":
    """Load a saved tokenizer (default: the embedded model's) with `AutoTokenizer`.

    Raises:
        FileNotFoundError: `path` has no tokenizer.json.
    """
    from transformers import AutoTokenizer

    path = Path(path) if path is not None else EMBEDDED_MODEL_DIR
    if not (path / "tokenizer.json").is_file():
        raise FileNotFoundError(f"no tokenizer.json in {path}: train one with train_tokenizer({str(path)!r})")
    return AutoTokenizer.from_pretrained(str(path))


def bytes_per_token(tokenizer, texts: Iterable[str]) -> float:
    """Average UTF-8 bytes per token (without <s>): how much text one prediction covers."""
    n_bytes = n_tokens = 0
    for text in texts:
        n_bytes += len(text.encode("utf-8"))
        n_tokens += len(tokenizer(text, add_special_tokens=False)["input_ids"])
    return n_bytes / max(n_tokens, 1)
