"""Mutation-testing report from mutmut's results: score per module, every survivor explained.

    make mutation                       # runs mutmut over [tool.mutmut], then this script
    .venv/bin/python benchmarks/mutation_report.py

Reads mutants/**/*.py.meta (mutmut 3's exit codes per mutant) and writes
benchmarks/results/mutation_report.{md,json}. A module with no verdict in mutants/ (not run in
this session) keeps its counts from the previous report, marked with that report's date. A
module run on a random sample (benchmarks/mutation_sample.py) says so, with its seed and size. A surviving mutant is either listed in
EQUIVALENT below, with why no test can tell it from the original, or in OUT_OF_SCOPE, with why
it changes presentation only (a figure's size or wording, not a number the course teaches), or
shown as a gap to close. Score = killed / (killed + gaps); mutants in functions that no selected
test reaches ("no tests"), unchecked and out-of-scope ones are counted apart, never as killed.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MUTANTS = ROOT / "mutants"
OUT = ROOT / "benchmarks" / "results"
MODULES = ("quant/absmax.py", "quant/nf4.py", "quant/codes.py", "quant/double_quant.py", "quant/gptq.py",
           "finetune/lora.py", "finetune/evaluation.py", "sizing/flops.py", "sizing/memory.py")
SAMPLES_FILE = OUT / "mutation_sample.json"  # written by benchmarks/mutation_sample.py
# mutmut 3's exit codes (mutmut.stats.status_by_exit_code); timeouts and crashes count as detected.
STATUS = {1: "killed", 3: "killed", 0: "survived", 33: "no tests", 5: "no tests", 34: "skipped", 36: "timeout",
          24: "timeout", -24: "timeout", 152: "timeout", 255: "timeout", -11: "segfault", -9: "segfault",
          None: "not checked"}

# Survivors no test can kill, with the reason. Names are mutmut's (module.x_function__mutmut_N)
# and hold for the source at the commit of the report; re-check them when a function changes.
EQUIVALENT: dict[str, str] = {}
EQUIVALENT_FILE = ROOT / "benchmarks" / "mutation_equivalent.json"
if EQUIVALENT_FILE.exists():
    EQUIVALENT = json.loads(EQUIVALENT_FILE.read_text())
# Survivors that change only how a result is shown (figure size, line width, label wording), with the reason.
OUT_OF_SCOPE_FILE = ROOT / "benchmarks" / "mutation_out_of_scope.json"
OUT_OF_SCOPE: dict[str, str] = json.loads(OUT_OF_SCOPE_FILE.read_text()) if OUT_OF_SCOPE_FILE.exists() else {}


def mutant_diff(name: str) -> str:
    """The mutated line(s), as `mutmut show` prints them."""
    out = subprocess.run([str(Path(sys.executable).with_name("mutmut")), "show", name], cwd=ROOT,
                         capture_output=True, text=True, timeout=120).stdout
    lines = [line for line in out.splitlines() if line[:1] in "+-" and not line.startswith(("---", "+++"))]
    return "\n".join(lines) or out.strip()


def previous_report() -> dict:
    """The committed report, read before it is overwritten (for modules not rerun now)."""
    path = OUT / "mutation_report.json"
    return json.loads(path.read_text()) if path.exists() else {"modules": {}, "diffs": {}}


def carried_over(entry: dict, date: str) -> dict:
    """A module's previous counts, its survivors re-split with today's EQUIVALENT list."""
    entry = dict(entry, carried_over_from=entry.get("carried_over_from", date))
    survivors = sorted(entry["surviving_gaps"] + list(entry["equivalent_mutants"])
                       + list(entry.get("out_of_scope_mutants", {})))
    equivalent = [n for n in survivors if n in EQUIVALENT]
    out_of_scope = [n for n in survivors if n in OUT_OF_SCOPE and n not in EQUIVALENT]
    gaps = [n for n in survivors if n not in EQUIVALENT and n not in OUT_OF_SCOPE]
    considered = entry["killed"] + len(gaps)
    entry.update(equivalent=len(equivalent), not_killed_non_equivalent=len(gaps), surviving_gaps=gaps,
                 of_which_cuda_only=sum("tests/test_gpu.py" in EQUIVALENT[n] for n in equivalent),
                 equivalent_mutants={n: EQUIVALENT[n] for n in equivalent},
                 out_of_scope=len(out_of_scope), out_of_scope_mutants={n: OUT_OF_SCOPE[n] for n in out_of_scope},
                 score=round(entry["killed"] / considered, 4) if considered else None)
    return entry


def rerun_survivors(entry: dict, codes: dict, previous_diffs: dict[str, str]) -> dict | None:
    """A carried-over module whose earlier survivors, and nothing else, were rerun today.

    Each earlier survivor is matched to today's mutant with the same diff (names shift when
    the source changes); a killed one moves to *killed*, a surviving one keeps today's name.
    None when today's verdicts are not all such reruns (then the module counts as run today).
    """
    checked = {name: code for name, code in codes.items() if code is not None}
    by_diff = {mutant_diff(name): name for name in checked}
    survivors = entry["surviving_gaps"] + list(entry["equivalent_mutants"]) + list(entry.get("out_of_scope_mutants", {}))
    matched = {old: by_diff.get(previous_diffs.get(old, "")) for old in survivors}
    extra = sorted(set(checked) - set(matched.values()))  # rerun today, not an earlier survivor
    if not any(matched.values()):
        return None
    killed = [old for old, new in matched.items() if new and STATUS.get(checked[new]) != "survived"]
    still = sorted((new or old) for old, new in matched.items() if old not in killed)
    entry = dict(entry, killed=entry["killed"] + len(killed), survived=len(still), surviving_gaps=still,
                 equivalent_mutants={}, out_of_scope_mutants={}, survivors_rerun=len([n for n in matched.values() if n]),
                 survivors_killed_now=len(killed), rerun_names=sorted(checked),
                 extra_rerun={name: STATUS.get(checked[name], "suspicious")
                              + (" (equivalent: see benchmarks/mutation_equivalent.json)" if name in EQUIVALENT else "")
                              for name in extra})
    return entry


def collect(previous: dict) -> dict[str, dict]:
    modules = {}
    samples = json.loads(SAMPLES_FILE.read_text()) if SAMPLES_FILE.exists() else {}
    for relative in MODULES:
        meta_path = MUTANTS / "qlora_lab" / (relative + ".meta")
        codes = json.loads(meta_path.read_text())["exit_code_by_key"] if meta_path.exists() else {}
        before = previous["modules"].get(relative, {})
        if not any(c is not None for c in codes.values()) and before.get("run"):
            modules[relative] = carried_over(before, previous["date"])
            continue
        complete = all(c is not None for c in codes.values())  # every mutant run: counts of today
        checked = {name for name, code in codes.items() if code is not None}
        if before.get("carried_over_from") and not complete and checked <= set(before.get("rerun_names", [])):
            modules[relative] = dict(carried_over(before, previous["date"]),  # only reruns an earlier report counted
                                     reruns_counted_on=before.get("reruns_counted_on", previous["date"]))
            continue
        rerun = (rerun_survivors(before, codes, previous["diffs"])
                 if before.get("carried_over_from") and not complete else None)
        if rerun is not None:
            modules[relative] = carried_over(rerun, previous["date"])
            continue
        if not codes:
            modules[relative] = {"total": 0, "run": False}
            continue
        statuses = {name: STATUS.get(code, "suspicious") for name, code in codes.items()}
        counts = Counter(statuses.values())
        survivors = sorted(n for n, s in statuses.items() if s == "survived")
        equivalent = [n for n in survivors if n in EQUIVALENT]
        device_only = [n for n in equivalent if "tests/test_gpu.py" in EQUIVALENT[n]]
        out_of_scope = [n for n in survivors if n in OUT_OF_SCOPE and n not in EQUIVALENT]
        gaps = [n for n in survivors if n not in EQUIVALENT and n not in OUT_OF_SCOPE]
        killed = counts["killed"] + counts["timeout"] + counts["segfault"]  # a crash is detected too
        considered = killed + len(gaps)
        modules[relative] = {
            "total": len(codes), "run": True, "killed": killed, "survived": len(survivors),
            "equivalent": len(equivalent), "of_which_cuda_only": len(device_only),
            "not_killed_non_equivalent": len(gaps), "out_of_scope": len(out_of_scope),
            "no_tests": counts["no tests"], "not_checked": counts["not checked"],
            "score": round(killed / considered, 4) if considered else None,
            "equivalent_mutants": {n: EQUIVALENT[n] for n in equivalent},
            "surviving_gaps": gaps,
            "out_of_scope_mutants": {n: OUT_OF_SCOPE[n] for n in out_of_scope},
            "no_test_functions": sorted(Counter(n.rsplit("__mutmut_", 1)[0] for n, s in statuses.items()
                                                if s == "no tests").items()),
        }
        if relative in samples and not complete:  # a sample, then the rest: no longer an estimate
            modules[relative]["sample"] = {k: v for k, v in samples[relative].items() if k != "names"}
    return modules


def markdown(modules: dict[str, dict], diffs: dict[str, str], session_notes: list[str]) -> str:
    lines = ["# Mutation testing of the course's arithmetic", "",
             f"mutmut {mutmut_version()}, {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC. `make mutation` reruns it "
             "(`[tool.mutmut]` in pyproject.toml: each mutant runs only the fast tests of its module that reach "
             "the mutated function).", "",
             "Score = killed / (killed + surviving non-equivalent mutants). *No tests*: mutants in functions that "
             "no selected fast test calls (plotting helpers); *not checked*: not run in this session. "
             "*Equivalent* includes *CUDA-only* mutants: the same on a CPU, caught by tests/test_gpu.py on a GPU "
             "(not run here: no GPU). *Out of scope*: survivors that change only how a result is shown (a "
             "figure's size, line width, grid or label wording), listed with the reason in "
             "benchmarks/mutation_out_of_scope.json, outside the score like *no tests*.", "",
             *notes(modules, session_notes),
             "| module | mutants | killed | survived | equivalent (CUDA-only) | out of scope | gaps | no tests "
             "| not checked | score |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for relative, m in modules.items():
        if not m["run"]:
            lines.append(f"| {relative} | – | – | – | – | – | – | – | – | not run |")
            continue
        score = "–" if m["score"] is None else f"{100 * m['score']:.1f} %"
        label = (relative + (" (earlier run)" if m.get("carried_over_from") else "")
                 + (" (sample)" if m.get("sample") else ""))
        lines.append(f"| {label} | {m['total']} | {m['killed']} | {m['survived']} | "
                     f"{m['equivalent']} ({m['of_which_cuda_only']}) | {m.get('out_of_scope', 0)} | "
                     f"{m['not_killed_non_equivalent']} | {m['no_tests']} | {m['not_checked']} | {score} |")
    for relative, m in modules.items():
        if not m.get("run") or not (m["equivalent_mutants"] or m["surviving_gaps"] or m["no_test_functions"]
                                    or m.get("out_of_scope_mutants")):
            continue
        lines += ["", f"## {relative}"]
        if m["surviving_gaps"]:
            lines += ["", "Surviving, not equivalent (gaps left):", ""]
            for name in m["surviving_gaps"]:
                lines += [f"- `{name}`", "", "  ```diff", *("  " + d for d in diffs[name].splitlines()), "  ```"]
        if m["equivalent_mutants"]:
            lines += ["", "Surviving and equivalent:", ""]
            for name, why in m["equivalent_mutants"].items():
                lines += [f"- `{name}`: {why}", "", "  ```diff", *("  " + d for d in diffs[name].splitlines()), "  ```"]
        if m.get("out_of_scope_mutants"):
            lines += ["", "Surviving, out of scope (presentation only, see benchmarks/mutation_out_of_scope.json):", ""]
            for name, why in m["out_of_scope_mutants"].items():
                lines += [f"- `{name}`: {why}", "", "  ```diff", *("  " + d for d in diffs[name].splitlines()), "  ```"]
        if m["no_test_functions"]:
            lines += ["", "Functions no selected test reaches: " +
                      ", ".join(f"`{f.rsplit('.', 1)[-1]}` ({n})" for f, n in m["no_test_functions"])]
    return "\n".join(lines) + "\n"


def source_changes_since(relative: str, date: str) -> str:
    """Commits touching qlora_lab/<relative> after `date`, and uncommitted edits: '' if none."""
    path = f"qlora_lab/{relative}"
    commits = subprocess.run(["git", "log", f"--since={date}", "--format=%h", "--", path], cwd=ROOT,
                             capture_output=True, text=True).stdout.split()
    edited = subprocess.run(["git", "diff", "--quiet", "HEAD", "--", path], cwd=ROOT).returncode != 0
    parts = ([f"commits {', '.join(commits)}"] if commits else []) + (["uncommitted edits"] if edited else [])
    return " and ".join(parts)


def notes(modules: dict[str, dict], session_notes: list[str]) -> list[str]:
    """What was not run in this session: modules carried over, modules run on a sample."""
    lines = [f"- {note}" for note in session_notes]
    for relative, m in modules.items():
        if m.get("carried_over_from"):
            changed = source_changes_since(relative, m["carried_over_from"])
            session = (f"in the session of the report of {m['reruns_counted_on']}" if m.get("reruns_counted_on")
                       else "in this session")
            rerun = (f"; only its {m['survivors_rerun']} survivors of that run were rerun {session} (matched "
                     f"to today's mutants by their diff), {m['survivors_killed_now']} of them now killed"
                     if m.get("survivors_rerun") else "")
            if m.get("extra_rerun"):
                rerun += (f"; also run, outside these counts (other mutants of today's source run {session}): "
                          + ", ".join(f"`{n.rsplit('.', 1)[-1]}` {v}" for n, v in m["extra_rerun"].items()))
            lines.append(f"- {relative}: {'partly rerun ' + session if rerun else 'not rerun in this session'}; "
                         f"counts from the run "
                         f"of {m['carried_over_from']}{rerun} "
                         "(survivors re-split with today's list of equivalent mutants)"
                         + (f"; its source changed since ({changed}): new or changed code there is not covered by "
                            "these counts." if changed else "; its source has not changed since."))
        if m.get("sample"):
            s = m["sample"]
            lines.append(f"- {relative}: a random sample of {s['size']} of its {s['population']} mutants "
                         f"(`random.Random({s['seed']}).sample`, benchmarks/mutation_sample.py) was run"
                         + (f", plus every mutant of {', '.join(f'`{f}`' for f in s['always_added'])}"
                            if s.get("always_added") else "")
                         + "; the others are *not checked*, so its score is an estimate from the sample.")
        if not m.get("run"):
            lines.append(f"- {relative}: not run.")
    return [*lines, ""] if lines else []


def mutmut_version() -> str:
    from importlib.metadata import version

    return version("mutmut")


def main() -> None:
    parser = argparse.ArgumentParser(description="Mutation-testing report from mutants/.")
    parser.add_argument("--note", action="append", default=[],
                        help="a sentence on how this session ran (e.g. a partial rerun), printed in the report")
    session_notes = parser.parse_args().note
    previous = previous_report()
    modules = collect(previous)
    names = [n for m in modules.values() if m.get("run")
             for n in m["surviving_gaps"] + list(m["equivalent_mutants"]) + list(m.get("out_of_scope_mutants", {}))]
    carried = tuple("qlora_lab." + r.removesuffix(".py").replace("/", ".") + "."
                    for r, m in modules.items() if m.get("carried_over_from"))
    # a carried-over module's mutants may not match today's source: keep the diffs shown then
    rerun_today = {n for m in modules.values() for n in m.get("rerun_names", [])}
    diffs = {name: previous["diffs"][name] if name.startswith(carried) and name in previous["diffs"]
             and name not in rerun_today else mutant_diff(name) for name in names}
    OUT.mkdir(parents=True, exist_ok=True)
    report = {"tool": f"mutmut {mutmut_version()}", "modules": modules, "notes": session_notes,
              "diffs": diffs, "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    (OUT / "mutation_report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    (OUT / "mutation_report.md").write_text(markdown(modules, diffs, session_notes))
    print((OUT / "mutation_report.md").read_text().split("\n## ")[0])


if __name__ == "__main__":
    main()
