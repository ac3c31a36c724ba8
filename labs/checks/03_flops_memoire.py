"""Hidden tests of TP 3 (FLOPs, training memory), run by the grader outside the sandbox.

References (qlora_lab.sizing, torch's FlopCounterMode) are computed here; the student's
kernel only hands back its answers as plain data (see qlora_lab/grading/answers.py).
"""

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from qlora_lab.finetune.lora import lora_params_for_shape
from qlora_lab.grading.answers import Check, expect_list, expect_number, expect_type
from qlora_lab.sizing.flops import forward_flops_per_token, training_flops_per_token
from qlora_lab.sizing.memory import CODELLAMA, ModelShape, training_memory

Q1_CASES = [[175e9, 96, 2048, 12288], [1e9, 24, 2048, 2048], [6.7e9, 32, 4096, 4096], [1.2e8, 12, 1024, 768],
            [5e5, 2, 128, 64]]
Q1_KERNEL = '''
def reponses(entrees):
    return [flops_passe_avant_par_token(*cas) for cas in entrees]
'''


def q1_verify(cases, answers):
    expect_list(answers, float, len(cases))
    for case, got in zip(cases, answers):
        expected = forward_flops_per_token(*case)
        assert abs(got - expected) <= 1e-9 * expected


Q2_CASES = [[10, 64, 256], [7, 48, 192], [512, 768, 3072], [2048, 4096, 11008], [1, 3, 5]]
Q2_KERNEL = '''
def reponses(entrees):
    return [flops_mlp(*cas) for cas in entrees]
'''


def _measured_mlp_flops(n_tokens: int, d_model: int, d_ff: int) -> int:
    # measured on the meta device: shapes only, no memory and no compute
    with torch.device("meta"):
        block = nn.Sequential(nn.Linear(d_model, d_ff), nn.GELU(), nn.Linear(d_ff, d_model))
        with FlopCounterMode(display=False) as counter:
            block(torch.empty(n_tokens, d_model))
    return counter.get_total_flops()


def q2_verify(cases, answers):
    expect_list(answers, int, len(cases))
    for case, got in zip(cases, answers):
        assert got == _measured_mlp_flops(*case), case


Q3_CASES = [[6.7e9, 32, 32, 128, 4096], [1.2e8, 12, 12, 64, 1024], [6.5e10, 80, 64, 128, 2048], [3e5, 2, 4, 16, 128]]
Q3_KERNEL = '''
def reponses(entrees):
    return [flops_entrainement_par_token(*cas) for cas in entrees]
'''


def q3_verify(cases, answers):
    expect_list(answers, float, len(cases))
    for case, got in zip(cases, answers):
        expected = training_flops_per_token(*case)
        assert abs(got - expected) <= 1e-9 * expected


SHAPES = {"7B": CODELLAMA["7B"], "34B": CODELLAMA["34B"], "mini": ModelShape("mini", 256, 688, 4, 4, 4, 4096, True)}
METHODS = {"complet": "full", "lora": "lora", "qlora": "qlora"}
KEYS = {"poids": "weights", "adaptateurs": "adapters", "gradients": "gradients", "optimiseur": "optimizer"}


def q4_inputs():
    cases = [{"forme": "7B", "methode": "complet", "n_adaptateur": 0, "r": 0}]
    for name, shape in SHAPES.items():
        for r in (8, 64):
            n = lora_params_for_shape(shape.hidden, shape.intermediate, shape.n_layers, shape.n_heads,
                                      shape.n_kv_heads, r=r)
            cases += [{"forme": name, "methode": m, "n_adaptateur": n if m != "complet" else 0, "r": r}
                      for m in METHODS]
    return cases


Q4_KERNEL = '''
def reponses(entrees):
    from qlora_lab.sizing.memory import CODELLAMA, ModelShape
    formes = {"7B": CODELLAMA["7B"], "34B": CODELLAMA["34B"],
              "mini": ModelShape("mini", 256, 688, 4, 4, 4, 4096, True)}
    postes = [memoire_entrainement(formes[c["forme"]], c["methode"], c["n_adaptateur"]) for c in entrees]
    try:
        memoire_entrainement(formes["7B"], "int3")
    except ValueError:
        inconnue = "ValueError"
    else:
        inconnue = "rien"
    return {"postes": [dict(p) for p in postes], "inconnue": inconnue}
'''


def q4_verify(cases, answers):
    expect_type(answers, dict)
    assert answers["inconnue"] == "ValueError"
    expect_list(answers["postes"], dict, len(cases))
    for case, items in zip(cases, answers["postes"]):
        shape = SHAPES[case["forme"]]
        if case["r"] == 0:
            assert abs(sum(expect_number(v) for v in items.values()) / shape.n_params - 12) < 1e-9
            continue
        reference = training_memory(shape, METHODS[case["methode"]], r=case["r"])
        for key, attribute in KEYS.items():
            expected = getattr(reference, attribute)
            assert abs(expect_number(items[key]) - expected) <= 1e-9 * max(expected, 1.0), (case, key)


CHECKS = {
    "q1_tests": Check(lambda: Q1_CASES, Q1_KERNEL, q1_verify),
    "q2_tests": Check(lambda: Q2_CASES, Q2_KERNEL, q2_verify),
    "q3_tests": Check(lambda: Q3_CASES, Q3_KERNEL, q3_verify),
    "q4_tests": Check(q4_inputs, Q4_KERNEL, q4_verify),
}
