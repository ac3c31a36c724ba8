"""Fine-tuning: full, LoRA and QLoRA with one loop, on one process or several.

Read in this order: `config` (every setting, with its help), `data` (examples and
labels), `lora` (the maths and a layer equal to PEFT's), `adapters` (PEFT wiring, save,
load, merge), `prepare`, `batches`, `evaluation`, `loop` (`finetune()`: prepare, resume,
train, finish), `checkpoints`, `rundir` (what a run writes), `parallel` (DDP/FSDP inside
a run), `launch` (starting runs in other processes), `compare` (full vs LoRA vs QLoRA).
"""
