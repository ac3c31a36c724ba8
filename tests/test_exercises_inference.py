"""Chapter 12's self-check against independent computations: the benchmark JSON read by hand,
bitsandbytes' own NF4 quantizer on the weight read from the safetensors file, the model's sizes
from config.json and gguf-py's reader."""

import json

import pytest
import torch
from safetensors.torch import load_file

from qlora_lab.course import exercises_inference as ex
from qlora_lab.course.self_check import verifier
from qlora_lab.paths import BENCHMARK_RESULTS_DIR, EMBEDDED_MODEL_DIR


pytestmark = pytest.mark.usefixtures("single_thread")


def test_12_1_ceilings_and_shares_from_the_saved_json():
    data = json.loads((BENCHMARK_RESULTS_DIR / ex.RESULTS_FILE).read_text(encoding="utf-8"))
    rows = {r["format"]: r for r in data["rows"] if r["model"] == "llama-1.1b" and r["batch_size"] == 1}
    ceiling = {f: data["bandwidth_bytes_per_s"] / r["weight_bytes_per_token"] for f, r in rows.items()}
    assert ceiling["nf4-dq"] == pytest.approx(rows["nf4-dq"]["bandwidth_bound_tokens_per_s"], rel=1e-9)
    share = {f: r["tokens_per_s"] / ceiling[f] for f, r in rows.items()}
    closer = "bf16" if share["bf16"] > share["nf4-dq"] else "nf4"
    answer = {"plafond_nf4": ceiling["nf4-dq"], "part_bf16": share["bf16"], "part_nf4": share["nf4-dq"],
              "limite_par_la_memoire": closer}
    assert verifier("12.1", answer).juste
    other = "nf4" if closer == "bf16" else "bf16"
    assert verifier("12.1", {**answer, "limite_par_la_memoire": other}).status == "partiel"
    swapped = {**answer, "part_bf16": share["nf4-dq"], "part_nf4": share["bf16"]}
    assert not verifier("12.1", swapped).juste


def test_12_2_rounding_of_a_constant_update_with_bitsandbytes():
    from qlora_lab.backends import import_bnb

    functional = import_bnb().functional
    weights = load_file(str(EMBEDDED_MODEL_DIR / "model.safetensors"))
    w = weights[f"model.layers.{ex.LAYER}.mlp.down_proj.weight"].float()
    split = lambda packed: torch.cat([packed >> 4, packed & 15]).flatten()

    def quantized(x):
        packed, state = functional.quantize_4bit(x, blocksize=64, quant_type="nf4", compress_statistics=True)
        return split(packed), functional.dequantize_4bit(packed, state).float()

    codes0, deq0 = quantized(w)
    answer = {}
    for d in ex.UPDATES:
        codes1, deq1 = quantized(w + d)
        answer[f"inchanges_{d:g}"] = float((codes0 == codes1).float().mean())
        answer[f"erreur_{d:g}"] = float((deq1 - deq0 - d).abs().mean() / d)
    assert verifier("12.2", answer).juste
    assert answer["inchanges_0.001"] > answer["inchanges_0.01"] and answer["erreur_0.001"] > answer["erreur_0.01"]
    kept_on_average = {**answer, "erreur_0.01": 0.0}  # the usual slip: signed mean, ~0
    assert verifier("12.2", kept_on_average).status == "partiel"


def test_12_3_gguf_sizes_from_config_and_reader():
    cfg = json.loads((EMBEDDED_MODEL_DIR / "config.json").read_text(encoding="utf-8"))
    h, f, n_layers, vocab = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"], cfg["vocab_size"]
    kv = cfg["num_key_value_heads"] * cfg["head_dim"]
    per_block = h * h * 2 + 2 * h * kv + 3 * h * f  # q, o; k, v; gate, up, down
    n_weights = n_layers * per_block + vocab * h  # tied head: token_embd only
    f32_bytes = (2 * n_layers + 1) * h * 4  # attn_norm, ffn_norm per block, output_norm
    sizes = ex.gguf_sizes()
    assert sizes["weights"] == n_weights // 32 * 18  # q4_0: 18 bytes per 32 weights
    answer = {"prevu": n_weights * 4.5 / 8, "taille_fichier": sizes["file"], "octets_f32": f32_bytes,
              "cause": "vocabulaire" if sizes["file"] - sizes["weights"] - f32_bytes > f32_bytes else "normes"}
    assert verifier("12.3", answer).juste
    assert verifier("12.3", {**answer, "prevu": n_weights * 4 / 8}).status == "partiel"


def test_12_3_file_size_is_header_plus_aligned_tensors(tmp_path):
    import gguf

    from qlora_lab.model.gguf_export import export_gguf
    from qlora_lab.model.models import load_model

    path = export_gguf(*load_model(quantization="none", device="cpu"), tmp_path / "mini.gguf", "q4_0")
    reader = gguf.GGUFReader(str(path))
    last = max(reader.tensors, key=lambda t: t.data_offset)
    assert path.stat().st_size == last.data_offset + last.n_bytes
    assert path.stat().st_size == ex.gguf_sizes()["file"]
