"""Hidden tests of TP 4 (QLoRA fine-tuning of the embedded model), run by the grader.

The student's kernel hands back plain data only: module names, token ids, the LoRA
configuration's fields, its two measured losses and the trained LoRA weights (floats).
Here, outside the sandbox, the grader loads the embedded model in NF4 + double
quantization itself, puts the student's LoRA weights on it and measures the validation
loss: a lab that did not really train cannot pass (see qlora_lab/grading/answers.py).
"""

import functools
import random

import torch

from qlora_lab.finetune.lora import LLAMA_ALL_LINEAR
from qlora_lab.grading.answers import Check, expect_list, expect_number, expect_tensor, expect_type

OPERATIONS = [("plus", "+"), ("moins", "-"), ("fois", "*")]


def arithmetic_pairs(n: int, seed: int) -> list[tuple[str, str]]:
    """The notebook's paires_calcul: (instruction, response) pairs."""
    rng = random.Random(seed)
    pairs = []
    for _ in range(n):
        a, b = rng.randint(2, 99), rng.randint(2, 99)
        name, symbol = rng.choice(OPERATIONS)
        pairs.append((f"# Calcule {a} {name} {b}\n", f"resultat = {a} {symbol} {b}\n"))
    return pairs


@functools.lru_cache(maxsize=1)
def reference_model():
    """The embedded model in NF4 + double quantization, with a fresh r=8 LoRA on every linear layer."""
    from peft import LoraConfig, get_peft_model

    from qlora_lab.backends import import_bnb
    from qlora_lab.model.models import load_model

    from transformers.utils import logging as transformers_logging

    import_bnb()
    transformers_logging.disable_progress_bar()
    torch.manual_seed(0)
    model, tokenizer = load_model(quantization="nf4", double_quant=True)
    model.train()
    config = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=sorted(LLAMA_ALL_LINEAR),
                        task_type="CAUSAL_LM")
    return get_peft_model(model, config), tokenizer


def encode(prompt: str, response: str, tokenizer) -> tuple[list[int], list[int]]:
    ids_prompt = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    ids_response = tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return ids_prompt + ids_response, [-100] * len(ids_prompt) + ids_response


def validation_loss(model, tokenizer) -> float:
    """Mean cross-entropy on the response tokens of the 16 validation pairs (the notebook's)."""
    examples = [encode(p, r, tokenizer) for p, r in arithmetic_pairs(16, seed=1)]
    length = max(len(ids) for ids, _ in examples)
    batch = {"input_ids": torch.full((len(examples), length), tokenizer.pad_token_id),
             "attention_mask": torch.zeros((len(examples), length), dtype=torch.long),
             "labels": torch.full((len(examples), length), -100)}
    for i, (ids, labels) in enumerate(examples):
        batch["input_ids"][i, : len(ids)] = torch.tensor(ids)
        batch["attention_mask"][i, : len(ids)] = 1
        batch["labels"][i, : len(labels)] = torch.tensor(labels)
    with torch.no_grad():
        return model(**batch).loss.item()


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


def q2_inputs():
    return [list(pair) for pair in arithmetic_pairs(16, seed=1)[:5]] + [["x", "y = 1\n"], ["# Calcule 2 plus 3\n",
                                                                                        "resultat = 2 + 3\n"]]


Q2_KERNEL = '''
def reponses(entrees):
    return [list(encoder_exemple(consigne, reponse, tokenizer)) for consigne, reponse in entrees]
'''


def q2_verify(pairs, answers):
    _, tokenizer = reference_model()
    expect_list(answers, list, len(pairs))
    for (prompt, response), answer in zip(pairs, answers):
        assert len(answer) == 2
        ids, labels = expect_list(answer[0], int), expect_list(answer[1], int)
        assert (ids, labels) == encode(prompt, response, tokenizer)


Q3_KERNEL = '''
def reponses(entrees):
    visible = configuration_lora(["q_proj", "v_proj"])
    config = configuration_lora(list(entrees))
    return {"classe": type(config).__module__ + "." + type(config).__qualname__,
            "visible": [visible.r, visible.lora_alpha],
            "r": config.r, "lora_alpha": config.lora_alpha, "lora_dropout": config.lora_dropout,
            "target_modules": sorted(config.target_modules),
            "task_type": str(getattr(config.task_type, "value", config.task_type))}
'''


def q3_verify(targets, answers):
    expect_type(answers, dict)
    assert answers["classe"].endswith(".LoraConfig") and answers["classe"].startswith("peft.")
    assert expect_list(answers["visible"], int) == [8, 16]
    assert expect_type(answers["r"], int) == 8 and expect_type(answers["lora_alpha"], int) == 16
    assert expect_number(answers["lora_dropout"]) == 0.0
    assert expect_list(answers["target_modules"], str) == sorted(targets)
    assert answers["task_type"] == "CAUSAL_LM"


Q4_KERNEL = '''
def reponses(entrees):
    lora = {nom: tenseur(p.detach().float()) for nom, p in modele_lora.named_parameters() if p.requires_grad}
    return {"perte_avant": float(perte_avant), "perte_apres": float(perte_apres), "lora": lora}
'''


def q4_verify(_, answers):
    model, tokenizer = reference_model()
    expect_type(answers, dict)
    before, after = expect_number(answers["perte_avant"]), expect_number(answers["perte_apres"])
    trainable = {name: p for name, p in model.named_parameters() if p.requires_grad}
    expect_type(answers["lora"], dict)
    assert set(answers["lora"]) == set(trainable), "only the LoRA adapters of every linear layer train"
    with torch.no_grad():
        for name, parameter in trainable.items():
            parameter.copy_(expect_tensor(answers["lora"][name], "torch.float32", list(parameter.shape)))
    with model.disable_adapter():
        base = validation_loss(model, tokenizer)
    trained = validation_loss(model, tokenizer)
    assert abs(before - base) <= 0.02 * base, "loss before training: the base model's, on the responses only"
    assert abs(after - trained) <= 0.02 * trained, "the reported loss is the one of the handed-in adapters"
    assert trained < 0.75 * base, "measured improvement too small"


CHECKS = {
    "q1_tests": Check(lambda: None, Q1_KERNEL, q1_verify),
    "q2_tests": Check(q2_inputs, Q2_KERNEL, q2_verify),
    "q3_tests": Check(lambda: sorted(LLAMA_ALL_LINEAR), Q3_KERNEL, q3_verify),
    "q4_tests": Check(lambda: None, Q4_KERNEL, q4_verify),
}
