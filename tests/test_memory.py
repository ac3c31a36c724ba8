"""The memory estimator: weight formats, training breakdown, and measured activations."""

import re
from pathlib import Path

import pytest
import torch

from qlora_lab.backends import import_bnb
from qlora_lab.hardware import measured_memory
from qlora_lab.sizing import memory, multi_gpu
from qlora_lab.quant.double_quant import quant_state_breakdown
from qlora_lab.sizing.memory import CODELLAMA, ModelShape


@pytest.mark.parametrize("size, billions", [("7B", 6.74), ("13B", 13.02), ("34B", 33.74), ("70B", 68.98)])
def test_codellama_shapes_have_their_parameter_counts(size, billions):
    assert CODELLAMA[size].n_params / 1e9 == pytest.approx(billions, rel=0.005)


@pytest.mark.parametrize("size", list(CODELLAMA))
def test_nf4_dq_weights_are_4_127_bits_plus_16_bit_rest(size):
    shape = CODELLAMA[size]
    expected = shape.linear_params() * 4.127 / 8 + 2 * shape.other_params()
    assert memory.weight_bytes(shape, "nf4-dq") == pytest.approx(expected, rel=1e-4)


@pytest.mark.parametrize("fmt, bits", [("fp32", 32), ("fp16", 16), ("bf16", 16), ("int8", 8), ("nf4", 4.5),
                                       ("nf4-dq", 4.127), ("q4_0", 4.5)])
def test_bits_per_linear_weight(fmt, bits):
    assert memory.bits_per_linear_weight(fmt) == pytest.approx(bits, abs=1e-3)


def test_formats_are_ordered_by_size():
    shape = CODELLAMA["7B"]
    sizes = [memory.weight_bytes(shape, f) for f in ("fp32", "fp16", "int8", "nf4", "nf4-dq")]
    assert sizes == sorted(sizes, reverse=True)
    assert memory.weight_bytes(shape, "fp16") / 1e9 == pytest.approx(13.5, rel=0.01)


def test_unknown_format_and_method_are_clear_errors():
    with pytest.raises(ValueError, match="fmt="):
        memory.bits_per_linear_weight("int3")
    with pytest.raises(ValueError, match="method="):
        memory.training_memory(CODELLAMA["7B"], "prefix-tuning")


def test_full_fine_tuning_of_65b_needs_more_than_780_gb():
    llama_65b = ModelShape("LLaMA-65B", 8192, 22016, 80, 64, 64, 32000)
    full = memory.training_memory(llama_65b, "full", seq_len=512, gradient_checkpointing=True)
    assert (full.weights + full.gradients + full.optimizer) / 1e9 == pytest.approx(780, rel=0.02)  # QLoRA paper, intro


@pytest.mark.parametrize("size", ["7B", "13B"])
def test_qlora_needs_less_than_lora_less_than_full(size):
    totals = [memory.training_memory(CODELLAMA[size], m, seq_len=512).total for m in ("qlora", "lora", "full")]
    assert totals == sorted(totals)


def test_7b_qlora_at_512_tokens_fits_in_8_gb_but_not_at_4096_tokens_without_checkpointing():
    shape = CODELLAMA["7B"]
    short = memory.training_memory(shape, "qlora", seq_len=512, gradient_checkpointing=True)
    long = memory.training_memory(shape, "qlora", seq_len=4096, gradient_checkpointing=False)
    assert memory.smallest_gpu_that_fits(short.total) == 8
    assert long.total > 16e9


def test_gradient_checkpointing_cuts_activations():
    shape = CODELLAMA["7B"]
    plain = memory.activation_bytes(shape, 1024, gradient_checkpointing=False)
    ckpt = memory.activation_bytes(shape, 1024, gradient_checkpointing=True)
    assert ckpt < plain / 5


@pytest.mark.parametrize("seq_len", [64, 128])
@pytest.mark.parametrize("hidden, layers", [(128, 2), (256, 3)])
@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_activation_formula_matches_saved_tensors(seq_len, hidden, layers, attention):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=1000, hidden_size=hidden, intermediate_size=(8 * hidden) // 3,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=4)
    model = LlamaForCausalLM(config).to(torch.bfloat16).train()
    model.set_attn_implementation(attention)
    ids = torch.randint(0, 1000, (1, seq_len))
    measured = measured_memory.saved_activation_bytes(model, ids)
    estimated = memory.activation_bytes(ModelShape.from_config(config), seq_len, attention=attention)
    assert estimated == pytest.approx(measured, rel=0.10)


@pytest.mark.filterwarnings("ignore::FutureWarning")
@pytest.mark.parametrize("vocab, checkpointing", [(4000, True), (4000, False), (256, True)])
def test_activation_peak_matches_tensor_accounting(vocab, checkpointing):
    """The peak of a LoRA step, measured tensor by tensor: the loss's fp32 copies (vocab 4000),
    or one recomputed layer (vocab 256, where the loss is smaller) on top of the layer inputs."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from qlora_lab.finetune.adapters import attach_lora
    from qlora_lab.finetune.config import FinetuneConfig
    from qlora_lab.finetune.step_memory import step_memory

    config = LlamaConfig(vocab_size=vocab, hidden_size=128, intermediate_size=344, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=4)
    torch.manual_seed(0)
    model = attach_lora(LlamaForCausalLM(config).to(torch.bfloat16),
                        FinetuneConfig(mode="lora", gradient_checkpointing=checkpointing, lora_dropout=0.0))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])
    measured = step_memory(model, optimizer, torch.randint(0, vocab, (1, 128))).peak["activations"]
    estimated = memory.activation_peak_bytes(ModelShape.from_config(config), 128, gradient_checkpointing=checkpointing)
    assert estimated == pytest.approx(measured, rel=0.10)


def test_from_config_reads_a_llama_config():
    from transformers import LlamaConfig

    shape = ModelShape.from_config(LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64,
                                               num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2))
    assert (shape.hidden, shape.n_kv_heads, shape.vocab) == (32, 2, 100)


def test_available_memory_on_cpu_is_positive_and_below_total():
    import psutil

    free = measured_memory.available_memory_bytes("cpu")
    assert 0 < free <= psutil.virtual_memory().total


# ------------------------------------------------------------------ data-parallel training

# Llama-2-70B: CodeLlama-70B's shape with Llama's 32000-token vocabulary.
LLAMA_2_70B = ModelShape("Llama-2-70B", 8192, 28672, 80, 64, 8, 32000)
# HF PEFT docs (accelerate/fsdp.md, "Memory usage"): Llama-2-70B FSDP-QLoRA on 2 GPUs,
# max_seq_len 2048, per_device_train_batch_size 2, lora_r 8, gradient checkpointing.
HF_SETTINGS = dict(seq_len=2048, batch=2, r=8)
HF_MEASURED_GB = {"offload": 19.6, "no_offload": 35.6}
BOOK_PAGE = Path(__file__).resolve().parents[1] / "book" / "multi_gpu.md"


def per_gpu(size: str, strategy: str, n: int, **kwargs) -> float:
    return multi_gpu.per_device_memory(CODELLAMA[size], "qlora", strategy, n, **kwargs).total


@pytest.mark.parametrize("method", ["qlora", "lora", "full"])
def test_ddp_holds_a_whole_replica_plus_gradient_buckets_whatever_the_count(method):
    shape = CODELLAMA["7B"]
    single = memory.training_memory(shape, method)
    for n in (1, 2, 8, 64):
        ddp = multi_gpu.per_device_memory(shape, method, "ddp", n)
        assert ddp.buckets == single.gradients  # a second copy of the trained gradients
        assert ddp.total == pytest.approx(single.total + single.gradients)


@pytest.mark.parametrize("method", ["qlora", "lora", "full"])
@pytest.mark.parametrize("size", ["7B", "70B"])
def test_fsdp_shrinks_towards_activations_plus_gathered_units(method, size):
    shape = CODELLAMA[size]
    totals = [multi_gpu.per_device_memory(shape, method, "fsdp", n).total for n in (2, 4, 8, 16)]
    assert totals == sorted(totals, reverse=True) and len(set(totals)) == len(totals)
    replicated = multi_gpu.quant_constant_bytes(shape) if method == "qlora" else 0.0
    sharded = []  # what is left above the floor, times the count: the same replica each time
    for n in (2, 8, 4096):
        fsdp = multi_gpu.per_device_memory(shape, method, "fsdp", n)
        sharded.append(n * (fsdp.total - fsdp.activations - fsdp.gathered - replicated))
    assert sharded == pytest.approx([sharded[0]] * 3)


@pytest.mark.parametrize("method", ["qlora", "lora", "full"])
def test_fsdp_shards_add_up_to_one_replica(method):
    shape, n = CODELLAMA["13B"], 4
    single = memory.training_memory(shape, method, fp32_unquantized=False)  # FSDP keeps the storage dtype
    fsdp = multi_gpu.per_device_memory(shape, method, "fsdp", n)
    replicated = multi_gpu.quant_constant_bytes(shape) if method == "qlora" else 0.0
    assert n * (fsdp.weights - replicated) + replicated == pytest.approx(single.weights)
    for item in ("adapters", "gradients", "optimizer"):
        assert n * getattr(fsdp, item) == pytest.approx(getattr(single, item))
    assert fsdp.activations == single.activations  # each GPU runs its own micro-batch


def test_fsdp_gathers_the_root_unit_and_the_chosen_number_of_layers():
    shape = CODELLAMA["34B"]
    layer, root = multi_gpu.fsdp_unit_bytes(shape, "qlora")
    one = multi_gpu.per_device_memory(shape, "qlora", "fsdp", 4, layers_gathered=1)
    two = multi_gpu.per_device_memory(shape, "qlora", "fsdp", 4)
    # By hand, CodeLlama-34B (hidden 8192, MLP 22016, 64 heads, 8 KV heads of 128, vocab 32000):
    # a layer's linears q,o 8192², k,v 8192·1024, gate/up/down 8192·22016, as 4-bit codes (½ byte),
    # + two bf16 RMSNorms; the root unit: embeddings + lm_head + final norm in bf16.
    hand_layer = (2 * 8192**2 + 2 * 8192 * 1024 + 3 * 8192 * 22016) / 2 + 2 * 2 * 8192
    hand_root = 2 * (2 * 32000 * 8192 + 8192)
    assert (layer, root) == (hand_layer, hand_root) == (346_062_848, 1_048_592_384)
    # the default gathers the layer being computed plus the prefetched next one (BACKWARD_PRE)
    assert two.gathered == hand_root + 2 * hand_layer == 1_740_718_080
    assert one.gathered == root + layer and two.total - one.total == pytest.approx(layer)
    # The packed 4-bit codes of one layer, whatever container holds them: a quarter of bf16.
    bf16_layer, _ = multi_gpu.fsdp_unit_bytes(shape, "lora")
    norms = 2 * 2 * shape.hidden
    assert (layer - norms) / (bf16_layer - norms) == pytest.approx(0.25)


@pytest.mark.parametrize("method", ["qlora", "lora", "full"])
def test_fsdp_on_one_device_is_no_shard_the_same_as_single(method):
    shape = CODELLAMA["7B"]
    fsdp = multi_gpu.per_device_memory(shape, method, "fsdp", 1)
    single = memory.training_memory(shape, method, fp32_unquantized=False)  # sharded QLoRA is not upcast
    assert fsdp.gathered == 0 and fsdp.total == pytest.approx(single.total)


def test_fsdp_cpu_offload_leaves_the_gpu_units_constants_and_activations():
    shape = CODELLAMA["70B"]
    kept = multi_gpu.per_device_memory(shape, "qlora", "fsdp", 2)
    offloaded = multi_gpu.per_device_memory(shape, "qlora", "fsdp", 2, cpu_offload=True)
    assert offloaded.total == pytest.approx(multi_gpu.quant_constant_bytes(shape) + kept.gathered + kept.activations)
    assert offloaded.cpu_offloaded + offloaded.total == pytest.approx(kept.total)


def test_bf16_container_holds_the_same_4_bit_codes_in_the_same_bytes():
    """bnb_4bit_quant_storage=torch.bfloat16: 4 codes per element, bytes and values unchanged."""
    F = import_bnb().functional
    w = torch.randn(256, 512, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    as_uint8, state_u8 = F.quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=True)
    as_bf16, state_bf16 = F.quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=True,
                                          quant_storage=torch.bfloat16)
    assert as_bf16.dtype == torch.bfloat16 and as_bf16.numel() == w.numel() // 4
    assert as_bf16.untyped_storage().nbytes() == as_uint8.untyped_storage().nbytes() == w.numel() // 2
    assert torch.equal(F.dequantize_4bit(as_bf16, state_bf16), F.dequantize_4bit(as_uint8, state_u8))
    parts = quant_state_breakdown(as_bf16, state_bf16)  # outside the container: not sharded by FSDP
    per_weight_bits = memory.bits_per_linear_weight("nf4-dq") - memory.NF4_CODE_BITS
    assert (parts["absmax"] + parts["nested_absmax"]) * 8 / w.numel() == pytest.approx(per_weight_bits)


def test_invalid_strategies_and_counts_are_clear_errors():
    shape = CODELLAMA["7B"]
    with pytest.raises(ValueError, match="strategy="):
        multi_gpu.per_device_memory(shape, "qlora", "zero3", 2)
    for bad in (0, -2, 1.5, True):
        with pytest.raises(ValueError, match="n_devices"):
            multi_gpu.per_device_memory(shape, "qlora", "ddp", bad)
    with pytest.raises(ValueError, match="'single' runs on one device"):
        multi_gpu.per_device_memory(shape, "qlora", "single", 2)
    with pytest.raises(ValueError, match="cpu_offload"):
        multi_gpu.per_device_memory(shape, "qlora", "ddp", 2, cpu_offload=True)
    with pytest.raises(ValueError, match="method="):
        multi_gpu.per_device_memory(shape, "prefix", "fsdp", 2)
    with pytest.raises(ValueError, match="gpu_gb"):
        multi_gpu.devices_needed(shape, "qlora", "fsdp", gpu_gb=1.5)


def test_qlora_70b_ddp_never_fits_24_gb_but_fits_80_gb():
    shape = CODELLAMA["70B"]
    assert per_gpu("70B", "ddp", 2) > 24e9
    assert multi_gpu.devices_needed(shape, "qlora", "ddp", 24, headroom_gb=0) is None
    assert multi_gpu.devices_needed(shape, "qlora", "ddp", 80) == 1


def test_qlora_70b_on_two_24_gb_gpus_fits_on_paper_only_with_cpu_offload_in_practice():
    """512 tokens, batch 1, checkpointing: 23.3 GB counted per GPU, under 24 GB by less
    than what the formula leaves out (HF's measurement below misses 6 to 9 GB)."""
    shape = CODELLAMA["70B"]
    on_paper = per_gpu("70B", "fsdp", 2)
    assert 24e9 - multi_gpu.RUNTIME_HEADROOM_GB * 1e9 < on_paper < 24e9
    assert multi_gpu.devices_needed(shape, "qlora", "fsdp", 24, headroom_gb=0) == 2
    for headroom in (1, 2, 4, 6, 7):  # the conclusion does not hinge on the allowance
        assert multi_gpu.devices_needed(shape, "qlora", "fsdp", 24, headroom_gb=headroom) == 3
    assert per_gpu("70B", "fsdp", 2, cpu_offload=True) + 10e9 < 24e9


def test_estimate_is_a_lower_bound_of_hf_peft_measurements():
    """HF PEFT: 35.6 GB/GPU without CPU offload, 19.6 GB with, on 2 GPUs (see HF_SETTINGS)."""
    for key, offload in (("no_offload", False), ("offload", True)):
        estimate = multi_gpu.per_device_memory(LLAMA_2_70B, "qlora", "fsdp", 2, cpu_offload=offload, **HF_SETTINGS)
        missing = HF_MEASURED_GB[key] - estimate.total / 1e9
        assert 0 < missing < 10, (key, estimate.total / 1e9)
    no_offload = multi_gpu.per_device_memory(LLAMA_2_70B, "qlora", "fsdp", 2, **HF_SETTINGS).total
    assert no_offload > 24e9  # as measured: without offload, 24 GB GPUs are not enough


def book_table() -> dict[tuple[str, str, int], float]:
    """book/multi_gpu.md's per-GPU table: (size, strategy, n_devices) -> GB."""
    lines = [line for line in BOOK_PAGE.read_text(encoding="utf-8").splitlines() if line.startswith("| CodeLlama-")]
    header = next(line for line in BOOK_PAGE.read_text(encoding="utf-8").splitlines() if line.startswith("| Modèle"))
    columns = []
    for cell in header.strip("|").split("|")[1:]:
        match = re.fullmatch(r"\s*(1 GPU|DDP|FSDP)(?: ×(\d+))?\s*", cell)
        assert match, f"unexpected column {cell!r}"
        strategy = {"1 GPU": "single", "DDP": "ddp", "FSDP": "fsdp"}[match.group(1)]
        columns.append((strategy, int(match.group(2) or 1)))
    table = {}
    for line in lines:
        cells = [c.strip() for c in line.strip("|").split("|")]
        size = cells[0].removeprefix("CodeLlama-")
        for (strategy, n), value in zip(columns, cells[1:]):
            table[(size, strategy, n)] = float(value.replace(",", "."))
    return table


def test_book_page_table_equals_the_estimator():
    table = book_table()
    assert {size for size, _, _ in table} == set(CODELLAMA)
    assert {(s, n) for _, s, n in table} >= {("ddp", 2), ("ddp", 8), ("fsdp", 2), ("fsdp", 8)}
    for (size, strategy, n), gb in table.items():
        assert gb == round(per_gpu(size, strategy, n) / 1e9, 1), (size, strategy, n)


def test_book_page_comparison_with_hf_equals_the_estimator():
    rows = re.findall(r"^\| Llama-2-70B, FSDP ×2, (sans|avec) déchargement CPU \| ([\d,]+) \| ([\d,]+) \|$",
                      BOOK_PAGE.read_text(encoding="utf-8"), re.M)
    assert len(rows) == 2, rows
    for kind, estimated, measured in rows:
        key = "offload" if kind == "avec" else "no_offload"
        estimate = multi_gpu.per_device_memory(LLAMA_2_70B, "qlora", "fsdp", 2, cpu_offload=key == "offload",
                                            **HF_SETTINGS)
        assert float(estimated.replace(",", ".")) == round(estimate.total / 1e9, 1)
        assert float(measured.replace(",", ".")) == HF_MEASURED_GB[key]


def test_book_page_prose_numbers_equal_the_estimator():
    text = " ".join(BOOK_PAGE.read_text(encoding="utf-8").split())  # prose wraps anywhere
    on_paper, offloaded = per_gpu("70B", "fsdp", 2), per_gpu("70B", "fsdp", 2, cpu_offload=True)
    assert f"annonce {on_paper / 1e9:.1f} Go par GPU".replace(".", ",") in text
    assert f"activations : {offloaded / 1e9:.1f} Go pour CodeLlama-70B".replace(".", ",") in text


def test_smallest_gpu_that_fits_counts_a_gpu_that_is_exactly_full():
    assert memory.smallest_gpu_that_fits(8e9) == 8  # GB = 1e9 bytes; exactly full still fits
    assert memory.smallest_gpu_that_fits(8e9 + 1) == 12
    assert memory.smallest_gpu_that_fits(80e9) == 80 and memory.smallest_gpu_that_fits(80e9 + 1) is None
    assert memory.smallest_gpu_that_fits(20e9, sizes_gb=(48, 24)) == 24  # any order


# --- weight bytes and training items against a real (tiny) model --------------------------

def tiny_llama_and_shape(tie: bool = False):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=tie)
    return LlamaForCausalLM(config), ModelShape.from_config(config)


@pytest.mark.parametrize("fmt, dtype", [("fp32", torch.float32), ("fp16", torch.float16), ("bf16", torch.bfloat16)])
def test_weight_bytes_of_a_whole_dtype_equal_the_model_parameters(fmt, dtype):
    model, shape = tiny_llama_and_shape()
    model = model.to(dtype)
    assert memory.weight_bytes(shape, fmt) == sum(p.numel() * p.element_size() for p in model.parameters())


def test_int8_weight_bytes_equal_bitsandbytes_int8_codes_and_row_scales():
    """LLM.int8: bitsandbytes' own row-wise quantizer on every decoder linear, the rest in bf16."""
    F = import_bnb().functional
    model, shape = tiny_llama_and_shape()
    total = 0
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and name != "lm_head":
            codes, row_scales, _ = F.int8_vectorwise_quant(module.weight.data.to(torch.float16))
            total += codes.numel() * codes.element_size() + row_scales.numel() * row_scales.element_size()
    linear_ids = {id(m.weight) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n != "lm_head"}
    total += 2 * sum(p.numel() for p in model.parameters() if id(p) not in linear_ids)
    assert memory.weight_bytes(shape, "int8") == total


@pytest.mark.parametrize("targets", [("q_proj", "v_proj"), ("gate_proj",)])
def test_training_items_follow_the_model(targets):
    from qlora_lab.finetune.lora import lora_params_of_model

    model, shape = tiny_llama_and_shape()
    n_params = sum(p.numel() for p in model.parameters())
    adapters = lora_params_of_model(model, 4, targets)
    full = memory.training_memory(shape, "full", seq_len=8)
    assert (full.method, full.weights, full.adapters, full.gradients) == ("full", 2 * n_params, 0.0, 2 * n_params)
    lora_run = memory.training_memory(shape, "lora", seq_len=8, r=4, target_modules=targets)
    assert (lora_run.method, lora_run.weights) == ("lora", 2 * n_params)  # a bf16 base
    assert lora_run.adapters == lora_run.gradients == 4 * adapters  # fp32 A and B, PEFT's default
    qlora_run = memory.training_memory(shape, "qlora", seq_len=8, r=4, target_modules=targets)
    linear_ids = {id(m.weight) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n != "lm_head"}
    unquantized = sum(p.numel() for p in model.parameters() if id(p) not in linear_ids)
    # PEFT's prepare_model_for_kbit_training casts what stays unquantized to fp32: 2 more bytes each
    assert qlora_run.method == "qlora" and qlora_run.weights == memory.weight_bytes(shape, "nf4-dq") + 2 * unquantized
    sharded = memory.training_memory(shape, "qlora", seq_len=8, r=4, target_modules=targets, fp32_unquantized=False)
    assert sharded.weights == memory.weight_bytes(shape, "nf4-dq") < 2 * n_params


def test_activation_arguments_are_checked_with_clear_messages():
    shape = CODELLAMA["7B"]
    assert memory.activation_bytes(shape, seq_len=1, batch=1) > 0
    for bad in (dict(seq_len=0, batch=1), dict(seq_len=16, batch=0), dict(seq_len=-1, batch=-1)):
        with pytest.raises(ValueError, match=f"seq_len={bad['seq_len']}, batch={bad['batch']}"):
            memory.activation_bytes(shape, **bad)
    with pytest.raises(ValueError, match="attention='flash'"):
        memory.activation_bytes(shape, 16, attention="flash")


def test_estimator_is_within_10_percent_of_the_1b_measurement():
    """benchmarks/memory_scale.py: one QLoRA and one LoRA step of a random 1.1B Llama (seq 512,
    checkpointing), every live tensor accounted for; the estimator of this commit against it."""
    import json

    from qlora_lab.paths import BENCHMARK_RESULTS_DIR

    result = json.loads((BENCHMARK_RESULTS_DIR / "memory_scale_cpu.json").read_text())
    shape = ModelShape(**result["shape"])
    assert 1.0e9 < shape.n_params < 1.2e9 and result["seq_len"] == 512 and set(result["modes"]) == {"qlora", "lora"}
    for method, measured in result["modes"].items():
        estimate = memory.training_memory(shape, method, seq_len=512, r=result["lora_r"])
        assert estimate.total == pytest.approx(measured["measured_peak_bytes"], rel=0.10), method
        assert estimate.weights == pytest.approx(measured["measured_breakdown"]["weights"], rel=0.01), method


def _saved_and_estimated(layers: int, attention: str, checkpointing: bool, seq_len: int = 48, batch: int = 2):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=1000, hidden_size=128, intermediate_size=344, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=4)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to(torch.bfloat16).train()
    model.set_attn_implementation(attention)
    if checkpointing:
        model.gradient_checkpointing_enable()
    ids = torch.randint(0, 1000, (batch, seq_len))
    return (measured_memory.saved_activation_bytes(model, ids),
            memory.activation_bytes(ModelShape.from_config(config), seq_len, batch, checkpointing, attention))


def test_with_checkpointing_one_more_layer_keeps_only_its_bf16_input():
    """Checkpointed, a layer keeps its input alone: 2 bytes · s·b·h, measured exactly (48·2·128·2 = 24 576)."""
    (measured_1, estimated_1), (measured_2, estimated_2) = (_saved_and_estimated(n, "sdpa", True) for n in (1, 2))
    assert measured_2 - measured_1 == 2 * 48 * 2 * 128 == estimated_2 - estimated_1


def test_one_more_layer_adds_the_measured_bytes_of_a_layer():
    """What one decoder layer saves, measured as the difference between a 2-layer and a 1-layer
    model (batch 2, so that s·b and s² are told apart): the formula's coefficients (24·s·b·h +
    8·s·b·ff + 6·a·s²·b, eager attention: all three terms) must hold to 1 %, where a coefficient
    one too large is 2-6 % off."""
    per_layer = [_saved_and_estimated(n, "eager", False) for n in (1, 2)]
    (measured_1, estimated_1), (measured_2, estimated_2) = per_layer
    assert estimated_2 - estimated_1 == pytest.approx(measured_2 - measured_1, rel=0.01)
