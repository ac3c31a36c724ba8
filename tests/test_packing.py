"""Packing token streams into fixed-length causal-LM windows."""

import pytest
import torch

from qlora_lab.model.packing import batches, concatenate, pack_stream, pack_texts, tokenize_documents
from qlora_lab.model.tokenization import load_tokenizer


@pytest.mark.parametrize("n_tokens, seq_len, offset", [(100, 10, 0), (105, 10, 3), (64, 64, 0), (1000, 7, 6)])
def test_pack_stream_keeps_order_and_drops_the_tail(n_tokens, seq_len, offset):
    stream = torch.arange(n_tokens)
    windows = pack_stream(stream, seq_len, offset)
    assert windows.shape == ((n_tokens - offset) // seq_len, seq_len)
    assert torch.equal(windows.flatten(), stream[offset : offset + windows.numel()])


@pytest.mark.parametrize("seq_len, offset, match", [(1, 0, "seq_len"), (10, 50, "offset"), (10, -1, "offset"), (60, 0, "no window")])
def test_pack_stream_bad_arguments_are_named(seq_len, offset, match):
    with pytest.raises(ValueError, match=match):
        pack_stream(torch.arange(50), seq_len, offset)


def test_documents_are_framed_by_bos_and_eos():
    tokenizer = load_tokenizer()
    docs = tokenize_documents(tokenizer, ["x = 1\n", "y = 2\n"])
    for doc in docs:
        assert doc[0] == tokenizer.bos_token_id and doc[-1] == tokenizer.eos_token_id
    stream = concatenate(docs)
    assert stream.tolist() == docs[0] + docs[1]


def test_pack_texts_windows_decode_back_to_the_texts():
    tokenizer = load_tokenizer()
    texts = ["def f(x):\n    return x * 2\n"] * 20
    windows = pack_texts(tokenizer, texts, seq_len=16)
    assert windows.dtype == torch.long and windows.shape[1] == 16
    decoded = tokenizer.decode(windows.flatten(), skip_special_tokens=True)
    assert decoded in "".join(texts)


@pytest.mark.parametrize("batch_size", [1, 3, 8])
def test_batches_cover_every_window_once(batch_size):
    windows = torch.arange(40).view(10, 4)
    shuffled = list(batches(windows, batch_size, torch.Generator().manual_seed(0)))
    assert sorted(torch.cat(shuffled)[:, 0].tolist()) == list(range(0, 40, 4))
    assert torch.equal(torch.cat(list(batches(windows, batch_size))), windows)
