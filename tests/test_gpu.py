"""The CUDA path: our 4-bit codec against bitsandbytes' CUDA kernels, a QLoRA fine-tune on the
GPU, and the paged optimizers.

Marked `gpu`: deselected by `make test` (addopts has -m "not gpu"); run them with
`pytest -m gpu tests/test_gpu.py` or `bash benchmarks/gpu_check.sh`. Selected on a machine
without CUDA they FAIL (they never skip): a GPU run that silently tested nothing would look
like a green one.
"""

import pytest
import torch

from qlora_lab.backends import import_bnb
from qlora_lab.finetune.config import PAGED_OPTIMIZERS, FinetuneConfig
from qlora_lab.finetune.loop import finetune
from qlora_lab.finetune.prepare import make_optimizer
from qlora_lab.model.models import load_model
from qlora_lab.quant.codes import nearest_code
from qlora_lab.quant.double_quant import dequantize_absmax
from qlora_lab.quant.nf4 import codebook, dequantize_4bit, quantize_4bit
from qlora_lab.sizing import flops
from qlora_lab.sizing.flops import time_matmul

pytestmark = pytest.mark.gpu

FAST = dict(batch_size=2, seq_len=32, eval_examples=4, warmup_steps=1, lora_dropout=0.0)


@pytest.fixture(autouse=True)
def cuda() -> torch.device:
    if not torch.cuda.is_available():
        pytest.fail(f"selected with -m gpu but CUDA is not available here (torch {torch.__version__}, "
                    f"built for CUDA {torch.version.cuda}): these tests must run on a GPU, never skip")
    return torch.device("cuda")


@pytest.fixture(scope="module")
def bnb_functional():
    return import_bnb().functional


# --- our quantize_4bit / dequantize_4bit against bitsandbytes' CUDA kernels ------------------

@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
@pytest.mark.parametrize("blocksize", [64, 128, 256])
def test_4bit_codes_and_absmax_equal_the_cuda_kernel(cuda, bnb_functional, quant_type, blocksize):
    """First level, no double quantization: codes and float32 absmax identical to CUDA's."""
    w = torch.randn(1024, 768, generator=torch.Generator().manual_seed(blocksize)).to(cuda)
    packed, state = quantize_4bit(w, quant_type, blocksize, double_quant=False)
    bnb_packed, bnb_state = bnb_functional.quantize_4bit(w, blocksize=blocksize, quant_type=quant_type,
                                                         compress_statistics=False)
    assert packed.is_cuda and bnb_packed.is_cuda
    assert torch.equal(state.absmax, bnb_state.absmax)
    assert torch.equal(packed.view(-1), bnb_packed.view(-1))
    ours = dequantize_4bit(bnb_packed, state)
    assert torch.equal(ours, bnb_functional.dequantize_4bit(bnb_packed, bnb_state))


@pytest.mark.parametrize("n", [3, 64 * 1001 + 33])
def test_odd_sizes_equal_the_cuda_kernel(cuda, bnb_functional, n):
    """An odd count gets a padding code of 0.0, made on the GPU; a partial last block."""
    x = torch.randn(n, generator=torch.Generator().manual_seed(n)).to(cuda)
    packed, state = quantize_4bit(x, "nf4", 64, double_quant=False)
    bnb_packed, bnb_state = bnb_functional.quantize_4bit(x, blocksize=64, quant_type="nf4", compress_statistics=False)
    assert torch.equal(packed.view(-1), bnb_packed.view(-1)) and torch.equal(state.absmax, bnb_state.absmax)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_nf4_with_double_quant_dequantizes_like_the_cuda_kernel(cuda, bnb_functional, dtype):
    """With DQ: the 4-bit codes are identical; the 8-bit constants may differ on rare values.

    Our 8-bit constants follow bnb's CPU kernel (a 65,536-entry lookup table); the CUDA kernel
    searches the nearest code exactly, so a constant within ~1.5e-5 of a code midpoint may get
    the neighbouring code. Such a constant differs by one step of the dynamic code: < 1 %.
    """
    w = torch.randn(2048, 1024, generator=torch.Generator().manual_seed(0)).to(cuda, dtype)
    packed, state = quantize_4bit(w, "nf4", 64, double_quant=True)
    bnb_packed, bnb_state = bnb_functional.quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=True)
    held = [packed, state.absmax, state.code, state.offset, state.state2.absmax, state.state2.code]
    assert all(t.is_cuda for t in held), "every tensor of the state stays on the GPU"
    assert torch.equal(packed.view(-1), bnb_packed.view(-1))
    assert torch.equal(state.state2.absmax, bnb_state.state2.absmax)
    assert torch.equal(state.offset.reshape(()), torch.as_tensor(bnb_state.offset, device=cuda).reshape(()))
    differ = (state.absmax != bnb_state.absmax).float().mean().item()
    assert differ < 1e-3, f"{differ:.2%} of the 8-bit constants differ from the CUDA kernel's"
    ours = dequantize_absmax(state.absmax, state.offset, state.state2.absmax, state.state2.code)
    theirs = bnb_functional.dequantize_blockwise(bnb_state.absmax, bnb_state.state2) + bnb_state.offset
    torch.testing.assert_close(ours, theirs, rtol=1e-2, atol=0)
    ours_w = dequantize_4bit(bnb_packed, state)
    theirs_w = bnb_functional.dequantize_4bit(bnb_packed, bnb_state)
    assert ours_w.dtype == theirs_w.dtype == dtype
    torch.testing.assert_close(ours_w.float(), theirs_w.float(), rtol=1e-2, atol=1e-3)


def test_nearest_code_with_levels_closer_than_its_grid_on_cuda(cuda):
    """The binary-search fallback on the GPU: a CPU table, CUDA values, the codes of argmin."""
    code = codebook("nf4").clone()
    code[9], code[10] = 1e-4, 2e-4  # two midpoints in one grid cell: nearest_code falls back to bucketize
    values = torch.rand(10_000, generator=torch.Generator().manual_seed(0)) * 2 - 1
    found = nearest_code(values.to(cuda), code)
    assert found.is_cuda
    assert torch.equal(found.cpu(), (values.reshape(-1, 1) - code).abs().argmin(dim=1).to(torch.uint8))


def test_time_matmul_on_cuda_waits_for_the_kernels(cuda):
    """A CUDA matmul is asynchronous: without torch.cuda.synchronize the clock would time the launch
    only (~10 µs for 1.1 TFLOPs of work, i.e. > 100 PFLOP/s). No GPU reaches 5 PFLOP/s dense in bf16."""
    timing = time_matmul(8192, dtype=torch.bfloat16, device=cuda, repeats=3)
    assert timing.device == "cuda" and timing.dtype == "bfloat16"
    assert 1e12 < timing.flop_per_s < 5e15, f"{timing.flop_per_s:.3g} FLOP/s"


def test_flop_counts_of_a_model_on_cuda_equal_the_formulas(cuda):
    """The counting helpers feed the model inputs on its own device: a CUDA model counts like a CPU one."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=4)).to(cuda)
    n, seq = flops.matmul_params(model), 16
    forward = flops.exact_decoder_forward_flops(n, 2, 64, seq)
    assert flops.decoder_forward_flops(model, seq) == forward
    training = flops.training_flops_per_token(n, 2, 4, 16, seq) * seq  # PaLM: 6N + 12·L·H·Q·T per token
    assert flops.decoder_training_flops(model, seq) == pytest.approx(training, rel=1e-9)


# --- a real QLoRA fine-tune on the GPU ---------------------------------------------------------

def test_five_step_qlora_fine_tune_on_cuda_trains_the_adapters_and_leaves_the_base(cuda, tmp_path):
    bnb = import_bnb()
    model, tokenizer = load_model(quantization="nf4", device=cuda)
    base = {n: p.detach().clone() for n, p in model.named_parameters() if p.dtype == torch.uint8}
    assert base and all(p.is_cuda for p in base.values())
    config = FinetuneConfig(mode="qlora", max_steps=5, output_dir=str(tmp_path), **FAST)
    result = finetune(config, model=model, tokenizer=tokenizer)
    assert [r["step"] for r in result.metrics] == [1, 2, 3, 4, 5]
    assert all(r["grad_norm"] > 0 for r in result.metrics)  # LoRA gradients, every step
    lora_b = [p for n, p in result.model.named_parameters() if "lora_B" in n]
    assert lora_b and all(p.is_cuda and float(p.detach().abs().sum()) > 0 for p in lora_b)  # B starts at 0
    checked = 0
    for n, p in result.model.named_parameters():
        key = n.replace("base_model.model.", "").replace(".base_layer", "")
        if key in base:
            assert isinstance(p, bnb.nn.Params4bit) and p.is_cuda and not p.requires_grad
            assert torch.equal(p.detach(), base[key]), f"{key}: the frozen 4-bit base changed"
            checked += 1
    assert checked == len(base)
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()


# --- paged optimizers ------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(PAGED_OPTIMIZERS))
def test_paged_optimizer_is_bitsandbytes_and_steps_like_adamw(cuda, name):
    bnb = import_bnb()
    torch.manual_seed(0)
    start = torch.randn(4096, 64, device=cuda)
    paged_param = torch.nn.Parameter(start.clone())
    plain_param = torch.nn.Parameter(start.clone())
    config = FinetuneConfig(optimizer=name, learning_rate=1e-3, weight_decay=0.0)
    paged = make_optimizer([paged_param], config, cuda)
    plain = make_optimizer([plain_param], FinetuneConfig(optimizer="adamw", learning_rate=1e-3, weight_decay=0.0),
                           cuda)
    assert isinstance(paged, getattr(bnb.optim, PAGED_OPTIMIZERS[name]))
    target = torch.randn(4096, 64, device=cuda)
    for _ in range(3):
        for param, opt in ((paged_param, paged), (plain_param, plain)):
            loss = ((param - target) ** 2).mean()
            loss.backward()
            opt.step()
            opt.zero_grad()
    assert not torch.equal(paged_param, start)  # it stepped
    step = (plain_param - start).abs().mean()  # AdamW's first steps: about lr per step
    torch.testing.assert_close((paged_param - start).abs().mean(), step, rtol=0.1, atol=0)
    cosine = torch.nn.functional.cosine_similarity((paged_param - start).flatten(), (plain_param - start).flatten(),
                                                   dim=0)
    assert cosine > 0.95  # the same direction as torch's AdamW (8-bit states round a little)


def test_paged_optimizer_fine_tune_on_cuda(cuda, tmp_path):
    model, tokenizer = load_model(quantization="nf4", device=cuda)
    config = FinetuneConfig(mode="qlora", max_steps=3, optimizer="paged_adamw_8bit", output_dir=str(tmp_path), **FAST)
    result = finetune(config, model=model, tokenizer=tokenizer)
    assert len(result.metrics) == 3 and all(r["grad_norm"] > 0 for r in result.metrics)
