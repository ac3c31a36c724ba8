"""A seeded random sample of one module's mutants, for a mutation run too long to do in full.

    .venv/bin/mutmut run --max-children 1 $(.venv/bin/python benchmarks/mutation_sample.py sizing/flops.py 150)

Prints the sampled mutant names (mutmut's, from mutants/qlora_lab/<module>.meta, which any
`mutmut run` generates first) and records seed, size and names in
benchmarks/results/mutation_sample.json, so that benchmarks/mutation_report.py can say the
module's score is an estimate from that sample. Mutants of functions no selected test reaches
can be added whole with --always (mutmut classifies them, "no tests", without running
anything), and so can small functions changed since mutants/ was generated: they are passed as
globs (`module.x_name__mutmut_*`), which match the names of the next generation.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "mutation_sample.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("module", help="path under qlora_lab/, e.g. sizing/flops.py")
    parser.add_argument("size", type=int, help="how many mutants to draw")
    parser.add_argument("--seed", type=int, default=19)
    parser.add_argument("--always", nargs="*", default=[],
                        help="function names (x_name) whose mutants are all added, outside the sample")
    args = parser.parse_args()
    meta = ROOT / "mutants" / "qlora_lab" / (args.module + ".meta")
    names = sorted(json.loads(meta.read_text())["exit_code_by_key"])
    prefix = "qlora_lab." + args.module.removesuffix(".py").replace("/", ".")
    always = [f"{prefix}.{function}__mutmut_*" for function in args.always]
    population = [n for n in names if n.rsplit(".", 1)[-1].rsplit("__mutmut_", 1)[0] not in args.always]
    sample = sorted(random.Random(args.seed).sample(population, min(args.size, len(population))))
    samples = json.loads(OUT.read_text()) if OUT.exists() else {}
    samples[args.module] = {"seed": args.seed, "size": len(sample), "population": len(population),
                            "always_added": args.always, "names": sample}
    OUT.write_text(json.dumps(samples, indent=2) + "\n")
    print(" ".join(sample + always))


if __name__ == "__main__":
    main()
