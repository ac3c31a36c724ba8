"""Tests for qlora_lab.model.quantized and qlora_lab.model.calibration: every format of the quality table.

A tiny random Llama (2 layers, hidden 64) with the embedded tokenizer keeps each format to
a fraction of a second; the real embedded model is scored by benchmarks/quality_table.py
and, for a few rows, live in chapter 11.
"""

import math

import pytest
import torch

from qlora_lab.backends import import_bnb
from qlora_lab.model.calibration import calibration_windows, input_magnitudes, linear_layers, quantize_sequentially
from qlora_lab.model.models import load_model
from qlora_lab.model.quantized import FORMATS, load_quantized
from qlora_lab.model.validation import evaluate_texts
from qlora_lab.paths import EMBEDDED_MODEL_DIR
from qlora_lab.quant.gptq import gptq_quantize, rtn_quantize
from qlora_lab.quant.llm_int8 import int8_matmul
from qlora_lab.quant.nf4 import dequantize_4bit, quantize_4bit

TEXT = "def add(a, b):\n    return a + b\n\n\nclass Point:\n    x: int = 0\n"


pytestmark = pytest.mark.usefixtures("eager_single_thread")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A random 2-layer Llama saved with the embedded tokenizer: every format in a blink."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(str(EMBEDDED_MODEL_DIR))
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
                         tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=3)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny-llama")
    LlamaForCausalLM(config).to(torch.bfloat16).save_pretrained(path)
    tokenizer.save_pretrained(path)
    windows = calibration_windows(tokenizer, n_windows=4, seq_len=64, n_files=6)
    return path, windows


@pytest.mark.parametrize("name", list(FORMATS))
def test_every_format_loads_and_scores(tiny_model, name):
    path, windows = tiny_model
    model, tokenizer = load_quantized(name, model=path, calibration=windows)
    report = evaluate_texts(model, tokenizer, [TEXT], seq_len=64)
    # A random model predicts ~uniformly over 8192 tokens: about ln(8192) = 9.0 nats per token.
    assert math.isfinite(report.bits_per_byte) and abs(report.nats_per_token - math.log(8192)) < 1.0


def test_nf4_and_fp4_weights_equal_our_dequantization(tiny_model):
    path, _ = tiny_model
    bnb = import_bnb()
    original, _ = load_model(path, quantization="none", device="cpu")
    for name, quant_type, nested in (("nf4", "nf4", False), ("nf4-dq", "nf4", True), ("fp4", "fp4", False)):
        model, _ = load_quantized(name, model=path)
        for layer_name, layer in linear_layers(model.model.layers[1]).items():
            assert isinstance(layer, bnb.nn.Linear4bit) and layer.weight.quant_state.nested == nested
            library = bnb.functional.dequantize_4bit(layer.weight.data, layer.weight.quant_state)
            weight = original.model.layers[1].get_submodule(layer_name).weight.data
            ours = dequantize_4bit(*quantize_4bit(weight, quant_type=quant_type, blocksize=64, double_quant=nested))
            assert torch.equal(library, ours), (name, layer_name)


def test_llm_int8_layers_are_bitsandbytes_and_equal_ours(tiny_model):
    path, _ = tiny_model
    original, _ = load_model(path, quantization="none", device="cpu")
    model, _ = load_quantized("llm-int8", model=path)
    layer = model.model.layers[0].mlp.down_proj
    assert type(layer).__name__ == "Linear8bitLt" and layer.state.threshold == 6.0
    x = torch.randn(3, 7, 128).to(torch.bfloat16)
    x[..., 11] = 9.0  # one outlier feature
    with torch.no_grad():
        assert torch.equal(layer(x), int8_matmul(x, original.model.layers[0].mlp.down_proj.weight.data, 6.0))


def test_sequential_gptq_beats_round_to_nearest_layer_by_layer(tiny_model):
    path, windows = tiny_model
    errors = {}
    for method, quantizer in (("gptq", lambda w, x: gptq_quantize(w, x, bits=3, group_size=64)),
                              ("rtn", lambda w, x: rtn_quantize(w, bits=3, group_size=64))):
        model, _ = load_model(path, quantization="none", device="cpu")
        errors[method] = quantize_sequentially(model, windows, quantizer)
    assert len(errors["gptq"]) == 2 * 7  # q, k, v, o, gate, up, down in each of 2 layers
    wins = sum(errors["gptq"][name] < errors["rtn"][name] for name in errors["rtn"])
    assert wins == len(errors["rtn"])


def test_input_magnitudes_are_the_max_over_calibration_tokens(tiny_model):
    path, windows = tiny_model
    model, _ = load_model(path, quantization="none", device="cpu")
    magnitudes = input_magnitudes(model, windows[:2])
    assert set(magnitudes) == {f"layers.{i}.{n}" for i in range(2) for n in linear_layers(model.model.layers[0])}
    # The input of q_proj is the first RMSNorm's output: recompute it from a hook-free forward.
    with torch.no_grad():
        hidden = model(input_ids=windows[:2], output_hidden_states=True).hidden_states[0]
        normed = model.model.layers[0].input_layernorm(hidden)
    expected = normed.float().abs().amax(dim=(0, 1))
    assert torch.allclose(magnitudes["layers.0.self_attn.q_proj"], expected)


def test_unknown_format():
    with pytest.raises(ValueError, match="gptq4"):
        load_quantized("int5")


def test_cli_eval_computes_a_row(tiny_model, capsys):
    import argparse
    import json

    from qlora_lab.cli import eval as eval_cli
    from qlora_lab.model.validation import evaluate_split

    parser = argparse.ArgumentParser()
    eval_cli.configure_parser(parser)
    assert set(parser._option_string_actions["--quantization"].choices) == set(FORMATS)
    path, _ = tiny_model
    args = parser.parse_args(["--model", str(path), "--quantization", "int3", "--split", "validation",
                              "--max-files", "1", "--seq-len", "64"])
    assert eval_cli.run(args) == 0
    printed = json.loads(capsys.readouterr().out)
    model, tokenizer = load_quantized("int3", model=path)
    expected = evaluate_split(model, tokenizer, "validation", max_files=1, seq_len=64)
    assert printed["bits_per_byte"] == pytest.approx(expected.bits_per_byte, rel=1e-6)


def test_chapter_11_rows_describe_every_format_and_measure_against_bf16():
    from qlora_lab.course.quality import DESCRIPTIONS, paper_rows, quality_rows

    assert set(DESCRIPTIONS) == set(FORMATS)
    data = {"rows": [{"format": "none", "bits_per_byte": 2.0}, {"format": "nf4-dq", "bits_per_byte": 2.01},
                     {"format": "int4-absmax", "bits_per_byte": 2.03}]}
    rows = quality_rows(data)
    assert [r["delta"] for r in rows] == pytest.approx([0.0, 0.005, 0.015])
    paper = {r["format"]: r for r in paper_rows(rows)}
    assert paper["Int4"]["ours"] == pytest.approx(0.015) and paper["Int4"]["table2"] == 34.34
    assert paper["FP4 (E2M1)"]["ours"] is None  # no fp4 row given: nothing invented
