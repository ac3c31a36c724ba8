"""The fast subset of mutation testing: three bugs that once survived every fast test.

Each case copies a module's source, plants one bug by an exact text substitution, imports
the copy from a temporary folder as a module of its own, and runs the check that the real
tests use (imported from their test files) against the mutant: the check must fail.
The same check passes against the real module (in its own test file). The full mutation
run is `make mutation` (benchmarks/results/mutation_report.md).
"""

import importlib.util
import sys
from pathlib import Path

import pytest

from test_double_quant import check_bits_per_param_matches_bitsandbytes
from test_evaluation import check_validation_loss_is_token_weighted, make_tiny_model
from test_lora import check_lora_layer_follows_the_paper

PACKAGE = Path(__file__).resolve().parents[1] / "qlora_lab"

# (module file, the code as written, the planted bug)
LORA_SCALING = ("finetune/lora.py", "self.scaling = alpha / r", "self.scaling = alpha")
DQ_ACCOUNTING = ("quant/double_quant.py",
                 "return weight_bits + 8 / blocksize + 32 / (blocksize * dq_blocksize)",
                 "return weight_bits + 8 / 64 + 32 / (64 * dq_blocksize)")
PER_BATCH_LOSS = ("finetune/evaluation.py",
                  "total += float(model(**batch).loss) * n\n                count += n",
                  "total += float(model(**batch).loss)\n                count += 1")


def load_mutant(tmp_path: Path, relative: str, original: str, mutated: str):
    """Import a copy of qlora_lab/<relative> with `original` replaced by `mutated` (once)."""
    source = (PACKAGE / relative).read_text()
    assert source.count(original) == 1, f"{relative} no longer contains {original!r}: update the planted bug"
    path = tmp_path / ("mutant_" + Path(relative).name)
    path.write_text(source.replace(original, mutated))
    name = f"mutant_{Path(relative).stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and lru_cache look the module up by name
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[name]
    return module


def test_alpha_instead_of_alpha_over_r_is_caught(tmp_path):
    mutant = load_mutant(tmp_path, *LORA_SCALING)
    with pytest.raises(AssertionError):
        check_lora_layer_follows_the_paper(mutant.LoRALinear)


def test_64_instead_of_blocksize_in_the_double_quant_accounting_is_caught(tmp_path):
    mutant = load_mutant(tmp_path, *DQ_ACCOUNTING)
    assert mutant.bits_per_param(64) == pytest.approx(4.127, abs=1e-3)  # still right at the paper's blocksize
    with pytest.raises(AssertionError):
        check_bits_per_param_matches_bitsandbytes(mutant.bits_per_param)


def test_per_batch_instead_of_per_token_validation_loss_is_caught(tmp_path):
    mutant = load_mutant(tmp_path, *PER_BATCH_LOSS)
    model = make_tiny_model()
    with pytest.raises(AssertionError):
        check_validation_loss_is_token_weighted(mutant.validation_loss, model)
