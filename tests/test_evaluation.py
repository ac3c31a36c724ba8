"""validation_loss: nats per target token over all examples, not a mean of batch means.

The reference is a hand sum: each example run alone (no padding), its shifted targets'
cross-entropy summed with torch's own `cross_entropy`, divided by the number of target
tokens of all examples. Examples of very unequal lengths, split over batches of unequal
token counts, make a per-batch average differ from it by far more than the tolerance.
"""

import pytest
import torch
import torch.nn.functional as F

from qlora_lab.finetune.data import IGNORE_INDEX, Example
from qlora_lab.finetune.evaluation import autocast, validation_loss

VOCAB, PAD = 48, 0


def make_tiny_model():
    """A 1-layer Llama with large logits, in training mode."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, pad_token_id=PAD)
    model = LlamaForCausalLM(config).train()  # validation_loss must put it back in training mode
    with torch.no_grad():  # large logits: per-token losses spread from ~0 to tens of nats
        model.lm_head.weight.mul_(40.0)
    return model


@pytest.fixture(scope="module")
def tiny_model():
    return make_tiny_model()


def unequal_examples() -> list[Example]:
    """Two long examples, one with half its labels masked (a prompt), then two short ones."""
    g = torch.Generator().manual_seed(1)
    lengths = [40, 37, 3, 4]
    examples = []
    for i, n in enumerate(lengths):
        ids = torch.randint(1, VOCAB, (n,), generator=g).tolist()
        labels = list(ids)
        if i == 1:
            labels[:18] = [IGNORE_INDEX] * 18  # response-only: the prompt carries no loss
        examples.append(Example(ids, labels))
    return examples


def hand_token_mean(model, examples: list[Example]) -> tuple[float, list[float], list[int]]:
    """(sum of every target token's loss / number of target tokens, per-example sums, counts)."""
    sums, counts = [], []
    with torch.no_grad(), autocast(torch.device("cpu")):
        for e in examples:
            logits = model(input_ids=torch.tensor([e.input_ids])).logits[0].float()  # (n, vocab)
            targets = torch.tensor(e.labels[1:])  # position i predicts token i+1
            sums.append(float(F.cross_entropy(logits[:-1], targets, ignore_index=IGNORE_INDEX, reduction="sum")))
            counts.append(int((targets != IGNORE_INDEX).sum()))
    return sum(sums) / sum(counts), sums, counts


def check_validation_loss_is_token_weighted(loss_fn, model) -> None:
    """The check shared with tests/test_planted_mutants.py: `loss_fn` is a validation_loss."""
    examples = unequal_examples()
    expected, sums, counts = hand_token_mean(model, examples)
    assert counts == [39, 19, 2, 3]  # 40-1, 37-18 (labels 1..17 masked), 3-1, 4-1 target tokens
    batch_means = [(sums[0] + sums[1]) / 58, (sums[2] + sums[3]) / 5]
    per_batch = sum(batch_means) / 2
    assert abs(per_batch - expected) > 0.05 * expected, "the examples must tell the two averages apart"
    got = loss_fn(model, examples, PAD, batch_size=2)
    assert got == pytest.approx(expected, rel=2e-3)
    assert model.training  # restored after evaluation


def test_validation_loss_is_the_token_weighted_mean_over_batches_of_unequal_length(tiny_model):
    check_validation_loss_is_token_weighted(validation_loss, tiny_model)


@pytest.mark.parametrize("batch_size", [1, 3, 8])
def test_validation_loss_does_not_depend_on_the_batch_size(tiny_model, batch_size):
    examples = unequal_examples()
    expected, _, _ = hand_token_mean(tiny_model, examples)
    assert validation_loss(tiny_model, examples, PAD, batch_size=batch_size) == pytest.approx(expected, rel=2e-3)


def test_validation_loss_of_one_example_is_its_mean_token_loss(tiny_model):
    example = unequal_examples()[2:3]  # 3 tokens: 2 targets
    with torch.no_grad(), autocast(torch.device("cpu")):
        logits = tiny_model(input_ids=torch.tensor([example[0].input_ids])).logits[0].float()
    ids = example[0].input_ids
    by_hand = [float(torch.logsumexp(logits[i], 0) - logits[i, ids[i + 1]]) for i in range(2)]
    assert validation_loss(tiny_model, example, PAD) == pytest.approx(sum(by_hand) / 2, rel=1e-4)


class TwoProcessAccelerator:
    """Accelerate's reduce as a 2-process run computes it, the other process holding `other`.

    Same semantics as accelerate.utils.reduce: "max" takes the maximum, anything else sums
    over the processes, and "mean" then divides by the number of processes.
    """

    def __init__(self, other: torch.Tensor, num_processes: int = 2):
        self.other, self.num_processes, self.calls = other, num_processes, 0

    def reduce(self, tensor: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        self.calls += 1
        if self.num_processes == 1:
            raise AssertionError("a single process has nothing to reduce")
        both = torch.stack([tensor, self.other.to(tensor.dtype)])
        out = both.max(dim=0).values if reduction == "max" else both.sum(dim=0)
        return out / self.num_processes if reduction == "mean" else out


def test_validation_loss_over_two_processes_is_the_token_mean_of_both_shards(tiny_model):
    examples = unequal_examples()
    mine, theirs = examples[:1] + examples[2:], examples[1:2]  # shards of unequal token counts
    expected, _, _ = hand_token_mean(tiny_model, examples)
    _, their_sums, their_counts = hand_token_mean(tiny_model, theirs)
    accelerator = TwoProcessAccelerator(torch.tensor([sum(their_sums), float(sum(their_counts))], dtype=torch.float64))
    got = validation_loss(tiny_model, mine, PAD, batch_size=2, accelerator=accelerator)
    assert accelerator.calls == 1 and got == pytest.approx(expected, rel=2e-3)
    alone, _, _ = hand_token_mean(tiny_model, mine)
    assert abs(alone - expected) > 0.01 * expected  # this shard's own loss is not the answer


def test_one_process_does_not_reduce(tiny_model):
    accelerator = TwoProcessAccelerator(torch.zeros(2), num_processes=1)
    examples = unequal_examples()
    expected, _, _ = hand_token_mean(tiny_model, examples)
    assert validation_loss(tiny_model, examples, PAD, accelerator=accelerator) == pytest.approx(expected, rel=2e-3)
    assert accelerator.calls == 0


def test_autocast_uses_the_compute_dtype_not_torch_default():
    previous = torch.get_autocast_dtype("cpu")
    torch.set_autocast_dtype("cpu", torch.float16)  # a global default that must not leak in
    try:
        with autocast(torch.device("cpu")):
            product = torch.ones(4, 4) @ torch.ones(4, 4)
    finally:
        torch.set_autocast_dtype("cpu", previous)
    assert product.dtype == torch.bfloat16  # default_compute_dtype on a CPU
