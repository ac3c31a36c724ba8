"""The embedded mini CodeLlama: its corpus, tokenizer, pre-training, loading and evaluation.

`llama_shapes` (the layers of a Llama block, the CodeLlama sizes), `corpus` (the Python
stdlib, split), `tokenization` (BPE), `packing` (documents into windows), `pretrain` (how
the shipped model was trained) and `model_card`, `models` (`load_model`: bf16, NF4 or FP4
through bitsandbytes), `validation` (loss, bits/byte), `generation`, `calibration`
(calibration windows, each layer's inputs by hooks), `quantized` (`load_quantized`: the
model in every format of chapter 11's quality table).
"""
