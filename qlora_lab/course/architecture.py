"""Tell a Transformer from a CNN or an MLP by looking at the modules a model is made of.

The guide describes the three families in words; a model object answers the question
itself: `model.named_modules()` lists its layers, and the layer types give it away.

    from qlora_lab.course.architecture import classify_architecture
    classify_architecture(model).kind   # "transformer" | "cnn" | "mlp" | "autre"
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from torch import nn

TRANSFORMER, CNN, MLP, OTHER = "transformer", "cnn", "mlp", "autre"


@dataclass
class ArchitectureReport:
    """The verdict, the evidence (layer counts by type) and a one-line reason in French."""

    kind: str
    reason: str
    census: Counter = field(default_factory=Counter)


def module_census(model: nn.Module) -> Counter:
    """How many leaf-or-block modules of each class name the model contains."""
    return Counter(type(m).__name__ for _, m in model.named_modules() if m is not model)


def _is_attention(module: nn.Module) -> bool:
    """Self-attention blocks: torch's own, or any class named *Attention (HF convention)."""
    return isinstance(module, nn.MultiheadAttention) or type(module).__name__.endswith(("Attention", "SelfAttention"))


def classify_architecture(model: nn.Module) -> ArchitectureReport:
    """Classify `model` by its modules: attention wins, then convolutions, then linear layers.

    Attention is checked first because Transformers also hold many Linear layers (and
    GPT-2's are even a `Conv1D` class that is really a linear layer).
    """
    census = module_census(model)
    n_attention = sum(1 for m in model.modules() if _is_attention(m))
    n_conv = sum(1 for m in model.modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)))
    n_linear = sum(1 for m in model.modules() if isinstance(m, nn.Linear))
    if n_attention:
        return ArchitectureReport(TRANSFORMER, f"{n_attention} bloc(s) d'auto-attention", census)
    if n_conv:
        return ArchitectureReport(CNN, f"{n_conv} couche(s) de convolution, pas d'attention", census)
    if n_linear:
        return ArchitectureReport(MLP, f"{n_linear} couche(s) linéaire(s) seulement", census)
    return ArchitectureReport(OTHER, "ni attention, ni convolution, ni couche linéaire", census)


def linear_weight_fraction(model: nn.Module, skip: tuple[str, ...] = ("lm_head",)) -> float:
    """Share of the model's (unique) parameters that sit in nn.Linear weights, `skip` excluded.

    bitsandbytes' 4-bit layers and LoRA adapters replace or wrap nn.Linear: this is the
    part of a model that QLoRA quantizes and adapts (transformers keeps `lm_head` in 16
    bits, hence the default `skip`). Tied weights count once (by parameter identity, so it
    also works on the meta device).
    """
    total = sum(p.numel() for p in model.parameters())  # parameters() already skips tied duplicates
    linear = {id(m.weight): m.weight.numel() for name, m in model.named_modules()
              if isinstance(m, nn.Linear) and name.split(".")[-1] not in skip}
    return sum(linear.values()) / total if total else 0.0


def small_mlp(d_in: int = 784, hidden: int = 256, n_classes: int = 10) -> nn.Sequential:
    """A two-layer perceptron, the MLP of the comparison."""
    return nn.Sequential(nn.Flatten(), nn.Linear(d_in, hidden), nn.ReLU(), nn.Linear(hidden, n_classes))


def small_cnn(n_classes: int = 10) -> nn.Sequential:
    """A LeNet-sized convolutional network, the CNN of the comparison."""
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(16 * 7 * 7, n_classes),
    )
