"""Speed verdicts follow the measurement: faster, slower or as fast, and the CPU flags' reason."""

import pytest

from qlora_lab.course.speed_verdicts import compare_speed, dynamic_int8_verdict, half_precision_verdict


@pytest.mark.parametrize("seconds, reference, expected", [
    (1.0, 2.8, "bf16 est 2,8 fois plus rapide que fp32"),
    (3.4, 1.0, "bf16 est 3,4 fois plus lent que fp32"),
    (1.05, 1.0, "bf16 va aussi vite que fp32 (rapport 0,95"),
])
def test_compare_speed_follows_the_ratio(seconds, reference, expected):
    assert compare_speed("bf16", seconds, "fp32", reference).startswith(expected)


def test_compare_speed_rejects_non_positive_durations():
    with pytest.raises(ValueError, match="positive"):
        compare_speed("a", 0.0, "b", 1.0)


def test_half_precision_verdict_names_amx_only_when_bf16_is_faster_and_the_flag_is_there():
    amx = ["avx512_bf16", "avx512_fp16", "amx_bf16", "amx_tile"]
    text = half_precision_verdict({"fp32": 1.0, "fp16": 1.0, "bf16": 0.36}, "cpu", amx)
    assert "bf16 est 2,8 fois plus rapide" in text and "amx_bf16" in text
    assert "fp16 va aussi vite que fp32" in text and "amx_fp16 absent" in text and "AVX512-FP16" in text
    assert text.startswith("Mesuré sur ce processeur :")
    slow = half_precision_verdict({"fp32": 1.0, "fp16": 4.0, "bf16": 3.0}, "cpu", ["avx2"])
    assert "fp16 est 4,0 fois plus lent" in slow and "ni AMX ni AVX512-BF16" in slow
    assert "amx_bf16" not in half_precision_verdict({"fp32": 1.0, "fp16": 1.0, "bf16": 2.0}, "cpu", amx)
    gpu = half_precision_verdict({"fp32": 1.0, "fp16": 0.1, "bf16": 0.1}, "cuda", amx)
    assert "ce GPU" in gpu and "AMX" not in gpu
    with pytest.raises(ValueError, match="bf16"):
        half_precision_verdict({"fp32": 1.0, "fp16": 1.0}, "cpu")


def test_dynamic_int8_verdict_explains_the_overhead_when_slower():
    slow = dynamic_int8_verdict(0.51, 1.74, width=128)
    assert "3,4 fois plus lent" in slow and "0,51 ms → 1,74 ms" in slow and "coûte plus cher" in slow
    assert "compense à peu près" in dynamic_int8_verdict(1.0, 1.02, width=512)
    assert "fait gagner plus" in dynamic_int8_verdict(2.0, 1.0, width=2048)
