"""One run per output directory: a file lock held while the run writes, and no silent mixing.

Two runs writing the same folder would interleave their metrics and overwrite each
other's checkpoints; a fresh run in a folder that holds an older one would later resume
from the older run's checkpoints. `claim_run_dir` refuses both with one clear line.

    with claim_run_dir(Path("runs/qlora"), resume=False, overwrite=False):
        ...  # train; the lock is released on exit, also after an error
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from qlora_lab.finetune.rundir import LOCK_FILE, LOCK_OWNER, clear_run, run_entries


class RunDirBusyError(ValueError):
    """Another process is writing to this output directory."""


def _owner(output_dir: Path) -> str:
    """Who holds the lock, as its owner file says (best effort: it may be mid-write)."""
    try:
        info = json.loads((output_dir / LOCK_OWNER).read_text())
    except (OSError, ValueError):
        return "another process"
    started = time.strftime("%H:%M:%S", time.localtime(info.get("started", 0)))
    return f"process {info.get('pid')} on {info.get('host')}, started {started}: {info.get('command')}"


@contextmanager
def run_dir_lock(output_dir: Path):
    """Hold `output_dir/.lock` for the duration; RunDirBusyError names the holder when taken."""
    from filelock import FileLock, Timeout

    lock = FileLock(str(output_dir / LOCK_FILE), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise RunDirBusyError(f"output_dir={str(output_dir)!r} is in use by {_owner(output_dir)}; wait for it "
                              "to finish (or stop it), or choose another --output-dir") from None
    owner = output_dir / LOCK_OWNER
    try:
        owner.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
                                     "command": " ".join(["qlora-lab", *sys.argv[1:]])[:200]}))
        yield
    finally:
        owner.unlink(missing_ok=True)
        lock.release()


@contextmanager
def claim_run_dir(output_dir: Path, resume: bool, overwrite: bool, enabled: bool = True):
    """Lock `output_dir`; refuse a fresh run over an older one unless `overwrite` (which clears it).

    `enabled=False` (the other processes of a launch: the main one holds the lock) does nothing.
    """
    if not enabled:
        yield
        return
    with run_dir_lock(output_dir):
        entries = run_entries(output_dir)
        if entries and not resume:
            if not overwrite:
                raise ValueError(f"output_dir={str(output_dir)!r} already holds a run ({', '.join(entries)}): "
                                 "continue it with --resume, replace it with --overwrite, or choose another "
                                 "--output-dir")
            clear_run(output_dir)
        yield
