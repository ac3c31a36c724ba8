"""Hidden tests of TP 2 (NF4, bits per parameter, double quantization), run by the grader.

References (bitsandbytes, qlora_lab.quant) are computed here, outside the sandbox; the
student's kernel only hands back its answers as plain data (see qlora_lab/grading/answers.py).
"""

import torch

from qlora_lab.backends import import_bnb
from qlora_lab.grading.answers import Check, expect_list, expect_number, expect_tensor
from qlora_lab.quant.double_quant import bits_per_param
from qlora_lab.quant.nf4 import nf4_levels

LEVELS_KERNEL = '''
def reponses(entrees):
    return tenseur(niveaux_nf4())
'''


def no_inputs():
    return None


def q1_forme_verify(_, answer):
    levels = expect_tensor(answer, "torch.float32", (16,))
    assert torch.all(levels[1:] > levels[:-1])
    assert levels.min().item() == -1.0 and levels.max().item() == 1.0
    assert (levels == 0).sum().item() == 1


def q1_valeurs_verify(_, answer):
    levels = expect_tensor(answer, "torch.float32", (16,))
    assert (levels < 0).sum().item() == 7 and (levels > 0).sum().item() == 8
    reference = import_bnb().functional.get_4bit_type("nf4", device="cpu")
    torch.testing.assert_close(levels, reference, atol=1e-4, rtol=0)
    torch.testing.assert_close(levels, nf4_levels(), atol=1e-6, rtol=0)


def q2_inputs():
    cases = []
    for k, (size, blocksize) in enumerate([(4 * 128, 64), (64 * 32, 64), (128 * 8, 128), (256 * 4, 256)]):
        generator = torch.Generator().manual_seed(500 + k)
        scale = 1.0 if k == 0 else 3.0
        cases.append({"x": (torch.randn(size, generator=generator) * scale).tolist(), "blocksize": blocksize})
    return cases


Q2_KERNEL = '''
def reponses(entrees):
    import torch
    sortie = []
    for cas in entrees:
        x = torch.tensor(cas["x"], dtype=torch.float32)
        indices, absmax = quantifier_nf4(x, blocksize=cas["blocksize"])
        sortie.append({"indices": tenseur(indices), "absmax": tenseur(absmax),
                       "x_hat": tenseur(dequantifier_nf4(indices, absmax, x.shape))})
    return sortie
'''


def q2_verify(cases, answers):
    F = import_bnb().functional
    expect_list(answers, dict, len(cases))
    for case, answer in zip(cases, answers):
        x, blocksize = torch.tensor(case["x"], dtype=torch.float32), case["blocksize"]
        n_blocks = x.numel() // blocksize
        indices = expect_tensor(answer["indices"], "torch.uint8", (n_blocks, blocksize))
        absmax = expect_tensor(answer["absmax"], "torch.float32", (n_blocks,))
        x_hat = expect_tensor(answer["x_hat"], "torch.float32", list(x.shape))
        assert int(indices.max()) <= 15
        assert (x - x_hat).abs().max() < 0.2 * x.abs().max()
        packed, state = F.quantize_4bit(x, blocksize=blocksize, compress_statistics=False, quant_type="nf4")
        torch.testing.assert_close(absmax, state.absmax, atol=1e-6, rtol=0)
        # bitsandbytes rounds at the level midpoints too: at most a handful of ties may differ
        assert (x_hat - F.dequantize_4bit(packed, state)).abs().gt(1e-4).float().mean() < 1e-3


Q3_CASES = [[4, 64, False, 256], [4, 64, True, 256], [4, 128, False, 256], [4, 128, True, 256],
            [4, 32, False, 256], [8, 32, True, 128], [2, 128, True, 64]]

Q3_KERNEL = '''
def reponses(entrees):
    return [bits_par_parametre(b, taille, dq, taille2) for b, taille, dq, taille2 in entrees]
'''


def _measured_bits(n: int, blocksize: int, double_quant: bool) -> float:
    # measured on a real bitsandbytes QuantState: packed codes + absmax (+ nested state2)
    F = import_bnb().functional
    packed, state = F.quantize_4bit(torch.randn(n), blocksize=blocksize, compress_statistics=double_quant,
                                    quant_type="nf4")
    total = packed.numel() * packed.element_size() * 8 + state.absmax.numel() * state.absmax.element_size() * 8
    if state.nested:
        total += state.state2.absmax.numel() * state.state2.absmax.element_size() * 8
    return total / n


def q3_verify(cases, answers):
    expect_list(answers, float, len(cases))
    for (bits, blocksize, dq, blocksize2), got in zip(cases, answers):
        expected = bits_per_param(blocksize=blocksize, double_quant=dq, dq_blocksize=blocksize2, weight_bits=bits)
        assert abs(got - expected) < 1e-9
        if bits == 4 and blocksize2 == 256 and blocksize in (64, 128):
            assert abs(got - _measured_bits(blocksize * 256 * 4, blocksize, dq)) < 1e-6


Q4_CASES = [[65e9, 64, 256], [7e9, 64, 256], [1e9, 128, 256], [3.5e8, 32, 128]]

Q4_KERNEL = '''
def reponses(entrees):
    return [economie_double_quant_go(n, taille, taille2) for n, taille, taille2 in entrees]
'''


def q4_verify(cases, answers):
    expect_list(answers, float, len(cases))
    for (n, blocksize, blocksize2), got in zip(cases, answers):
        without = bits_per_param(blocksize=blocksize, double_quant=False, weight_bits=4)
        with_dq = bits_per_param(blocksize=blocksize, double_quant=True, dq_blocksize=blocksize2, weight_bits=4)
        expected = (without - with_dq) * n / 8 / 1e9
        assert abs(expect_number(got) - expected) < 1e-9 * max(1.0, expected)


CHECKS = {
    "q1_forme": Check(no_inputs, LEVELS_KERNEL, q1_forme_verify),
    "q1_valeurs": Check(no_inputs, LEVELS_KERNEL, q1_valeurs_verify),
    "q2_tests": Check(q2_inputs, Q2_KERNEL, q2_verify),
    "q3_tests": Check(lambda: Q3_CASES, Q3_KERNEL, q3_verify),
    "q4_tests": Check(lambda: Q4_CASES, Q4_KERNEL, q4_verify),
}
