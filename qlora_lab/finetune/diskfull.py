"""A full disk (ENOSPC) or quota (EDQUOT) during a run: one line that says what to do, nothing lost.

Every write of a run is atomic (`finetune.atomic`), so a full disk leaves the last good
checkpoint intact; this guard removes the unfinished `.tmp-*` writes (they would keep
the disk full) and turns the error into one line naming the disk, the free space needed
and the checkpoint that `--resume` continues from.
"""

from __future__ import annotations

import shutil
from contextlib import contextmanager
from pathlib import Path

from qlora_lab.finetune.atomic import DiskFullError, folder_bytes, is_disk_full, mount_point, remove_temporaries
from qlora_lab.finetune.rundir import CHECKPOINTS_DIR, last_checkpoint

MB = 1024 * 1024


def disk_full_message(output_dir: Path, needed: int) -> str:
    disk = mount_point(output_dir)
    free = shutil.disk_usage(disk).free
    saved = last_checkpoint(output_dir)
    kept = f"the last good checkpoint is {saved}" if saved else "no checkpoint was saved yet"
    return (f"disk full on {disk} while writing to {output_dir} ({free / MB:.1f} MB free, about "
            f"{needed / MB:.1f} MB more needed): {kept}; free some space, then continue with --resume")


@contextmanager
def disk_full_reported(output_dir: Path, state_bytes: int):
    """Turn ENOSPC/EDQUOT inside the block into a DiskFullError; `state_bytes` sizes one checkpoint.

    The space needed is the size of the newest checkpoint (or `state_bytes` before the first).
    """
    try:
        yield
    except BaseException as error:
        if isinstance(error, DiskFullError) or not is_disk_full(error):
            raise
        remove_temporaries(output_dir, output_dir / CHECKPOINTS_DIR)
        needed = max(folder_bytes(last_checkpoint(output_dir)), state_bytes)
        raise DiskFullError(disk_full_message(output_dir, needed)) from None
