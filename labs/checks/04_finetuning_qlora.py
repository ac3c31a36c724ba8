"""Hidden tests of TP 4 (a QLoRA fine-tune of the embedded model, graded by running its code).

The student's kernel hands back plain data only: module names, parameter counts, the
fields of a FinetuneConfig, the pass@1 counts it measured and the trained LoRA weights
(floats). Here, outside the sandbox, the grader loads the embedded model in NF4 + double
quantization itself, attaches LoRA exactly as `qlora_lab.finetune` does, puts the
student's weights on it, and scores held-out problems itself: generated code runs against
its tests in `qlora_lab.finetune.code_runner`'s sandbox. A lab that did not really train
cannot pass, and a reported pass@1 that the weights do not give is caught.
"""

import dataclasses
import functools
import json

import torch

from qlora_lab.finetune.config import FinetuneConfig
from qlora_lab.finetune.lora import LLAMA_ALL_LINEAR
from qlora_lab.grading.answers import Check, expect_list, expect_tensor, expect_type

# Problems the student never sees: the notebook scores make_problems("heldout", 40) (seed 0).
GRADER_SEED = 2026
PROBLEMS = 40
PASS_THRESHOLD = 0.5
# Greedy decoding with the same weights gives the same completions up to float summation
# order (thread count): a couple of problems may flip, no more.
REPORT_TOLERANCE = 2


def recipe(targets=tuple(sorted(LLAMA_ALL_LINEAR)), output_dir: str = "runs/finetune") -> FinetuneConfig:
    """What question 3 asks for: chapter 8's 'functions' recipe in QLoRA, two fields changed."""
    return FinetuneConfig.for_data("functions", mode="qlora", target_modules=tuple(targets), output_dir=output_dir)


@functools.lru_cache(maxsize=1)
def reference_model():
    """The embedded model in NF4 + double quantization with fresh adapters, as `finetune` attaches them."""
    from transformers.utils import logging as transformers_logging

    from qlora_lab.backends import import_bnb
    from qlora_lab.finetune.adapters import attach_lora
    from qlora_lab.model.models import load_model

    import_bnb()
    transformers_logging.disable_progress_bar()
    torch.manual_seed(0)
    model, tokenizer = load_model(quantization="nf4", double_quant=True)
    return attach_lora(model, recipe()), tokenizer


def tiny_llama(hidden: int, intermediate: int, layers: int):
    """A small random Llama whose layer shapes differ from the embedded model's."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=hidden, intermediate_size=intermediate,
                                        num_hidden_layers=layers, num_attention_heads=2, num_key_value_heads=1,
                                        tie_word_embeddings=False))


def peft_trainable(shape: tuple[int, int, int], targets: list[str], r: int) -> int:
    """Trainable parameters PEFT itself adds with LoRA of rank r on `targets` (the reference)."""
    from peft import LoraConfig, get_peft_model

    wrapped = get_peft_model(tiny_llama(*shape), LoraConfig(r=r, lora_alpha=2 * r, target_modules=targets))
    return wrapped.get_nb_trainable_parameters()[0]


Q1_KERNEL = '''
def reponses(entrees):
    from transformers import LlamaConfig, LlamaForCausalLM
    autre = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                                         num_attention_heads=2, tie_word_embeddings=False))
    return {"modele": modules_cibles(modele), "autre": modules_cibles(autre)}
'''


def q1_verify(_, answers):
    expect_type(answers, dict)
    for key in ("modele", "autre"):
        assert expect_list(answers[key], str) == sorted(LLAMA_ALL_LINEAR), key


# (hidden, intermediate, layers) of the small models, then (targets, r) cases on each.
Q2_SHAPES = [(32, 48, 1), (48, 80, 2)]
Q2_CASES = [(["q_proj"], 4), (["k_proj", "v_proj"], 3), (["gate_proj", "down_proj", "o_proj"], 8),
            (sorted(LLAMA_ALL_LINEAR), 5), (["up_proj"], 1)]


def q2_inputs():
    return {"formes": Q2_SHAPES, "cas": Q2_CASES, "modele": [sorted(LLAMA_ALL_LINEAR), 16]}


Q2_KERNEL = '''
def reponses(entrees):
    from transformers import LlamaConfig, LlamaForCausalLM
    comptes = []
    for cache, inter, couches in entrees["formes"]:
        autre = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=cache, intermediate_size=inter,
                                             num_hidden_layers=couches, num_attention_heads=2,
                                             num_key_value_heads=1, tie_word_embeddings=False))
        comptes.append([parametres_lora(autre, list(cibles), r) for cibles, r in entrees["cas"]])
    cibles, r = entrees["modele"]
    return {"autres": comptes, "modele": parametres_lora(modele, list(cibles), r)}
'''


def q2_verify(inputs, answers):
    expect_type(answers, dict)
    counts = expect_list(answers["autres"], list, len(inputs["formes"]))
    for shape, got in zip(inputs["formes"], counts):
        expected = [peft_trainable(tuple(shape), list(targets), r) for targets, r in inputs["cas"]]
        assert expect_list(got, int, len(expected)) == expected, f"model {shape}"
    reference, _ = reference_model()
    assert expect_type(answers["modele"], int) == reference.get_nb_trainable_parameters()[0], "embedded model"


def q3_inputs():
    return {"cibles": ["k_proj", "o_proj", "up_proj"], "dossier": "runs/tp4-correction"}


Q3_KERNEL = '''
def reponses(entrees):
    import dataclasses, json
    config = configuration_affinage(list(entrees["cibles"]), entrees["dossier"])
    return {"classe": type(config).__module__ + "." + type(config).__qualname__,
            "champs": json.loads(json.dumps(dataclasses.asdict(config)))}
'''


def q3_verify(inputs, answers):
    expect_type(answers, dict)
    assert answers["classe"] == "qlora_lab.finetune.config.FinetuneConfig", answers["classe"]
    expected = json.loads(json.dumps(dataclasses.asdict(recipe(inputs["cibles"], inputs["dossier"]))))
    got = expect_type(answers["champs"], dict)
    assert set(got) == set(expected), "FinetuneConfig fields"
    wrong = sorted(name for name in expected if got[name] != expected[name] or type(got[name]) is not type(expected[name]))
    assert not wrong, f"fields that differ from the recipe: {wrong}"


Q4_KERNEL = '''
def reponses(entrees):
    lora = {nom: tenseur(p.detach().float()) for nom, p in resultat.model.named_parameters() if p.requires_grad}
    return {"avant": [score_avant.passed, score_avant.total], "apres": [score_apres.passed, score_apres.total],
            "lora": lora}
'''


def student_model(answers):
    """The reference model carrying the student's LoRA weights (each checked: name, dtype, shape)."""
    model, tokenizer = reference_model()
    trainable = {name: p for name, p in model.named_parameters() if p.requires_grad}
    expect_type(answers["lora"], dict)
    assert set(answers["lora"]) == set(trainable), "only the LoRA adapters of every linear layer train"
    with torch.no_grad():
        for name, parameter in trainable.items():
            parameter.copy_(expect_tensor(answers["lora"][name], "torch.float32", list(parameter.shape)))
    return model, tokenizer


def score(model, tokenizer, seed: int):
    from qlora_lab.finetune.functions_eval import score_functions
    from qlora_lab.finetune.functions_tasks import make_problems

    return score_functions(model, tokenizer, make_problems("heldout", PROBLEMS, seed=seed), progress=False)


def counts(answer, what: str) -> int:
    passed, total = expect_list(answer, int, 2, what)
    assert total == PROBLEMS and 0 <= passed <= total, f"{what}: scored on the notebook's {PROBLEMS} problems"
    return passed


def q4_verify(_, answers):
    expect_type(answers, dict)
    before, after = counts(answers["avant"], "score_avant"), counts(answers["apres"], "score_apres")
    model, tokenizer = student_model(answers)
    with model.disable_adapter():
        base = score(model, tokenizer, seed=0)
    trained = score(model, tokenizer, seed=0)
    assert abs(before - base.passed) <= REPORT_TOLERANCE, f"base model: {before} reported, {base.passed} measured"
    assert abs(after - trained.passed) <= REPORT_TOLERANCE, f"fine-tuned: {after} reported, {trained.passed} measured"


Q4_SKILL_KERNEL = '''
def reponses(entrees):
    return {"lora": {nom: tenseur(p.detach().float()) for nom, p in resultat.model.named_parameters()
                     if p.requires_grad}}
'''


def q4_skill_verify(_, answers):
    expect_type(answers, dict)
    model, tokenizer = student_model(answers)
    fresh = score(model, tokenizer, seed=GRADER_SEED)
    assert fresh.pass_at_1 >= PASS_THRESHOLD, f"pass@1 on problems never seen: {fresh.line()}"


CHECKS = {
    "q1_tests": Check(lambda: None, Q1_KERNEL, q1_verify),
    "q2_tests": Check(q2_inputs, Q2_KERNEL, q2_verify),
    "q3_tests": Check(q3_inputs, Q3_KERNEL, q3_verify),
    "q4_tests": Check(lambda: None, Q4_KERNEL, q4_verify),
    "q4_competence": Check(lambda: None, Q4_SKILL_KERNEL, q4_skill_verify),
}
