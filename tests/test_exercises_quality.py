"""Chapter 11's self-check against independent computations: the JSON read by hand, hooks of our own,
bitsandbytes' Linear8bitLt for LLM.int8(), a hand-written min/max grid for RTN."""

import json
import math

import pytest
import torch

from qlora_lab.course import exercises_quality as ex
from qlora_lab.course.self_check import verifier
from qlora_lab.paths import BENCHMARK_RESULTS_DIR


pytestmark = pytest.mark.usefixtures("eager_single_thread")


def test_11_1_bits_per_byte_and_rankings_from_the_saved_json():
    data = json.loads((BENCHMARK_RESULTS_DIR / ex.RESULTS_FILE).read_text(encoding="utf-8"))
    row = next(r for r in data["rows"] if r["format"] == "int3")
    by_hand = row["nats_per_token"] * row["n_tokens"] / math.log(2) / row["n_bytes"]
    one = {r["format"]: r["bits_per_byte"] for r in data["live_rows"]}
    eight = {r["format"]: r["bits_per_byte"] for r in data["rows"] if r["format"] in one}
    answer = {"bits_par_octet": by_hand, "meilleur_1_fichier": min(one, key=one.get),
              "meilleur_8_fichiers": min(eight, key=eight.get)}
    assert verifier("11.1", answer).juste
    bits_per_token = row["nats_per_token"] / math.log(2)  # the usual slip: per token, not per byte
    assert verifier("11.1", {**answer, "bits_par_octet": bits_per_token}).status == "partiel"
    wrong = max(eight, key=eight.get)
    assert verifier("11.1", {**answer, "meilleur_8_fichiers": wrong}).status == "partiel"


@pytest.fixture(scope="module")
def layer3():
    """Layer 3's down_proj and gate_proj inputs, captured by pre-hooks on a fresh model."""
    from qlora_lab.model.calibration import calibration_windows
    from qlora_lab.model.models import load_model

    model, tokenizer = load_model(quantization="none", device="cpu")
    windows = calibration_windows(tokenizer, n_windows=ex.N_WINDOWS, seq_len=ex.SEQ_LEN)
    mlp = model.model.layers[ex.LAYER].mlp
    seen = {"down": [], "gate": []}
    hooks = [mlp.down_proj.register_forward_pre_hook(lambda m, a: seen["down"].append(a[0].reshape(-1, a[0].shape[-1]))),
             mlp.gate_proj.register_forward_pre_hook(lambda m, a: seen["gate"].append(a[0].reshape(-1, a[0].shape[-1])))]
    with torch.no_grad():
        model(input_ids=windows)
    for hook in hooks:
        hook.remove()
    return {k: torch.cat(v).float() for k, v in seen.items()}, mlp


def test_11_2_against_bitsandbytes_linear8bitlt(layer3):
    from qlora_lab.quant.llm_int8 import to_linear8bitlt

    inputs, mlp = layer3
    x = inputs["down"][: ex.N_CALIBRATION].to(torch.bfloat16).float()
    reference = x @ mlp.down_proj.weight.data.float().T
    answer = {}
    for t in ex.THRESHOLDS:
        answer[f"colonnes_{t:g}"] = int((x.abs() >= t).any(dim=0).sum())
        with torch.no_grad():
            out = to_linear8bitlt(mlp.down_proj, threshold=t)(x)
        answer[f"erreur_{t:g}"] = float(torch.linalg.norm(out - reference) / torch.linalg.norm(reference))
    assert verifier("11.2", answer).juste
    assert answer["colonnes_3"] > answer["colonnes_12"]
    swapped = {**answer, "erreur_3": answer["erreur_12"], "erreur_12": answer["erreur_3"]}
    assert verifier("11.2", swapped).status == "partiel"


def rtn_by_hand(w: torch.Tensor, bits: int, group: int) -> torch.Tensor:
    """Asymmetric min/max grid per group of columns (range widened to 0, integer zero point), written out.

    320 columns are not a multiple of 128: the last group is shorter, as in GPTQ.
    """
    out = []
    for g in w.split(group, dim=1):
        lo, hi = g.amin(1, keepdim=True).clamp(max=0), g.amax(1, keepdim=True).clamp(min=0)
        scale = (hi - lo) / (2**bits - 1)
        zero = torch.round(-lo / scale)
        out.append((torch.clamp(torch.round(g / scale) + zero, 0, 2**bits - 1) - zero) * scale)
    return torch.cat(out, dim=1)


def test_11_3_rtn_by_hand_and_bits_per_weight(layer3):
    from qlora_lab.quant.gptq import gptq_quantize

    inputs, mlp = layer3
    x, w = inputs["gate"].double(), mlp.gate_proj.weight.data
    calibration, control = x[: ex.N_CALIBRATION], x[ex.N_CALIBRATION :]
    reference = control @ w.double().T

    def error(w_hat):
        return float(torch.linalg.norm(control @ w_hat.double().T - reference) / torch.linalg.norm(reference))

    answer = {}
    for group in ex.GROUP_SIZES:
        answer[f"bits_{group}"] = 3 + (16 + 16) / group  # fp16 scale + fp16 zero per group
        gptq = error(gptq_quantize(w, calibration.float(), bits=3, group_size=group))
        answer[f"ratio_{group}"] = gptq / error(rtn_by_hand(w.float(), 3, group))
        assert answer[f"ratio_{group}"] < 1  # GPTQ beats plain rounding on unseen tokens
    budget = {"3 bits": error(gptq_quantize(w, calibration.float(), bits=3, group_size=32)),
              "2 bits": error(gptq_quantize(w, calibration.float(), bits=2, group_size=16))}
    answer["a_4_bits"] = min(budget, key=budget.get)
    assert verifier("11.3", answer).juste
    assert verifier("11.3", {**answer, "bits_32": 3.5}).status == "partiel"  # the group-of-64 cost
    other = next(k for k in budget if k != answer["a_4_bits"])
    assert verifier("11.3", {**answer, "a_4_bits": other}).status == "partiel"
