"""Token streams -> fixed-length windows for causal language modelling.

Pretraining and fine-tuning both see text as one long stream of documents,
``<s> doc1 </s> <s> doc2 </s> ...``, cut into windows of `seq_len` tokens: no padding
is wasted, and `LlamaForCausalLM(input_ids=w, labels=w)` shifts the labels itself.

    windows = pack_texts(tokenizer, texts, seq_len=256)   # (n_windows, 256) int64
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def tokenize_documents(tokenizer, texts: Sequence[str], add_eos: bool = True) -> list[list[int]]:
    """Token ids of each text, with the tokenizer's <s> and (optionally) a closing </s>."""
    encoded = tokenizer(list(texts), add_special_tokens=True, verbose=False)["input_ids"]
    if add_eos and tokenizer.eos_token_id is not None:
        encoded = [ids + [tokenizer.eos_token_id] for ids in encoded]
    return encoded


def concatenate(documents: Sequence[Sequence[int]]) -> torch.Tensor:
    """One flat int64 stream of all documents, in order."""
    if not documents:
        return torch.empty(0, dtype=torch.long)
    return torch.cat([torch.as_tensor(doc, dtype=torch.long) for doc in documents])


def pack_stream(stream: torch.Tensor, seq_len: int, offset: int = 0) -> torch.Tensor:
    """Cut a 1-D token stream into non-overlapping windows; the ragged tail is dropped.

    Args:
        stream: (n_tokens,) token ids.
        seq_len: tokens per window.
        offset: tokens skipped at the start; a different offset per epoch moves the window
            boundaries, so the model does not always see the same cuts.

    Returns:
        (n_windows, seq_len) int64 tensor.

    Raises:
        ValueError: seq_len < 2, offset out of range, or the stream holds no full window.
    """
    if seq_len < 2:
        raise ValueError(f"seq_len={seq_len} must be at least 2 (one input, one target)")
    if not 0 <= offset < max(len(stream), 1):
        raise ValueError(f"offset={offset} must be in [0, {len(stream)})")
    n_windows = (len(stream) - offset) // seq_len
    if n_windows == 0:
        raise ValueError(f"a stream of {len(stream)} tokens holds no window of seq_len={seq_len}")
    return stream[offset : offset + n_windows * seq_len].view(n_windows, seq_len).clone()


def pack_texts(tokenizer, texts: Sequence[str], seq_len: int, offset: int = 0) -> torch.Tensor:
    """Tokenize `texts`, join them with </s> and pack: (n_windows, seq_len) int64."""
    return pack_stream(concatenate(tokenize_documents(tokenizer, texts)), seq_len, offset)


def batches(windows: torch.Tensor, batch_size: int, generator: torch.Generator | None = None):
    """Yield (batch_size, seq_len) batches of `windows`, shuffled when a generator is given.

    The last, smaller batch is kept so that evaluation sees every window.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be positive")
    order = torch.randperm(len(windows), generator=generator) if generator is not None else torch.arange(len(windows))
    for start in range(0, len(windows), batch_size):
        yield windows[order[start : start + batch_size]]
