"""Chapter 8's self-check against independent computations: the cosine formula by hand, PEFT's own
adapters on the embedded model, and the SHA-256 split counted on freshly drawn prompts."""

import hashlib
import math
import random

import pytest

from qlora_lab.course import exercises_finetuning as ex
from qlora_lab.course.self_check import verifier
from qlora_lab.finetune.config import FinetuneConfig
from qlora_lab.finetune.functions_tasks import HELDOUT_FAMILIES, TRAIN_FAMILIES, build_problem


def cosine_by_hand(step: int, config: FinetuneConfig) -> float:
    """The rate logged at 1-based `step`: linear warm-up, then half a cosine (index step - 1)."""
    i, total = step - 1, config.max_steps
    warmup = min(config.warmup_steps, total)  # the loop never warms up longer than the run
    if i < warmup:
        return config.learning_rate * i / warmup
    return config.learning_rate * 0.5 * (1 + math.cos(math.pi * (i - warmup) / (total - warmup)))


def test_08_1_rates_match_the_cosine_schedule_by_hand():
    recipe = FinetuneConfig.for_data("functions")
    half = FinetuneConfig.for_data("functions", max_steps=ex.HALF_STEPS)
    answer = {"lr_pas_150_sur_300": cosine_by_hand(ex.HALF_STEPS, recipe),
              "lr_pas_150_sur_150": cosine_by_hand(ex.HALF_STEPS, half)}
    assert verifier("08.1", answer).juste
    assert answer["lr_pas_150_sur_150"] < answer["lr_pas_150_sur_300"] / 100  # the short run has annealed
    stopped_halfway = {**answer, "lr_pas_150_sur_150": answer["lr_pas_150_sur_300"]}  # the usual slip
    assert verifier("08.1", stopped_halfway).status == "partiel"


def test_08_1_learning_rate_at_matches_a_real_training_loop_log(tmp_path, single_thread):
    """A 4-step run of the recipe (tiny batches): the rates the loop logs are `learning_rate_at`'s."""
    from qlora_lab.finetune.loop import finetune

    steps = 4
    config = FinetuneConfig.for_data("functions", max_steps=steps, batch_size=2, seq_len=32, eval_every=0,
                                     save_every=0, output_dir=str(tmp_path / "run"))
    logged = [row["lr"] for row in finetune(config).metrics]
    assert logged == pytest.approx([ex.learning_rate_at(s, steps) for s in range(1, steps + 1)], rel=1e-9)
    assert logged == pytest.approx([cosine_by_hand(s, config) for s in range(1, steps + 1)], rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("r", ex.RANKS)
def test_08_2_counts_equal_peft_adapters_on_the_embedded_model(r):
    from peft import LoraConfig, get_peft_model

    from qlora_lab.model.models import load_model

    model, _ = load_model(quantization="none", device="cpu")
    recipe = FinetuneConfig.for_data("functions")
    peft_model = get_peft_model(model, LoraConfig(r=r, lora_alpha=2 * r, target_modules=list(recipe.target_modules),
                                                  task_type="CAUSAL_LM"))
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    assert verifier("08.2", {f"r{k}": (trainable if k == r else ex.lora_params_at_rank(k)) for k in ex.RANKS}).juste
    assert verifier("08.2", {f"r{k}": trainable + 1 for k in ex.RANKS}).status == "faux"


def test_08_2_is_linear_in_the_rank():
    """The solution's shortcut: the recipe's count (r = 16) scaled by r / 16."""
    at_16 = ex.lora_params_at_rank(16)
    assert {f"r{r}": at_16 * r // 16 for r in ex.RANKS} == {f"r{r}": ex.lora_params_at_rank(r) for r in ex.RANKS}


def test_08_3_split_share_counted_on_drawn_prompts():
    rng = random.Random("test-08-3")
    prompts = {build_problem(f, rng).prompt for _ in range(200) for f in TRAIN_FAMILIES}
    reserved = sum(int(hashlib.sha256(p.encode()).hexdigest(), 16) % 4 == 0 for p in prompts)
    answer = {"familles_entrainees": len({f.name for f in TRAIN_FAMILIES}),
              "familles_reservees": len({f.name for f in HELDOUT_FAMILIES}), "part_evaluation": reserved / len(prompts)}
    assert len(prompts) > 1000
    assert verifier("08.3", answer).juste
    assert verifier("08.3", {**answer, "part_evaluation": 0.5}).status != "juste"
    assert verifier("08.3", {**answer, "familles_reservees": answer["familles_entrainees"]}).status == "partiel"
