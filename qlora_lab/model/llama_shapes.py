"""The dimensions of Llama-family decoders: their linear layers and the CodeLlama sizes.

    from qlora_lab.model.llama_shapes import CODELLAMA, LLAMA_ALL_LINEAR
    CODELLAMA["7B"].n_params          # 6.7e9, counted from the shape
    LLAMA_ALL_LINEAR                  # the 7 linear layers of a block (LoRA's targets)

The one place that knows them: LoRA counts, memory estimates, the fine-tune's default
target modules and the random-init shapes of `compare` all read them here.
"""

from __future__ import annotations

from dataclasses import dataclass

# Names of the linear layers of a Llama decoder layer, with PEFT's usual shorthand.
LLAMA_ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
LLAMA_MLP = ("gate_proj", "up_proj", "down_proj")
LLAMA_ALL_LINEAR = LLAMA_ATTENTION + LLAMA_MLP



def llama_linear_shapes(hidden: int, intermediate: int, n_heads: int, n_kv_heads: int) -> dict[str, tuple[int, int]]:
    """(d_in, d_out) of each linear layer of one Llama decoder layer (GQA aware)."""
    head_dim = hidden // n_heads
    kv = n_kv_heads * head_dim
    return {
        "q_proj": (hidden, hidden), "k_proj": (hidden, kv), "v_proj": (hidden, kv), "o_proj": (hidden, hidden),
        "gate_proj": (hidden, intermediate), "up_proj": (hidden, intermediate), "down_proj": (intermediate, hidden),
    }


@dataclass(frozen=True)
class ModelShape:
    """The dimensions of a Llama-family decoder, enough to count every parameter."""

    name: str
    hidden: int
    intermediate: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    vocab: int
    tie_embeddings: bool = False

    @property
    def head_dim(self) -> int:
        return self.hidden // self.n_heads

    def linear_params(self) -> int:
        """Weights of the decoder layers' linear maps (what bitsandbytes quantizes)."""
        kv = self.n_kv_heads * self.head_dim
        attention = 2 * self.hidden * self.hidden + 2 * self.hidden * kv  # q, o + k, v
        mlp = 3 * self.hidden * self.intermediate  # gate, up, down (SwiGLU)
        return self.n_layers * (attention + mlp)

    def other_params(self) -> int:
        """Embeddings, lm_head (if untied) and RMSNorm scales: kept in 16 bits by bitsandbytes."""
        embeddings = self.vocab * self.hidden * (1 if self.tie_embeddings else 2)
        norms = (2 * self.n_layers + 1) * self.hidden
        return embeddings + norms

    @property
    def n_params(self) -> int:
        return self.linear_params() + self.other_params()

    def llama_config_kwargs(self) -> dict:
        """The `transformers.LlamaConfig` arguments of this shape (e.g. to build a random-init model)."""
        return dict(hidden_size=self.hidden, intermediate_size=self.intermediate, num_hidden_layers=self.n_layers,
                    num_attention_heads=self.n_heads, num_key_value_heads=self.n_kv_heads, vocab_size=self.vocab,
                    tie_word_embeddings=self.tie_embeddings)

    @classmethod
    def from_config(cls, config, name: str = "") -> "ModelShape":
        """From a transformers LlamaConfig (e.g. the embedded model's `model.config`)."""
        return cls(
            name=name or getattr(config, "name_or_path", "") or "model",
            hidden=config.hidden_size, intermediate=config.intermediate_size,
            n_layers=config.num_hidden_layers, n_heads=config.num_attention_heads,
            n_kv_heads=getattr(config, "num_key_value_heads", None) or config.num_attention_heads,
            vocab=config.vocab_size, tie_embeddings=bool(getattr(config, "tie_word_embeddings", False)),
        )


# CodeLlama shapes (Rozière et al. 2023; the checkpoints' config.json). 34B and 70B use GQA.
CODELLAMA: dict[str, ModelShape] = {
    "7B": ModelShape("CodeLlama-7B", 4096, 11008, 32, 32, 32, 32016),
    "13B": ModelShape("CodeLlama-13B", 5120, 13824, 40, 40, 40, 32016),
    "34B": ModelShape("CodeLlama-34B", 8192, 22016, 48, 64, 8, 32000),
    "70B": ModelShape("CodeLlama-70B", 8192, 28672, 80, 64, 8, 32016),
}
