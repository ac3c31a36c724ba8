"""Hidden tests of TP 1 (absmax, zero-point, blocks), run by the grader outside the sandbox.

See qlora_lab/grading/answers.py: `inputs` are drawn here, the student's kernel runs
`reponses(entrees)` and hands back plain data, `verify` compares it with
qlora_lab.quant.absmax computed here. Never released, never visible to a student's code.
"""

import torch

from qlora_lab.grading.answers import Check, expect_list, expect_number, expect_tensor, expect_type
from qlora_lab.quant.absmax import dequantize, quantization_error, quantize


def _draw(seed: int, shape, scale: float = 1.0, shift: float = 0.0, uniform: bool = False) -> dict:
    generator = torch.Generator().manual_seed(seed)
    x = (torch.rand(shape, generator=generator) if uniform else torch.randn(shape, generator=generator)) * scale + shift
    return {"forme": list(shape), "x": x.flatten().tolist()}


def _tensor(case: dict) -> torch.Tensor:
    return torch.tensor(case["x"], dtype=torch.float32).reshape(case["forme"])


def _close_to_reference(obtained: torch.Tensor, expected: torch.Tensor, step: float) -> None:
    # x/s and x*(1/s) may round differently on an exact tie: allow a rare one-step gap
    gap = (obtained - expected).abs()
    assert gap.max() <= step * 1.001 and (gap > 1e-5).float().mean() <= 0.02


# ----------------------------------------------------------------- question 1: absmax


def q1_inputs():
    cases = [dict(_draw(100, (16, 32)), bits=8)]
    for bits in (8, 4, 3):
        for k, shape in enumerate([(64,), (8, 33), (3, 4, 5)]):
            cases.append(dict(_draw(110 + 10 * bits + k, shape, scale=5.0), bits=bits))
    return cases


Q1_KERNEL = '''
def reponses(entrees):
    import torch
    sortie = []
    for cas in entrees:
        x = torch.tensor(cas["x"], dtype=torch.float32).reshape(cas["forme"])
        codes, echelle = quantifier_absmax(x, bits=cas["bits"])
        sortie.append({"codes": tenseur(codes), "echelle": float(echelle),
                       "x_hat": tenseur(dequantifier_absmax(codes, echelle))})
    return sortie
'''


def q1_verify(cases, answers):
    expect_list(answers, dict, len(cases))
    for case, answer in zip(cases, answers):
        x, bits = _tensor(case), case["bits"]
        codes = expect_tensor(answer["codes"], "torch.int8", case["forme"])
        scale = expect_number(answer["echelle"])
        x_hat = expect_tensor(answer["x_hat"], "torch.float32", case["forme"])
        assert codes.abs().max().item() == 2 ** (bits - 1) - 1
        assert (x - x_hat).abs().max() <= scale / 2 + 1e-6
        expected = dequantize(quantize(x, bits=bits, scheme="absmax", granularity="tensor"))
        _close_to_reference(x_hat, expected, scale)


# ------------------------------------------------------------- question 2: zero-point


def q2_inputs():
    cases = [dict(_draw(200, (1000,), scale=3.0, shift=1.0, uniform=True), bits=8)]
    for bits in (8, 4):
        cases += [dict(_draw(210 + bits, (500,), scale=2.0, shift=1.0), bits=bits),
                  dict(_draw(220 + bits, (20, 7), shift=-3.0), bits=bits),
                  dict(_draw(230 + bits, (300,), scale=5.0, uniform=True), bits=bits)]
    return cases


Q2_KERNEL = '''
def reponses(entrees):
    import torch
    sortie = []
    for cas in entrees:
        x = torch.tensor(cas["x"], dtype=torch.float32).reshape(cas["forme"])
        codes, echelle, zero = quantifier_zeropoint(x, bits=cas["bits"])
        sortie.append({"codes": tenseur(codes), "echelle": float(echelle), "zero": float(zero),
                       "x_hat": tenseur(dequantifier_zeropoint(codes, echelle, zero))})
    return sortie
'''


def q2_verify(cases, answers):
    expect_list(answers, dict, len(cases))
    for case, answer in zip(cases, answers):
        x, bits = _tensor(case), case["bits"]
        codes = expect_tensor(answer["codes"], "torch.uint8", case["forme"])
        scale, zero = expect_number(answer["echelle"]), expect_number(answer["zero"])
        x_hat = expect_tensor(answer["x_hat"], "torch.float32", case["forme"])
        qt = quantize(x, bits=bits, scheme="zeropoint", granularity="tensor")
        assert int(codes.max()) <= 2**bits - 1
        assert abs(scale - float(qt.scale)) <= 1e-6 * float(qt.scale)
        assert zero == int(qt.zero_point)
        _close_to_reference(x_hat, dequantize(qt), float(qt.scale))


# ----------------------------------------------------------------- question 3: blocks


def q3_inputs():
    cases = [dict(_draw(300, (4, 64)), bits=8, blocksize=32)]
    for k, (bits, blocksize) in enumerate([(8, 64), (4, 64), (8, 128), (4, 16)]):
        cases.append(dict(_draw(310 + k, (8, 256), scale=3.0), bits=bits, blocksize=blocksize))
    return cases


Q3_KERNEL = '''
def reponses(entrees):
    import torch
    sortie = []
    for cas in entrees:
        x = torch.tensor(cas["x"], dtype=torch.float32).reshape(cas["forme"])
        codes, echelles = quantifier_blocs(x, bits=cas["bits"], blocksize=cas["blocksize"])
        sortie.append({"codes": tenseur(codes), "echelles": tenseur(echelles),
                       "x_hat": tenseur(dequantifier_blocs(codes, echelles, x.shape))})
    return sortie
'''


def q3_verify(cases, answers):
    expect_list(answers, dict, len(cases))
    for case, answer in zip(cases, answers):
        x, bits, blocksize = _tensor(case), case["bits"], case["blocksize"]
        n_blocks = x.numel() // blocksize
        codes = expect_tensor(answer["codes"], "torch.int8", (n_blocks, blocksize))
        scales = expect_tensor(answer["echelles"], "torch.float32", (n_blocks,))
        x_hat = expect_tensor(answer["x_hat"], "torch.float32", case["forme"])
        assert codes.abs().max().item() <= 2 ** (bits - 1) - 1
        qt = quantize(x, bits=bits, scheme="absmax", granularity="block", blocksize=blocksize)
        torch.testing.assert_close(scales, qt.scale, rtol=1e-6, atol=0)
        _close_to_reference(x_hat, dequantize(qt), float(qt.scale.max()))


# ------------------------------------------------------------ question 4: the outlier


def q4_inputs():
    weights = _draw(400, (64, 64), scale=0.02)
    weights["x"][0] = 1.0  # one outlier, 50 standard deviations
    cases = [dict(weights, bits=4, blocksize=64)]
    for k, (bits, blocksize) in enumerate([(4, 64), (8, 32)]):
        case = _draw(410 + k, (32, 128))
        case["x"][3 * 128 + 7] = 40.0
        cases.append(dict(case, bits=bits, blocksize=blocksize))
    return cases


Q4_KERNEL = '''
def reponses(entrees):
    import torch
    sortie = []
    for cas in entrees:
        x = torch.tensor(cas["x"], dtype=torch.float32).reshape(cas["forme"])
        sortie.append(erreurs_tenseur_et_blocs(x, bits=cas["bits"], blocksize=cas["blocksize"]))
    return sortie
'''


def q4_verify(cases, answers):
    expect_list(answers, dict, len(cases))
    for case, errors in zip(cases, answers):
        x, bits, blocksize = _tensor(case), case["bits"], case["blocksize"]
        assert set(errors) == {"tenseur", "blocs"}
        for key, granularity in [("tenseur", "tensor"), ("blocs", "block")]:
            expect_type(errors[key], float, key)
            qt = quantize(x, bits=bits, scheme="absmax", granularity=granularity, blocksize=blocksize)
            expected = quantization_error(x, dequantize(qt))["mse"]
            assert abs(errors[key] - expected) <= 0.02 * expected
        assert errors["blocs"] < errors["tenseur"] / 10


CHECKS = {
    "q1_tests": Check(q1_inputs, Q1_KERNEL, q1_verify),
    "q2_tests": Check(q2_inputs, Q2_KERNEL, q2_verify),
    "q3_tests": Check(q3_inputs, Q3_KERNEL, q3_verify),
    "q4_tests": Check(q4_inputs, Q4_KERNEL, q4_verify),
}
