"""The `qlora-lab` command line.

    qlora-lab sysinfo                 # what this machine can do (GPU, CPU flags, 4-bit)
    qlora-lab pretrain --help         # (re)train the embedded mini CodeLlama
    qlora-lab finetune --mode qlora   # a real QLoRA fine-tune
    qlora-lab eval | generate | compare
    qlora-lab export --adapter DIR --gguf OUT.gguf   # merged model for llama.cpp

Each sub-command lives in its own module of this package, which provides
``configure_parser(parser: argparse.ArgumentParser) -> None`` and
``run(args: argparse.Namespace) -> int``. Modules are imported only for the command
that runs, so `qlora-lab --help` stays fast.

Errors a user can fix (a bad option, a missing file, a busy or full output folder) are
reported here, for every command, as one line on stderr with exit status 2; `--debug`
shows the traceback instead. Ctrl-C prints one line and exits with 130.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# Errors that come from the user's input or machine, not from a bug: ValueError covers the
# package's DataError, RunDirBusyError, CorruptModelError...; OSError covers missing files,
# ModelNotFoundError and DiskFullError.
USER_ERRORS = (ValueError, OSError)
USER_ERROR_STATUS = 2
INTERRUPTED_STATUS = 130  # 128 + SIGINT, as shells report it

# command -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "sysinfo": ("qlora_lab.cli.sysinfo", "show the GPU/CPU, library versions and whether 4-bit works here"),
    "pretrain": ("qlora_lab.cli.pretrain", "train the embedded mini CodeLlama from scratch on the stdlib"),
    "finetune": ("qlora_lab.cli.finetune", "fine-tune a model: full, LoRA or QLoRA"),
    "eval": ("qlora_lab.cli.eval", "validation loss of a model, with or without an adapter"),
    "generate": ("qlora_lab.cli.generate", "generate text, with or without an adapter"),
    "compare": ("qlora_lab.cli.compare", "full vs LoRA vs QLoRA on the same data: memory, speed, loss"),
    "export": ("qlora_lab.cli.export", "merge an adapter and write a GGUF file (q4_0, q8_0) for llama.cpp"),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The top-level parser; only `command`'s module is imported to configure its options."""
    parser = argparse.ArgumentParser(prog="qlora-lab", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--debug", action="store_true", help="on an error, show the full traceback")
        if name == command:
            importlib.import_module(module_name).configure_parser(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the process exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(command if command in COMMANDS else None)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    module = importlib.import_module(COMMANDS[args.command][0])
    try:
        return int(module.run(args) or 0)
    except KeyboardInterrupt as error:
        if args.debug:
            raise
        print(f"qlora-lab {args.command}: {one_line(error) or 'interrupted'}", file=sys.stderr)
        return INTERRUPTED_STATUS
    except USER_ERRORS as error:
        if args.debug:
            raise
        print(f"qlora-lab {args.command}: error: {one_line(error)} (--debug shows the traceback)", file=sys.stderr)
        return USER_ERROR_STATUS


def one_line(error: BaseException) -> str:
    """The error's message on one line (an OSError without a message: its errno text and file)."""
    text = str(error) or type(error).__name__
    return " ".join(text.split())
