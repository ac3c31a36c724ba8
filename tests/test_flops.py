"""FLOP formulas against FlopCounterMode counts, and the timed matmul."""

import pytest
import torch

from qlora_lab.sizing import flops


def tiny_llama(n_layers: int = 2, hidden: int = 64, heads: int = 4, kv_heads: int = 4):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=256, hidden_size=hidden, intermediate_size=4 * hidden,
                                        num_hidden_layers=n_layers, num_attention_heads=heads,
                                        num_key_value_heads=kv_heads))


@pytest.mark.parametrize("seq_len", [16, 64])
@pytest.mark.parametrize("kv_heads", [4, 2], ids=["mha", "gqa"])
def test_forward_count_equals_exact_formula(seq_len, kv_heads):
    model = tiny_llama(kv_heads=kv_heads)
    measured = flops.decoder_forward_flops(model, seq_len)
    cfg = model.config
    expected = flops.exact_decoder_forward_flops(flops.matmul_params(model), cfg.num_hidden_layers, cfg.hidden_size, seq_len)
    assert measured == pytest.approx(expected, rel=1e-9)  # only matmuls are counted: exact


@pytest.mark.parametrize("seq_len", [16, 64])
def test_training_count_is_palm_6n_plus_12lhqt(seq_len):
    model = tiny_llama()
    cfg = model.config
    n = flops.matmul_params(model)
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    measured = flops.decoder_training_flops(model, seq_len)
    per_token = flops.training_flops_per_token(n, cfg.num_hidden_layers, cfg.num_attention_heads, head_dim, seq_len)
    assert measured == pytest.approx(per_token * seq_len, rel=1e-9)


def test_kaplan_attention_term_is_the_causal_half():
    # Kaplan's 2·L·T·d per token is half the 4·L·T·d that a full T×T attention computes.
    n, layers, ctx, d = 1e6, 4, 128, 64
    full = flops.exact_decoder_forward_flops(n, layers, d, ctx) / ctx
    kaplan = flops.forward_flops_per_token(n, layers, ctx, d)
    assert full - 2 * n == pytest.approx(2 * (kaplan - 2 * n))


def test_lora_training_is_about_4n():
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(tiny_llama(hidden=128), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    base = model.get_base_model()
    n = flops.matmul_params(base)
    seq_len = 8  # short: the attention term stays negligible next to N
    measured = flops.decoder_training_flops(base, seq_len) / seq_len
    # 4N minus the input gradient of the first layer's projections, plus tiny adapters: within 15 %.
    assert measured == pytest.approx(flops.lora_training_flops_per_token(n), rel=0.15)
    assert measured < 0.75 * flops.training_flops_per_token(n)


def test_gpt3_is_350_gflops_per_token():
    """Brown et al. 2020, table 2.1: 96 layers, d = 12288, 96 heads of 128, GPT-2's 50,257 tokens.

    The parameter count from the shape by hand: per layer 4d² (attention) + 3·d·(8d/3) (SwiGLU)
    + 2d (norms); untied embeddings and lm_head 2·V·d; the final norm d.
    """
    result = flops.gpt3_flops_per_token()
    d, layers, vocab = 12288, 96, 50257
    by_hand = layers * (4 * d * d + 3 * d * 32768 + 2 * d) + 2 * vocab * d + d
    assert result["n_params"] == by_hand == pytest.approx(175e9, rel=0.01)
    # the lm_head multiplies, the embedding table and the norms do not
    assert result["formula_2n"] == 2 * (by_hand - vocab * d - (2 * layers + 1) * d)
    assert result["measured_flops"] == pytest.approx(2 * flops.GPT3_N_PARAMS, rel=0.01)
    assert result["measured_flops"] == pytest.approx(result["formula_2n"], rel=1e-3)


def test_resnet50_is_4_1_gmacs():
    result = flops.resnet50_flops()
    assert result["n_params"] == pytest.approx(25.56e6, rel=0.001)  # torchvision's resnet50: 25,557,032
    assert result["macs"] / 1e9 == pytest.approx(flops.RESNET50_REFERENCE_GMACS, rel=0.01)
    assert result["flops"] == 2 * result["macs"]


@pytest.mark.parametrize("count", [flops.decoder_forward_flops, flops.decoder_training_flops])
def test_counts_feed_the_token_ids_on_the_model_device(count):
    """On the meta device (on every machine, never the default one): the ids a count feeds the
    model are made where its weights are, as a CUDA model needs; CPU-made ids would show here."""
    model = tiny_llama().to("meta")
    seen = []
    model.get_input_embeddings().register_forward_pre_hook(lambda module, args: seen.append(args[0].device.type))
    count(model, 8)
    assert seen == ["meta"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_time_matmul_reports_a_rate(dtype):
    timing = flops.time_matmul(64, dtype=dtype, device="cpu", repeats=3)
    assert timing.flops == 2 * 64**3
    assert timing.seconds > 0 and timing.flop_per_s == pytest.approx(timing.flops / timing.seconds)


def test_matvec_has_lower_arithmetic_intensity_than_matmul():
    decode = flops.time_matmul(1, 256, 256, device="cpu", repeats=1)
    prefill = flops.time_matmul(256, 256, 256, device="cpu", repeats=1)
    assert decode.arithmetic_intensity < 1 < 40 < prefill.arithmetic_intensity


@pytest.mark.parametrize("bad", [dict(m=0), dict(m=4, repeats=0)])
def test_time_matmul_rejects_bad_sizes(bad):
    with pytest.raises(ValueError):
        flops.time_matmul(**bad, device="cpu")


@pytest.mark.parametrize("value, text", [(2e9, "2 GFLOPs"), (3.5e14, "350 TFLOPs"), (12, "12 FLOPs"),
                                         (1e15, "1 PFLOPs"), (1e12, "1 TFLOPs"), (1e9, "1 GFLOPs"), (1e6, "1 MFLOPs"),
                                         (1e3, "1 kFLOPs"), (999.0, "999 FLOPs"), (-2.5e6, "−2,5 MFLOPs"),
                                         (1.2345e9, "1,23 GFLOPs"), (8.18e9, "8,18 GFLOPs"),
                                         # rounding to 3 digits carries into the next prefix: 999.5e9 = 1.00e12
                                         (999.5e9, "1 TFLOPs"), (999.4e9, "999 GFLOPs"), (999.5, "1 kFLOPs"),
                                         # below 1, fixed-point digits, never "1.5e-05" cut to "0"
                                         (1.5e-5, "0,000015 FLOPs"), (0.123456, "0,123 FLOPs"), (0.0, "0 FLOPs"),
                                         (1.5e20, "150\u202f000 PFLOPs")])
def test_human(value, text):
    assert flops.human(value) == text


def test_forward_flops_context_terms_default_to_zero():
    """Without n_layer, n_ctx or d_model the attention term vanishes: 2N only (Kaplan table 1)."""
    n = 7e9
    assert flops.forward_flops_per_token(n) == 2 * n
    assert flops.forward_flops_per_token(n, n_ctx=2048, d_model=4096) == 2 * n  # no layers
    assert flops.forward_flops_per_token(n, n_layer=32, d_model=4096) == 2 * n  # no context
    assert flops.forward_flops_per_token(n, n_layer=32, n_ctx=2048) == 2 * n  # no width
    assert flops.forward_flops_per_token(n, 32, 2048, 4096) == 2 * n + 2 * 32 * 2048 * 4096


def test_plot_draws_each_column_of_the_rows_under_its_formula():
    """Chapter 6's figure: one curve per column of context_length_rows, on the rows' T, the
    legend naming each curve by its formula, no warning printed; measurements as points, the formulas as lines
    told apart by their dash pattern (readable in black and white), on a log y axis."""
    import warnings

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = flops.context_length_rows(tiny_llama(), [4, 16, 64])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a warning would be printed under the chapter's figure
        fig = flops.plot_flops_per_token(rows)
    try:
        (ax,) = fig.axes
        named = {"measured": "FlopCounterMode", "exact": "2N + 4·L·T·d", "kaplan": "2N + 2·L·T·d",
                 "guide": "2·T²·d"}
        lines = {}
        for column, formula in named.items():
            (lines[column],) = [line for line in ax.get_lines() if formula in line.get_label()]
            assert list(lines[column].get_xdata()) == [r["T"] for r in rows], column
            assert list(lines[column].get_ydata()) == [r[column] for r in rows], column
        assert len(ax.get_lines()) == len(named)
        legend = [text.get_text() for text in ax.get_legend().get_texts()]
        assert legend == [line.get_label() for line in ax.get_lines()]
        assert lines["measured"].get_linestyle() == "None" and lines["measured"].get_marker() != "None"
        formulas = [lines[column] for column in ("exact", "kaplan", "guide")]
        assert all(line.get_marker() == "None" for line in formulas)
        assert len({line.get_linestyle() for line in formulas} - {"None"}) == 3
        assert ax.get_yscale() == "log"
        assert "T" in ax.get_xlabel().split() and ax.get_ylabel() and ax.get_title()
    finally:
        plt.close(fig)
