"""`qlora-lab eval`: validation loss of a model, or its pass@1 on the function benchmark.

    qlora-lab eval --split domain_validation --adapter runs/finetune/adapter
    qlora-lab eval --split validation --max-files 4 --quantization gptq4   # a row of chapter 11's table
    qlora-lab eval --task functions --adapter runs/finetune/adapter --json score.json
    # last line: pass@1 = 0.72 (72/100)   (held-out problems of qlora_lab.finetune.functions_tasks)
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

from qlora_lab.cli.options import add_model_options
from qlora_lab.finetune.adapters import check_adapter_dir, load_adapter
from qlora_lab.finetune.functions_tasks import SPLITS
from qlora_lab.model.quantized import FORMATS, load_quantized
from qlora_lab.model.validation import evaluate_split

TASKS = ("loss", "functions")


def configure_parser(parser: argparse.ArgumentParser) -> None:
    # every row of chapter 11's quality table; nf4-dq (the default) is how `finetune` loads the base
    add_model_options(parser, quantizations=tuple(FORMATS), default="nf4-dq")
    parser.add_argument("--task", default="loss", choices=TASKS,
                        help="loss: validation loss on --split; functions: pass@1 on generated held-out functions")
    parser.add_argument("--split", default="domain_validation",
                        choices=("train", "validation", "domain_train", "domain_validation"))
    parser.add_argument("--max-files", type=int, default=None, help="only the split's first files")
    parser.add_argument("--seq-len", type=int, default=None)
    parser.add_argument("--problems", type=int, default=100, help="functions: number of held-out problems")
    parser.add_argument("--problem-split", default="heldout", choices=[s for s in SPLITS if s != "train"],
                        help="functions: held-out problems of the trained families, or the unseen families")
    parser.add_argument("--seed", type=int, default=0, help="functions: seed of the problems drawn")
    parser.add_argument("--json", default=None, help="functions: also write every completion and outcome here")


def load_format(args: argparse.Namespace):
    """The model in `--quantization` (`qlora_lab.model.quantized.FORMATS`), with `--adapter` on top if given."""
    if args.adapter:
        check_adapter_dir(Path(args.adapter))  # before the model loads: a wrong path fails in a blink
    model, tokenizer = load_quantized(args.quantization, args.model, device=None)
    return (load_adapter(model, args.adapter) if args.adapter else model), tokenizer


def run(args: argparse.Namespace) -> int:
    if args.task == "functions":
        return run_functions(args)
    if args.max_files is not None and args.max_files < 1:
        raise ValueError(f"--max-files {args.max_files}: must be at least 1")
    if args.seq_len is not None and args.seq_len < 2:
        raise ValueError(f"--seq-len {args.seq_len}: must be at least 2 (one token predicts the next)")
    model, tokenizer = load_format(args)
    context = model.config.max_position_embeddings
    if args.seq_len is not None and args.seq_len > context:  # positions past it were never trained
        raise ValueError(f"--seq-len {args.seq_len} is above the model's context of {context} tokens")
    report = evaluate_split(model, tokenizer, args.split, max_files=args.max_files, seq_len=args.seq_len)
    print(json.dumps(report.as_dict(), indent=2))
    return 0


def run_functions(args: argparse.Namespace) -> int:
    """pass@1 on `--problems` generated problems; the last stdout line is `pass@1 = 0.xx (n/N)`."""
    from qlora_lab.finetune.code_runner import sandbox_kind
    from qlora_lab.finetune.functions_eval import score_functions
    from qlora_lab.finetune.functions_tasks import make_problems

    problems = make_problems(args.problem_split, args.problems, args.seed)  # ValueError on a bad count, early
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    model, tokenizer = load_format(args)
    score = score_functions(model, tokenizer, problems)
    if args.json:
        report = {"split": args.problem_split, "seed": args.seed, "passed": score.passed, "total": score.total,
                  "pass_at_1": score.pass_at_1, "sandbox": sandbox_kind(), "adapter": args.adapter,
                  "results": [{"name": r.problem.name, "family": r.problem.family, "prompt": r.problem.prompt,
                               "completion": r.completion, **asdict(r.outcome)} for r in score.results]}
        Path(args.json).write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    for family, (passed, total) in sorted(score.by_family().items()):
        print(f"{family:>12}: {passed}/{total}")
    if sandbox_kind() != "bwrap":
        print(f"note: no bubblewrap here; candidates ran with rlimits ({sandbox_kind()}), able to read your files")
    print(score.line())
    return 0
