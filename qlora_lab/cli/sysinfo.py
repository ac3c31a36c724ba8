"""`qlora-lab sysinfo`: the GPU/CPU, library versions, and whether 4-bit works here (measured)."""

from __future__ import annotations

import argparse
import json

from qlora_lab.hardware.sysinfo import collect_sysinfo, format_sysinfo


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")


def run(args: argparse.Namespace) -> int:
    info = collect_sysinfo()
    print(json.dumps(info, indent=2) if args.json else format_sysinfo(info))
    return 0 if info["four_bit_works"] else 1
