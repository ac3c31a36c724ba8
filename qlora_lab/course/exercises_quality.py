"""Self-check of chapter 11's exercises (bits per byte, LLM.int8()'s threshold, GPTQ's group size).

Expected values come from the package: the quality benchmark's saved rows read back through
`LossReport` (11.1), and the chapter's layer experiments redone on the embedded model with
`decomposition_error`, `gptq_quantize` and `rtn_quantize` (11.2, 11.3). The layer inputs are
captured once, on first use, exactly as the chapter captures them; the model and the
transformers stack are imported only then, so other chapters' self-checks stay light.
"""

from __future__ import annotations

import functools
from typing import Any

import torch

from qlora_lab.course.benchmark_results import load_results
from qlora_lab.course.self_check import Checker, choice, exact, numeric, parts
from qlora_lab.model.validation import LossReport
from qlora_lab.quant.double_quant import bits_per_param
from qlora_lab.quant.gptq import gptq_quantize, output_error, rtn_quantize
from qlora_lab.quant.llm_int8 import decomposition_error

RESULTS_FILE = "quality_table_cpu.json"
LIVE_FORMATS = ("none", "int4", "nf4")  # the formats section 11.1 scores again on one file
BPB_FORMAT = "int3"  # 11.1: the row whose bits per byte are recomputed from its counts
LAYER = 3  # the decoder layer of sections 11.3-11.5
N_WINDOWS, SEQ_LEN = 8, 256  # the chapter's calibration windows (8 x 256 tokens)
N_CALIBRATION = 1024  # first tokens: calibration (GPTQ) or the 11.3 sample; the rest: control
THRESHOLDS = (3.0, 12.0)  # 11.2: LLM.int8()'s 6.0 halved and doubled
GPTQ_BITS = 3  # 11.3: GPTQ against RTN at 3 bits ...
GROUP_SIZES = (32, 128)  # ... with groups smaller and larger than the chapter's 64
BUDGET_SETTINGS = {"3 bits": (3, 32), "2 bits": (2, 16)}  # 11.3: two ways to spend 4 bits per weight


def _quality_results() -> dict[str, Any]:
    return load_results()[RESULTS_FILE]


def benchmark_bits_per_byte(fmt: str = BPB_FORMAT) -> float:
    """11.1: bits per byte of one benchmark row, from its token and byte counts (`LossReport`)."""
    row = next(r for r in _quality_results()["rows"] if r["format"] == fmt)
    report = LossReport(row["nats_per_token"] * row["n_tokens"], row["n_tokens"], row["n_bytes"])
    return report.bits_per_byte


def best_format(key: str) -> str:
    """11.1: the format of `LIVE_FORMATS` with the fewest bits per byte, in the rows under `key`.

    "live_rows" is the first validation file (section 11.1 checks its numbers live), "rows"
    the eight files of the full table.
    """
    rows = [r for r in _quality_results()[key] if r["format"] in LIVE_FORMATS]
    return min(rows, key=lambda r: r["bits_per_byte"])["format"]


@functools.cache
def layer_inputs() -> tuple[dict[str, torch.Tensor], torch.nn.Module]:
    """The inputs of every Linear of decoder layer `LAYER` on the chapter's windows, and the layer."""
    from qlora_lab.model.calibration import calibration_windows, capture_inputs, decoder_layers
    from qlora_lab.model.models import load_model

    model, tokenizer = load_model(quantization="none", device="cpu")
    windows = calibration_windows(tokenizer, n_windows=N_WINDOWS, seq_len=SEQ_LEN)
    block = decoder_layers(model)[LAYER]
    return capture_inputs(model, windows, block), block


@functools.cache
def threshold_effect(threshold: float) -> dict[str, float]:
    """11.2: `decomposition_error` on down_proj's first 1024 inputs (bf16, as in 11.3) at `threshold`."""
    inputs, block = layer_inputs()
    x = inputs["mlp.down_proj"][:N_CALIBRATION].to(torch.bfloat16)
    return decomposition_error(x, block.mlp.down_proj.weight.data, threshold=threshold)


@functools.cache
def gate_proj_error(bits: int, group_size: int, method: str = "gptq") -> float:
    """11.3: relative output error of gate_proj on the control tokens, GPTQ or RTN."""
    inputs, block = layer_inputs()
    x, w = inputs["mlp.gate_proj"], block.mlp.gate_proj.weight.data
    calibration, control = x[:N_CALIBRATION], x[N_CALIBRATION:]
    if method == "gptq":
        w_hat = gptq_quantize(w, calibration, bits=bits, group_size=group_size)
    else:
        w_hat = rtn_quantize(w, bits, group_size)
    return output_error(w, w_hat, control)


def gptq_over_rtn(group_size: int, bits: int = GPTQ_BITS) -> float:
    """11.3: GPTQ's output error over RTN's on the same grid."""
    return gate_proj_error(bits, group_size) / gate_proj_error(bits, group_size, "rtn")


def grid_bits_per_weight(group_size: int, bits: int = GPTQ_BITS) -> float:
    """11.3: code bits plus a float16 scale and a float16 zero (32 bits) per group."""
    return bits_per_param(blocksize=group_size, double_quant=False, weight_bits=bits)


def best_budget_setting() -> str:
    """11.3: of `BUDGET_SETTINGS` (same bits per weight), the one with the smaller GPTQ error."""
    return min(BUDGET_SETTINGS, key=lambda name: gate_proj_error(*BUDGET_SETTINGS[name]))


EXERCISES: dict[str, Checker] = {
    "11.1": parts({"bits_par_octet": numeric(benchmark_bits_per_byte, rtol=1e-4, partial_rtol=0.05),
                   "meilleur_1_fichier": choice(lambda: best_format("live_rows"), LIVE_FORMATS),
                   "meilleur_8_fichiers": choice(lambda: best_format("rows"), LIVE_FORMATS)}),
    "11.2": parts({**{f"colonnes_{t:g}": exact(lambda t=t: threshold_effect(t)["n_outliers"]) for t in THRESHOLDS},
                   **{f"erreur_{t:g}": numeric(lambda t=t: threshold_effect(t)["llm_int8"]) for t in THRESHOLDS}}),
    "11.3": parts({**{f"bits_{g}": numeric(lambda g=g: grid_bits_per_weight(g), rtol=1e-6) for g in GROUP_SIZES},
                   **{f"ratio_{g}": numeric(lambda g=g: gptq_over_rtn(g)) for g in GROUP_SIZES},
                   "a_4_bits": choice(best_budget_setting, tuple(BUDGET_SETTINGS))}),
}
