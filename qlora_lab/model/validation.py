"""How well a causal LM predicts held-out text: nats per token and bits per byte.

Nats per token depend on the tokenizer (a larger vocabulary makes fewer, harder
predictions); bits per byte do not, so they compare models with different tokenizers:

    bits/byte = (sum of -ln p(token) over the text) / ln 2 / (UTF-8 bytes of the text)

Each text is scored on its own, as ``<s> text``: every text token is predicted exactly
once, from up to `seq_len - 1` tokens of context (windows overlap by
`seq_len - stride` tokens; `stride = seq_len - 1` is the cheapest exact setting).

    report = evaluate_texts(model, tokenizer, corpus.read_texts("validation"))
    report.bits_per_byte
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class LossReport:
    """Summed loss over a set of texts; the ratios are properties."""

    total_nats: float  # sum of -ln p over every scored token
    n_tokens: int  # scored tokens (the text tokens; <s> is context, never a target)
    n_bytes: int  # UTF-8 bytes of the texts

    @property
    def nats_per_token(self) -> float:
        return self.total_nats / self.n_tokens

    @property
    def bits_per_byte(self) -> float:
        return self.total_nats / math.log(2) / self.n_bytes

    @property
    def perplexity(self) -> float:
        return math.exp(self.nats_per_token)

    def as_dict(self) -> dict[str, float]:
        return {"nats_per_token": self.nats_per_token, "bits_per_byte": self.bits_per_byte,
                "perplexity": self.perplexity, "n_tokens": self.n_tokens, "n_bytes": self.n_bytes}


def scoring_windows(n_ids: int, seq_len: int, stride: int) -> Iterator[tuple[int, int, int]]:
    """(begin, end, first_scored) for windows over a sequence of `n_ids` ids.

    Positions first_scored..end-1 are scored in window ids[begin:end]; over all windows
    each position 1..n_ids-1 is scored exactly once (position 0 is <s>).
    """
    if not 1 <= stride <= seq_len - 1:
        raise ValueError(f"stride={stride} must be in [1, seq_len - 1 = {seq_len - 1}]")
    begin, scored_upto = 0, 1
    while scored_upto < n_ids:
        end = min(begin + seq_len, n_ids)
        yield begin, end, scored_upto
        scored_upto = end
        begin += stride


def _model_device(model) -> torch.device:
    return next(model.parameters()).device


def _score_batch(model, rows: list[tuple[list[int], int]], pad_id: int) -> float:
    """Summed -ln p of the scored positions of a batch of (window ids, n_context) rows."""
    device = _model_device(model)
    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    # targets[i, j] is the token predicted at position j (= input j + 1); -100 where unscored.
    targets = torch.full((len(rows), width), -100, dtype=torch.long)
    for i, (ids, first) in enumerate(rows):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        attention[i, : len(ids)] = 1
        targets[i, first - 1 : len(ids) - 1] = torch.tensor(ids[first:])
    logits = model(input_ids=input_ids.to(device), attention_mask=attention.to(device)).logits
    nats = torch.nn.functional.cross_entropy(
        logits.float().flatten(0, 1), targets.to(device).flatten(), ignore_index=-100, reduction="sum"
    )
    return float(nats)


def evaluate_texts(
    model,
    tokenizer,
    texts: Sequence[str],
    seq_len: int | None = None,
    stride: int | None = None,
    batch_size: int = 8,
) -> LossReport:
    """Validation loss of `model` on `texts` (eval mode, no gradients).

    Args:
        seq_len: window length; default the model's `max_position_embeddings`.
        stride: window step; default seq_len - 1 (non-overlapping, every token scored once).
            A smaller stride gives each scored token more context, at more compute.
        batch_size: windows per forward pass.

    Raises:
        ValueError: no text, or a bad seq_len/stride/batch_size.
    """
    if not texts:
        raise ValueError("texts is empty: nothing to evaluate")
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be positive")
    seq_len = seq_len or model.config.max_position_embeddings
    stride = stride or seq_len - 1
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    encoded = tokenizer(list(texts), add_special_tokens=False, verbose=False)["input_ids"]
    rows = []
    n_tokens = 0
    for ids in encoded:
        ids = bos + ids if bos else ids
        n_tokens += len(ids) - 1
        rows.extend((ids[b:e], first - b) for b, e, first in scoring_windows(len(ids), seq_len, stride))
    rows.sort(key=lambda row: len(row[0]))  # similar lengths together: less padding
    was_training = model.training
    model.eval()
    total = 0.0
    try:
        with torch.no_grad():
            for start in range(0, len(rows), batch_size):
                total += _score_batch(model, rows[start : start + batch_size], pad_id)
    finally:
        model.train(was_training)
    n_bytes = sum(len(text.encode("utf-8")) for text in texts)
    return LossReport(total_nats=total, n_tokens=n_tokens, n_bytes=n_bytes)


def evaluate_split(model, tokenizer, split: str = "validation", max_files: int | None = None, **kwargs) -> LossReport:
    """`evaluate_texts` on a corpus split; `max_files` keeps its first files (a fixed subset)."""
    from qlora_lab.model.corpus import read_texts

    texts = read_texts(split)
    return evaluate_texts(model, tokenizer, texts[:max_files] if max_files else texts, **kwargs)
