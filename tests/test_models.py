"""load_model: the shipped model in 16-bit and 4-bit, clear errors, and the CPU packing trap."""

import json
import os
import shutil
import subprocess
import sys
import warnings

import pytest
import torch

from qlora_lab.backends import import_bnb
from qlora_lab.model.models import (
    CorruptModelError,
    ModelNotFoundError,
    UnsupportedQuantizationError,
    VocabularyMismatchError,
    load_model,
    make_4bit_training_safe,
)
from qlora_lab.paths import EMBEDDED_MODEL_DIR

MAX_SHIPPED_MB = 30


def linear4bit_layers(model):
    bnb = import_bnb()
    return [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]


@pytest.fixture
def model_copy(tmp_path):
    """A writable copy of the shipped model directory, to damage."""
    target = tmp_path / "model"
    shutil.copytree(EMBEDDED_MODEL_DIR, target)
    return target


def test_shipped_model_directory_is_complete_and_small():
    names = {p.name for p in EMBEDDED_MODEL_DIR.iterdir()}
    expected = {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
                "tokenizer_config.json", "special_tokens_map.json", "README.md", "loss_curve.png"}
    assert expected <= names
    total_mb = sum(p.stat().st_size for p in EMBEDDED_MODEL_DIR.iterdir()) / 2**20
    assert total_mb <= MAX_SHIPPED_MB


def test_shipped_model_sizes_fit_bnb_cpu_kernels():
    config = json.loads((EMBEDDED_MODEL_DIR / "config.json").read_text())
    assert config["model_type"] == "llama"
    assert config["hidden_size"] % 64 == 0 and config["intermediate_size"] % 64 == 0


def test_plain_transformers_loads_shipped_model_without_qlora_lab():
    """A student's own script needs nothing but transformers (fresh interpreter, no qlora_lab)."""
    code = (
        "import sys, torch\n"
        "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
        f"path = {str(EMBEDDED_MODEL_DIR)!r}\n"
        "model = AutoModelForCausalLM.from_pretrained(path)\n"
        "tok = AutoTokenizer.from_pretrained(path)\n"
        "ids = tok('def add(a, b):', return_tensors='pt')\n"
        "out = model.generate(**ids, max_new_tokens=8, do_sample=False)\n"
        "assert out.shape[1] == ids['input_ids'].shape[1] + 8 or tok.eos_token_id in out[0].tolist()\n"
        "assert 'qlora_lab' not in sys.modules\n"
        "print(type(model).__name__, len(tok))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                            cwd=EMBEDDED_MODEL_DIR.parent, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split()[0] == "LlamaForCausalLM"


@pytest.mark.parametrize("quantization", ["nf4", "fp4"])
def test_4bit_load_quantizes_every_decoder_linear(quantization):
    model, tokenizer = load_model(quantization=quantization)
    layers = linear4bit_layers(model)
    n_layers = model.config.num_hidden_layers
    assert len(layers) == 7 * n_layers  # q, k, v, o, gate, up, down per block; lm_head stays 16-bit
    assert {layer.weight.quant_state.quant_type for layer in layers} == {quantization}
    assert len(tokenizer) <= model.config.vocab_size


def test_unquantized_load_uses_compute_dtype():
    model, _ = load_model(quantization="none", compute_dtype=torch.float32)
    assert not linear4bit_layers(model)
    assert {p.dtype for p in model.parameters()} == {torch.float32}


@pytest.mark.parametrize("bad", ["int4", "NF4", "", "q4_0"])
def test_unsupported_quantization_is_named(bad):
    with pytest.raises(UnsupportedQuantizationError, match=repr(bad)):
        load_model(quantization=bad)
    assert issubclass(UnsupportedQuantizationError, ValueError)


def test_missing_path_is_named(tmp_path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(ModelNotFoundError, match="no-such-model"):
        load_model(missing)
    assert issubclass(ModelNotFoundError, FileNotFoundError)


def test_directory_without_weights_is_named(model_copy):
    (model_copy / "model.safetensors").unlink()
    with pytest.raises(ModelNotFoundError, match="safetensors"):
        load_model(model_copy)


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupt_safetensors_is_named(model_copy, damage):
    weights = model_copy / "model.safetensors"
    if damage == "truncate":
        data = weights.read_bytes()
        weights.write_bytes(data[: len(data) // 2])
    else:
        weights.write_bytes(b"this is not a safetensors file" * 100)
    with pytest.raises(CorruptModelError, match="model.safetensors"):
        load_model(model_copy)


def test_tokenizer_larger_than_model_vocabulary_is_named(model_copy):
    config = json.loads((model_copy / "config.json").read_text())
    config["vocab_size"] = 1000
    (model_copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(VocabularyMismatchError, match=r"vocab_size is 1000"):
        load_model(model_copy, quantization="none")


def test_hub_id_offline_fails_with_one_clear_error():
    """No network attempt (HF_HUB_OFFLINE=1): the message says what was looked for and what to do."""
    code = (
        "from qlora_lab.model.models import load_model, ModelNotFoundError\n"
        "try:\n"
        "    load_model('codellama/CodeLlama-7b-hf')\n"
        "except ModelNotFoundError as e:\n"
        "    print('ERROR', e)\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": "/nonexistent-hf-home"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    message = result.stdout
    assert message.startswith("ERROR") and "codellama/CodeLlama-7b-hf" in message
    assert "`hf download codellama/CodeLlama-7b-hf`" in message and "load_model()" in message


# --- the AVX512-BF16 packing trap -------------------------------------------------------------

def lora_step_gradients(model, batch):
    """One training forward/backward of a LoRA adapter; returns {name: grad} of the adapter."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)  # same adapter initialisation in every call
    config = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False)
    peft_model = get_peft_model(model, config)
    peft_model.train()
    peft_model(input_ids=batch, labels=batch).loss.backward()
    return {n: p.grad.clone() for n, p in peft_model.named_parameters() if p.requires_grad}


def eval_forward_and_generate(model, tokenizer, batch):
    model.eval()
    with torch.no_grad():
        model(input_ids=batch)
        prompt = tokenizer("def main():", return_tensors="pt")
        model.generate(**prompt, max_new_tokens=4, do_sample=False)


@pytest.fixture(scope="module")
def batch():
    _, tokenizer = load_model(quantization="none")
    text = "import os\n\n\ndef walk(path):\n    for name in os.listdir(path):\n        yield name\n"
    return tokenizer(text, return_tensors="pt")["input_ids"]


def test_lora_gradients_after_eval_and_generate_match_a_never_evaluated_model(batch):
    """Regression: eval forward + generate, then a LoRA step, on an NF4 model from load_model.

    Reference: the same NF4 model put in training mode before any forward. The guard
    restores the exact original 4-bit weights, so the gradients agree to float rounding
    (rtol=1e-4, atol=1e-6; in practice they are identical).
    """
    reference_model, _ = load_model(quantization="nf4")
    reference_model.train()
    reference = lora_step_gradients(reference_model, batch)

    model, tokenizer = load_model(quantization="nf4")
    eval_forward_and_generate(model, tokenizer, batch)
    grads = lora_step_gradients(model, batch)

    assert grads.keys() == reference.keys() and len(grads) == 2 * 7 * model.config.num_hidden_layers
    for name, grad in grads.items():
        assert grad.abs().sum() > 0, f"{name}: zero gradient"
        torch.testing.assert_close(grad, reference[name], rtol=1e-4, atol=1e-6, msg=name)


def test_guard_keeps_the_fast_packed_path_for_inference(batch):
    model, tokenizer = load_model(quantization="nf4")
    eval_forward_and_generate(model, tokenizer, batch)
    bnb = import_bnb()
    packed = [getattr(layer.weight.quant_state, "packing_format_for_cpu", False) for layer in linear4bit_layers(model)]
    # On AVX512-BF16 CPUs every layer took bnb's packed path; elsewhere none does.
    assert packed == [bnb.functional.has_avx512bf16()] * len(packed)


NO_TRAP_HERE = (
    "PACKING TRAP NOT SHOWN: this CPU has no AVX512-BF16, so bitsandbytes never packs 4-bit weights "
    "here and the unguarded model cannot go wrong. This run only checks that no layer was packed and "
    "that unguarded gradients equal the reference; run it on an AVX512-BF16 CPU to see the trap."
)


def test_unguarded_model_shows_the_trap_on_avx512bf16_cpus(batch):
    """Control: without the guard's restore, gradients after an eval forward differ on AVX512-BF16 CPUs.

    This is what the guard prevents. On other CPUs bnb never packs: the test cannot show the
    trap there, says so loudly (a warning in pytest's summary), and checks only that nothing
    was packed and both paths agree.
    """
    bnb = import_bnb()
    reference_model, _ = load_model(quantization="nf4")
    reference_model.train()
    reference = lora_step_gradients(reference_model, batch)

    model, tokenizer = load_model(quantization="nf4")
    for layer in linear4bit_layers(model):  # remove the guard installed by load_model
        layer._forward_pre_hooks.clear()
    eval_forward_and_generate(model, tokenizer, batch)
    packed = [getattr(layer.weight.quant_state, "packing_format_for_cpu", False) for layer in linear4bit_layers(model)]
    grads = lora_step_gradients(model, batch)
    same = all(torch.allclose(grads[n], reference[n], rtol=1e-4, atol=1e-6) for n in reference)
    if bnb.functional.has_avx512bf16():
        assert all(packed), "the eval forward should have packed every layer on this AVX512-BF16 CPU"
        assert not same, "unguarded gradients after packing should differ from the reference (the trap)"
    else:
        warnings.warn(NO_TRAP_HERE, UserWarning)
        print(NO_TRAP_HERE)
        assert not any(packed) and same


def test_guard_disables_packing_for_layers_the_packed_kernel_cannot_take():
    bnb = import_bnb()
    layer = bnb.nn.Linear4bit(64, 688, bias=False, quant_type="nf4")  # 688 % 32 != 0
    layer.weight = bnb.nn.Params4bit(torch.randn(688, 64), requires_grad=False, quant_type="nf4")
    layer = layer.to("cpu")
    make_4bit_training_safe(torch.nn.Sequential(layer))
    layer.eval()
    with torch.no_grad():
        out = layer(torch.randn(2, 64))
    assert out.shape == (2, 688) and not layer.support_avx512bf16_for_cpu
