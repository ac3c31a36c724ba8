"""Sizing a fine-tune before running it: FLOPs, memory estimates, GPUs.

`flops` (per layer and per token, checked against PyTorch's counter), `memory` (weights,
quantization constants, adapters, optimizer, activations; per GPU under DDP or FSDP),
`gpu_specs` (datasheet figures). Measured memory is in `qlora_lab.hardware`.
"""
