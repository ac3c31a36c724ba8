"""Decoding speed: the bytes a step reads (closed form), the timing, and the measured bandwidth."""

import math

import pytest
import torch

from qlora_lab.hardware.bandwidth import measure_copy_bandwidth
from qlora_lab.model.llama_shapes import ModelShape
from qlora_lab.sizing.decoding import bandwidth_bound_tokens_per_s, decode_speed, random_llama, weight_bytes_per_token

TINY = ModelShape("tiny", hidden=128, intermediate=256, n_layers=2, n_heads=4, n_kv_heads=2, vocab=512)


def test_bf16_bytes_per_token_are_two_bytes_per_weight_read():
    model = random_llama(TINY)
    norms = (2 * TINY.n_layers + 1) * TINY.hidden
    head = TINY.vocab * TINY.hidden  # untied: the input embedding reads one row per token, not counted
    assert weight_bytes_per_token(model) == 2 * (TINY.linear_params() + norms + head)


def test_nf4_bytes_per_token_are_half_a_byte_plus_the_constants():
    model = random_llama(TINY, "nf4")
    layer_sizes = [(TINY.hidden, TINY.hidden)] * 2 + [(TINY.hidden, TINY.hidden // 2)] * 2 + [(TINY.hidden, TINY.intermediate)] * 3
    # per layer: 4 bits per weight, one uint8 absmax per block of 64 (DQ), one fp32 absmax per 256 blocks
    per_layer = [d_in * d_out // 2 + d_in * d_out // 64 + 4 * math.ceil(d_in * d_out / 64 / 256) for d_in, d_out in layer_sizes]
    others = 2 * ((2 * TINY.n_layers + 1) * TINY.hidden + TINY.vocab * TINY.hidden)  # norms + lm_head, bf16
    assert weight_bytes_per_token(model) == TINY.n_layers * sum(per_layer) + others


def test_decode_speed_counts_every_sequence_of_the_batch():
    model = random_llama(TINY)
    one = decode_speed(model, 1, new_tokens=4, repeats=1)
    four = decode_speed(model, 4, new_tokens=4, repeats=1)
    assert one["tokens_per_s"] == pytest.approx(1 / one["s_per_step"])
    assert four["tokens_per_s"] == pytest.approx(4 / four["s_per_step"])
    with pytest.raises(ValueError, match="new_tokens"):
        decode_speed(model, 1, new_tokens=1)


def test_copy_bandwidth_is_a_plausible_memory_speed_and_sets_the_ceiling():
    bandwidth = measure_copy_bandwidth(64 * 2**20, repeats=3)
    assert 1e8 < bandwidth < 1e13  # 0.1 GB/s .. 10 TB/s: any real memory
    assert bandwidth_bound_tokens_per_s(2e9, bandwidth) == pytest.approx(bandwidth / 2e9)
    with pytest.raises(ValueError):
        measure_copy_bandwidth(0)
