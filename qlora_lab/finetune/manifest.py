"""The run manifest (`run.json`): what a run was started with, checked again by `--resume`.

It holds the full resolved config, the base model's fingerprint, the data's fingerprint
and the library versions. A resume may change only what does not alter the training
trajectory (how long, how often to evaluate and save, where and how to write); any
other difference is refused with one line naming each field and both values, instead of
a silent mix of two runs or a tensor-size traceback deep in the restore.
"""

from __future__ import annotations

import hashlib
import json
from array import array
from dataclasses import asdict
from pathlib import Path

from qlora_lab.finetune.atomic import write_text
from qlora_lab.finetune.config import FinetuneConfig
from qlora_lab.finetune.data import Example
from qlora_lab.finetune.rundir import RUN_MANIFEST, manifest_path
from qlora_lab.hardware.sysinfo import library_versions

# Fields a resume may change: they decide when the run stops, evaluates or saves, and where it writes.
RESUMABLE = ("max_steps", "epochs", "eval_every", "save_every", "keep_checkpoints", "output_dir", "resume",
             "overwrite", "dist_timeout_s")


def data_fingerprint(train: list[Example], val: list[Example]) -> str:
    """SHA-256 of every token id and label of the examples, in order (same data, same digest)."""
    digest = hashlib.sha256()
    for examples in (train, val):
        digest.update(len(examples).to_bytes(8, "little"))
        for example in examples:
            digest.update(array("q", example.input_ids).tobytes())
            digest.update(array("q", example.labels).tobytes())
    return digest.hexdigest()


def config_values(config: FinetuneConfig) -> dict:
    """The config as JSON values (tuples become lists), as run.json stores it."""
    return json.loads(json.dumps(asdict(config)))


def build_manifest(config: FinetuneConfig, base: dict, data: str) -> dict:
    """The manifest of a run: config, base model and data fingerprints, library versions."""
    return {"config": config_values(config), "base_model": base, "data_sha256": data,
            "libraries": library_versions(), "resumed": []}


def write_manifest(output_dir: Path, manifest: dict) -> Path:
    return write_text(manifest_path(output_dir), json.dumps(manifest, indent=2))


def read_manifest(output_dir: Path) -> dict:
    path = manifest_path(output_dir)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"cannot resume {output_dir}: {RUN_MANIFEST} is missing, so its settings cannot be "
                         "checked; start afresh with --overwrite") from None
    except ValueError as error:
        raise ValueError(f"cannot resume {output_dir}: {path} is unreadable ({error})") from None


def differences(saved: dict, current: dict) -> tuple[list[str], dict]:
    """(refused differences, one 'field old -> new' text each; accepted ones {field: [old, new]})."""
    refused, accepted = [], {}
    old_config, new_config = saved["config"], current["config"]
    for name in sorted(set(old_config) | set(new_config)):
        old, new = old_config.get(name), new_config.get(name)
        if old == new:
            continue
        if name in RESUMABLE:
            if name not in ("resume", "overwrite"):  # how this process was started, not a change
                accepted[name] = [old, new]
        else:
            refused.append(f"{name} {old!r} -> {new!r}")
    for key in sorted(set(saved["base_model"]) | set(current["base_model"])):
        old, new = saved["base_model"].get(key), current["base_model"].get(key)
        if old != new:
            refused.append(f"base model {key} {old!r} -> {new!r}")
    if saved["data_sha256"] != current["data_sha256"]:
        refused.append(f"data SHA-256 {saved['data_sha256'][:12]}... -> {current['data_sha256'][:12]}... "
                       "(the examples changed)")
    return refused, accepted


def refusal(output_dir: Path, refused: list[str]) -> ValueError:
    return ValueError(f"cannot resume {output_dir}: settings differ from its {RUN_MANIFEST}: {'; '.join(refused)}. "
                      "Resume with the run's settings, or start afresh with --overwrite or another --output-dir")


def check_config_resumable(output_dir: Path, config: FinetuneConfig) -> None:
    """The settings part of `check_resume`, before any model is loaded (so it fails in a blink)."""
    saved = read_manifest(output_dir)
    refused, _ = differences(saved, dict(saved, config=config_values(config)))
    if refused:
        raise refusal(output_dir, refused)


def check_resume(output_dir: Path, current: dict, step: int, total_steps: int) -> tuple[dict, list[str]]:
    """Compare the saved manifest with this run's; the manifest to record and warnings to show.

    Raises:
        ValueError: a field that changes the training differs (one line naming each field and
            both values), or max_steps is below the checkpoint's step.
    """
    saved = read_manifest(output_dir)
    refused, accepted = differences(saved, current)
    if refused:
        raise refusal(output_dir, refused)
    if total_steps < step:
        raise ValueError(f"cannot resume {output_dir}: the run would end at step {total_steps} (max_steps="
                         f"{current['config']['max_steps']}, epochs={current['config']['epochs']}), before its "
                         f"checkpoint's step {step}")
    warnings = [f"{name} was {old}, now {new}" for name, (old, new) in
                ((n, (saved["libraries"].get(n), v)) for n, v in current["libraries"].items()) if old != new]
    if warnings:
        warnings = [f"warning: library versions changed since the run started ({', '.join(warnings)}): "
                    "the resumed steps may differ slightly from an uninterrupted run"]
    record = dict(current, resumed=saved.get("resumed", []) + [{"from_step": step, "changed": accepted}])
    return record, warnings
