"""qlora_lab.sizing.flops against hand computations: closed-form parameter counts, a fake clock,
one matmul's FLOPs, and the context-length study. tests/test_flops.py compares the formulas with
FlopCounterMode; these tests pin what it leaves loose (exact counts, defaults, side effects).

transformers and PEFT are imported at module level on purpose: mutmut's fork server preloads
the test modules, so each mutant's process starts with them instead of importing them again.
"""

import types

import peft  # noqa: F401  (preloaded for mutmut's fork server, see the docstring)
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from qlora_lab.sizing import flops


def tiny_llama(attn_implementation: str = "sdpa") -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, attn_implementation=attn_implementation)
    return LlamaForCausalLM(config)


def test_training_flops_context_terms_default_to_zero():
    """PaLM's 12·L·H·Q·T vanishes when any of its four factors is left out: 6N only."""
    n = 7e9
    assert flops.training_flops_per_token(n) == 6 * n
    assert flops.training_flops_per_token(n, n_heads=32, head_dim=128, seq_len=2048) == 6 * n  # no layers
    assert flops.training_flops_per_token(n, n_layer=32, head_dim=128, seq_len=2048) == 6 * n  # no heads
    assert flops.training_flops_per_token(n, n_layer=32, n_heads=32, seq_len=2048) == 6 * n  # no head size
    assert flops.training_flops_per_token(n, n_layer=32, n_heads=32, head_dim=128) == 6 * n  # no context
    assert flops.training_flops_per_token(n, 32, 32, 128, 2048) == 6 * n + 12 * 32 * 32 * 128 * 2048


def test_one_matmul_is_2mkn_flops_under_the_mm_op():
    a, b = torch.ones(3, 5), torch.ones(5, 7)
    total, per_op = flops.count_flops(lambda: a @ b)
    assert total == 2 * 3 * 5 * 7 and per_op == {"mm": 2 * 3 * 5 * 7}


def test_counting_prints_nothing(capsys):
    flops.count_flops(lambda: torch.ones(4, 4) @ torch.ones(4, 4))
    assert capsys.readouterr().out == ""


def test_matmul_params_counts_linear_and_conv_weights_only():
    model = torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.Linear(4, 6), torch.nn.Conv1d(6, 3, 2),
                                torch.nn.Conv2d(3, 5, 3), torch.nn.LayerNorm(5))
    assert flops.matmul_params(model) == 4 * 6 + 6 * 3 * 2 + 3 * 5 * 3 * 3  # no embedding, bias or norm


@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
@pytest.mark.parametrize("count", ["forward", "training"])
def test_counting_leaves_the_model_as_it_found_it(attn_implementation, count):
    model = tiny_llama(attn_implementation)
    if count == "forward":
        flops.decoder_forward_flops(model, 8)
    else:
        flops.decoder_training_flops(model, 8)
    assert model.config._attn_implementation == attn_implementation
    assert all(p.grad is None for p in model.parameters())  # no gradient memory left behind


@pytest.mark.parametrize("batch", [1, 3])
def test_a_batch_costs_batch_times_one_sequence(batch):
    """Every sequence of a batch is computed: the exact formula times the batch."""
    model = tiny_llama()
    n, cfg = flops.matmul_params(model), model.config
    one = flops.exact_decoder_forward_flops(n, cfg.num_hidden_layers, cfg.hidden_size, 8)
    assert flops.decoder_forward_flops(model, 8, batch=batch) == batch * one
    per_token = flops.training_flops_per_token(n, cfg.num_hidden_layers, cfg.num_attention_heads,
                                               cfg.hidden_size // cfg.num_attention_heads, 8)
    assert flops.decoder_training_flops(model, 8, batch=batch) == pytest.approx(batch * 8 * per_token, rel=1e-9)


def test_resnet50_counts_by_hand():
    """He et al. 2016 table 1 / torchvision's resnet50: 25,557,032 parameters, 4.09 GMACs at 224².

    Conv MACs by hand: out_channels × in_channels × k² × output pixels, stage by stage.
    """
    result = flops.resnet50_flops()
    assert result["n_params"] == 25_557_032  # torchvision.models.resnet50().parameters(), documented
    macs = 64 * 3 * 49 * 112**2  # stem 7×7/2, then a 3×3/2 max-pool: 56²
    in_ch, in_size = 64, 56
    for width, blocks, size in [(64, 3, 56), (128, 4, 28), (256, 6, 14), (512, 3, 7)]:
        for i in range(blocks):
            macs += width * in_ch * in_size**2  # 1×1 reduce, before the stride (v1.5)
            macs += width * width * 9 * size**2 + 4 * width * width * size**2  # 3×3 (strided), 1×1 expand
            if i == 0:
                macs += 4 * width * in_ch * size**2  # projection shortcut, 1×1 strided
            in_ch, in_size = 4 * width, size
    macs += 2048 * 1000  # classifier
    assert result["macs"] == macs and result["flops"] == 2 * macs
    assert result["per_op"] == {"convolution": 2 * (macs - 2048 * 1000), "addmm": 2 * 2048 * 1000}


def test_resnet50_has_the_layers_of_transformers_resnet50():
    """transformers' ResNet (microsoft/resnet-50's architecture, v1.5, default ResNetConfig) as the
    outside reference: the same convolutions, batch norms, max-pool and classifier, each with the
    same kernel, stride, padding and bias (compared as multisets: the two register the projection
    shortcut and the body in a different order). The pooling's output size is written differently."""
    from collections import Counter

    from transformers import ResNetConfig, ResNetForImageClassification

    kinds = (torch.nn.Conv2d, torch.nn.BatchNorm2d, torch.nn.MaxPool2d, torch.nn.Linear)
    with torch.device("meta"):
        reference, ours = ResNetForImageClassification(ResNetConfig(num_labels=1000)), flops.resnet50()
    layers = [Counter(repr(m) for m in model.modules() if isinstance(m, kinds)) for model in (reference, ours)]
    assert layers[0] == layers[1] and sum(layers[1].values()) == 53 + 53 + 1 + 1  # 53 convs, 53 norms


def test_a_bottleneck_without_a_stride_keeps_the_image_and_the_identity_shortcut():
    """He et al. §3.3: every block after a stage's first keeps the size and adds its input unchanged."""
    block = flops.Bottleneck(16, 4).eval()
    x = torch.randn(1, 16, 5, 5)
    assert isinstance(block.shortcut, torch.nn.Identity)
    with torch.no_grad():
        assert block(x).shape == x.shape


@pytest.mark.parametrize("in_ch, width, stride", [(8, 2, 1), (8, 4, 2), (8, 4, 1)])
def test_bottleneck_computes_he_et_al_figure_5(in_ch, width, stride):
    """relu(bn(conv1x1(relu(bn(conv3x3(relu(bn(conv1x1 x))))))) + shortcut(x)), written with torch's functions."""
    import torch.nn.functional as F

    torch.manual_seed(0)
    block = flops.Bottleneck(in_ch, width, stride).eval()
    for bn in (m for m in block.modules() if isinstance(m, torch.nn.BatchNorm2d)):  # non-trivial statistics
        bn.running_mean.uniform_(-1, 1), bn.running_var.uniform_(0.5, 2), bn.weight.data.uniform_(0.5, 2)
    x = torch.randn(2, in_ch, 6, 6)

    def conv_bn(t, conv, bn):
        t = F.conv2d(t, conv.weight, stride=conv.stride, padding=conv.padding)
        return F.batch_norm(t, bn.running_mean, bn.running_var, bn.weight, bn.bias, eps=bn.eps)

    convs = [m for m in block.body if isinstance(m, torch.nn.Conv2d)]
    bns = [m for m in block.body if isinstance(m, torch.nn.BatchNorm2d)]
    assert [c.kernel_size for c in convs] == [(1, 1), (3, 3), (1, 1)] and convs[1].stride == (stride, stride)
    y = F.relu(conv_bn(x, convs[0], bns[0]))
    y = F.relu(conv_bn(y, convs[1], bns[1]))
    y = conv_bn(y, convs[2], bns[2])
    if 4 * width == in_ch and stride == 1:  # same shape: the identity
        shortcut = x
    else:  # a strided 1×1 projection
        shortcut = conv_bn(x, block.shortcut[0], block.shortcut[1])
    with torch.no_grad():
        torch.testing.assert_close(block(x), F.relu(y + shortcut))


@pytest.mark.parametrize("m, k, n, dtype, itemsize", [(1, 256, 256, "float32", 4), (8, 16, 32, "bfloat16", 2)])
def test_arithmetic_intensity_is_flops_over_bytes_moved(m, k, n, dtype, itemsize):
    timing = flops.MatmulTiming(m, k, n, dtype, "cpu", seconds=0.5)
    assert timing.flops == 2 * m * k * n and timing.flop_per_s == 4 * m * k * n
    assert timing.arithmetic_intensity == 2 * m * k * n / (itemsize * (m * k + k * n + m * n))


def test_time_matmul_reports_the_median_of_its_repeats(monkeypatch):
    """A fake clock: the repeats last 5, 1, 3, 9 and 7 s; the median is 5 s."""
    ticks = iter([0, 5, 10, 11, 20, 23, 30, 39, 40, 47])
    monkeypatch.setattr(flops, "time", types.SimpleNamespace(perf_counter=lambda: next(ticks)))
    timing = flops.time_matmul(4, 3, 2, device="cpu", repeats=5)
    assert (timing.m, timing.k, timing.n, timing.dtype, timing.device) == (4, 3, 2, "float32", "cpu")
    assert timing.seconds == 5 and next(ticks, None) is None  # one clock pair per repeat, none for the warm-up


def test_time_matmul_times_five_repeats_by_default(monkeypatch):
    ticks = iter([0, 2, 10, 14, 20, 21, 30, 33, 40, 45])  # 2, 4, 1, 3, 5 s: median 3 s
    monkeypatch.setattr(flops, "time", types.SimpleNamespace(perf_counter=lambda: next(ticks)))
    assert flops.time_matmul(2, device="cpu").seconds == 3 and next(ticks, None) is None


def test_time_matmul_defaults_to_a_square_product_on_the_default_device():
    from qlora_lab.hardware.device import default_device

    timing = flops.time_matmul(3, repeats=1, dtype=torch.bfloat16)
    assert (timing.k, timing.n, timing.dtype, timing.device) == (3, 3, "bfloat16", default_device().type)


@pytest.mark.parametrize("bad, match", [(dict(m=0), "m=0"), (dict(m=2, k=0), "k=0"), (dict(m=2, n=-1), "n=-1"),
                                        (dict(m=2, n=0), "n=0"),
                                        (dict(m=2, repeats=0), "repeats must be >= 1, got 0")])
def test_time_matmul_names_the_bad_size(bad, match):
    with pytest.raises(ValueError, match=match):
        flops.time_matmul(**bad, device="cpu")


def test_time_matmul_multiplies_the_requested_matrices_on_the_requested_device():
    """A torch function mode sees every product time_matmul runs, the warm-up and each repeat:
    (m×k)·(k×n), both operands on the requested device. The meta device exists on every machine
    and is never the default one, so an operand made on the default device shows."""
    from torch.overrides import TorchFunctionMode

    class Products(TorchFunctionMode):
        def __init__(self):
            super().__init__()
            self.seen = []

        def __torch_function__(self, func, types, args=(), kwargs=None):
            if getattr(func, "__name__", "") in ("matmul", "__matmul__"):
                self.seen.append([(tuple(t.shape), t.device.type) for t in args])
            return func(*args, **(kwargs or {}))

    with Products() as products:
        timing = flops.time_matmul(4, 3, 2, device="meta", repeats=3)
    assert products.seen == [[((4, 3), "meta"), ((3, 2), "meta")]] * (3 + 1)
    assert timing.device == "meta"


def test_size_one_matrices_are_allowed():
    assert flops.time_matmul(1, 1, 1, device="cpu", repeats=1).flops == 2


def test_context_length_rows_by_hand():
    """Per token at T = 4 and 16: measured = 2N + 4·L·T·d (full attention), Kaplan 2N + 2·L·T·d, guide 2·T·d."""
    model = tiny_llama()
    n, layers, d = flops.matmul_params(model), 2, 32
    rows = flops.context_length_rows(model, [4, 16])
    assert [r["T"] for r in rows] == [4, 16]
    for r in rows:
        t = r["T"]
        assert r["measured"] == r["exact"] == 2 * n + 4 * layers * t * d
        assert r["kaplan"] == 2 * n + 2 * layers * t * d
        assert r["guide"] == 2 * t * d
