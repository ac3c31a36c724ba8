"""`qlora-lab export`: merge an adapter into its bf16 base and write a GGUF file for llama.cpp.

    qlora-lab export --adapter runs/finetune/adapter --gguf mini.q4_0.gguf --type q4_0
    llama-cli -m mini.q4_0.gguf -p "def parse_header(" -n 48      # then, with llama.cpp
"""

from __future__ import annotations

import argparse
from pathlib import Path

from qlora_lab.model.gguf_export import GGUF_TYPES


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None, help="base model dir or hub id (default: embedded model)")
    parser.add_argument("--adapter", default=None, help="PEFT adapter directory to merge first (none: the base alone)")
    parser.add_argument("--gguf", required=True, help="output .gguf file")
    parser.add_argument("--type", default="q4_0", choices=GGUF_TYPES, help="ggml type of the 2-D weights")


def run(args: argparse.Namespace) -> int:
    from qlora_lab.finetune.adapters import load_with_adapter
    from qlora_lab.finetune.merge import merge_into_bf16
    from qlora_lab.model.gguf_export import export_gguf

    out = Path(args.gguf)
    if out.suffix != ".gguf":
        raise ValueError(f"--gguf {out}: the file name must end in .gguf (llama.cpp's tools expect it)")
    if not out.parent.is_dir():
        raise FileNotFoundError(f"--gguf {out}: folder {out.parent} does not exist")
    model, tokenizer = load_with_adapter(args.model, args.adapter, quantization="none")
    if args.adapter:
        model = merge_into_bf16(model)
    export_gguf(model, tokenizer, out, args.type)
    print(f"{out}: {out.stat().st_size / 2**20:.1f} MiB ({args.type}); run it with: llama-cli -m {out} -p 'def ' -n 48")
    return 0
