"""qlora_lab: the package behind the qlora-lab course.

Teaching implementations of quantization (absmax, NF4, double quantization), each
proven equal to bitsandbytes by the test-suite, plus the wiring that runs real 4-bit
QLoRA fine-tuning with transformers + PEFT + bitsandbytes on a CPU or a GPU.

Heavy libraries (transformers, peft, bitsandbytes) are imported lazily inside the
modules that need them, so ``import qlora_lab`` is instant.
"""

__version__ = "0.1.0"
