"""Quantization formats, each a teaching implementation proven equal to its library.

`absmax` (absmax and zero-point, per tensor, channel or block), `nf4` (NF4, FP4, INT4 by
blocks, equal to bitsandbytes), `double_quant` (QLoRA §3), `formats` (floating-point
formats), `gguf` (llama.cpp's q4_0), `ptq` (post-training quantization), `qat`
(quantization-aware training with a straight-through estimator), `gptq` (GPTQ and the
round-to-nearest on its grid), `awq` (AWQ's activation-aware scales), `llm_int8`
(LLM.int8()'s matmul, equal to bitsandbytes' Linear8bitLt).
"""
