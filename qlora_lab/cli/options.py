"""Options shared by the commands that load a model with an optional adapter (eval, generate)."""

from __future__ import annotations

import argparse

from qlora_lab.model.models import QUANTIZATIONS


def add_model_options(parser: argparse.ArgumentParser, quantizations: tuple[str, ...] = QUANTIZATIONS,
                      default: str = "nf4") -> None:
    """--model, --adapter, --quantization; `eval` widens the choices to every format of the quality table."""
    parser.add_argument("--model", default=None, help="model dir or hub id (default: embedded model)")
    parser.add_argument("--adapter", default=None, help="PEFT adapter directory")
    parser.add_argument("--quantization", default=default, choices=quantizations)
