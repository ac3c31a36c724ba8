"""The course's calculators: memory per GPU equals the estimator, LoRA counts equal PEFT's."""

import pytest

from qlora_lab.course import calculators
from qlora_lab.model.llama_shapes import CODELLAMA, LLAMA_ALL_LINEAR
from qlora_lab.sizing.memory import training_memory


@pytest.mark.parametrize("method", ["full", "lora", "qlora"])
def test_one_gpu_is_the_single_gpu_estimate(method):
    mem = calculators.memory_per_device("7B", method, seq_len=1024, batch=2, n_devices=1)
    one = training_memory(CODELLAMA["7B"], method, seq_len=1024, batch=2)
    assert mem.strategy == "single" and mem.total == pytest.approx(one.total)
    rows = calculators.memory_rows(mem)
    assert rows[-1]["octets"] == mem.total
    assert sum(r["octets"] for r in rows[:-1]) == pytest.approx(mem.total)


def test_fsdp_shares_the_model_and_ddp_does_not():
    fsdp = [calculators.memory_per_device("70B", "qlora", n_devices=n, strategy="fsdp").total for n in (2, 4, 8)]
    assert fsdp[0] > fsdp[1] > fsdp[2]
    ddp = calculators.memory_per_device("70B", "qlora", n_devices=4, strategy="ddp")
    assert ddp.total > training_memory(CODELLAMA["70B"], "qlora").total  # a replica plus its buckets


def test_the_guide_s_8_gb_holds_only_for_some_settings():
    """Erratum 8: QLoRA 7B at 512 tokens fits an 8 Gio card, full fine-tuning of 7B does not."""
    small = calculators.memory_per_device("7B", "qlora", 512)
    assert calculators.smallest_gpu_gib(small.total) == 8
    assert calculators.smallest_gpu_gib(calculators.memory_per_device("7B", "full", 512).total) > 8
    assert calculators.smallest_gpu_gib(1e15) is None
    assert "Gio" in calculators.memory_verdict(small)


def test_unknown_size_is_a_clear_error():
    with pytest.raises(ValueError, match="size='3B'"):
        calculators.memory_per_device("3B")


@pytest.mark.parametrize("r, targets", [(8, ("q_proj", "v_proj")), (16, LLAMA_ALL_LINEAR)])
def test_rank_row_equals_peft_on_the_embedded_model(r, targets, tmp_path):
    """Trainable parameters = PEFT's count; the adapter file = 4 bytes per parameter plus a header."""
    from peft import LoraConfig, get_peft_model

    from qlora_lab.model.models import load_model

    model, _ = load_model(quantization="none")
    peft_model = get_peft_model(model, LoraConfig(r=r, lora_alpha=2 * r, target_modules=list(targets)))
    trainable, _ = peft_model.get_nb_trainable_parameters()
    row = calculators.lora_rank_row(calculators.embedded_shape(), r, targets)
    assert row["paramètres"] == trainable
    peft_model.save_pretrained(tmp_path)
    size = (tmp_path / "adapter_model.safetensors").stat().st_size
    assert 0 <= size - row["taille"] < 64 * 1024
    assert row["part"] == pytest.approx(trainable / sum(p.numel() for p in model.base_model.parameters()
                                                        if not p.requires_grad), rel=0.01)


def test_rank_row_needs_a_target():
    with pytest.raises(ValueError, match="target_modules is empty"):
        calculators.lora_rank_row(calculators.embedded_shape(), 8, ())


def test_widgets_start_in_the_requested_state():
    mem = calculators.memory_calculator("13B", "lora", 1024, 2, 1).result
    assert mem.total == pytest.approx(training_memory(CODELLAMA["13B"], "lora", seq_len=1024, batch=2).total)
    row = calculators.lora_rank_explorer("CodeLlama-7B", 8, ("q_proj", "v_proj")).result
    assert row["paramètres"] == 32 * 2 * 8 * (4096 + 4096)  # 32 layers × 2 modules × r·(d_in + d_out)
    with pytest.raises(ValueError, match="seq_len"):
        calculators.memory_calculator(seq_len=1000)
    with pytest.raises(ValueError, match="r must be"):
        calculators.lora_rank_explorer(r=3)
    assert calculators.lora_rank_explorer(target_modules=()).result is None
