"""qlora_lab: the package behind the qlora-lab course.

Teaching implementations of quantization (absmax, NF4, double quantization), each
proven equal to bitsandbytes by the test-suite, plus the wiring that runs real 4-bit
QLoRA fine-tuning with transformers + PEFT + bitsandbytes on a CPU or a GPU.

The folders follow the course: ``quant`` (formats), ``model`` (the embedded mini
CodeLlama), ``finetune`` (the training loop and everything around it), ``sizing``
(FLOPs, memory, GPUs), ``hardware`` (the machine), ``course`` (notebook helpers),
``cli`` (the ``qlora-lab`` command) and ``grading`` (the labs). Each layer imports only
the ones below it (``.importlinter``).

Heavy libraries (transformers, peft, bitsandbytes) are imported lazily inside the
modules that need them, so ``import qlora_lab`` is instant.
"""

__version__ = "0.1.0"

# Whatever imports bitsandbytes first (transformers does, e.g. for its optimizers), its
# harmless CPU start-up message must not reach students: set the log levels now (cheap).
from qlora_lab.backends import quiet_bnb_logs as _quiet_bnb_logs

_quiet_bnb_logs()
