"""Writes that happen whole or not at all, and one clear error when the disk is full.

A file is written under a temporary name in the same folder, flushed to disk, then
renamed over its final name (`os.replace` is atomic on POSIX): a crash or a full disk
leaves either the old file or the new one, never half of one. Folders (a checkpoint,
the adapter) are built under `.tmp-*` and renamed the same way.

    write_bytes(path, data)          # state.pt, sha256.json, summary.json, run.json
    with atomic_dir(target) as tmp:  # fill tmp; it becomes `target` only when complete
        ...
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

TMP_PREFIX = ".tmp-"  # unfinished writes; readers ignore them, a failed write removes them
DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
DISK_FULL_TEXTS = ("No space left on device", "Disk quota exceeded")


class DiskFullError(OSError):
    """The disk (or quota) filled up during a write; the message says which disk and what is kept."""

    def __init__(self, message: str) -> None:
        super().__init__(errno.ENOSPC, message)

    def __str__(self) -> str:
        return self.strerror


def is_disk_full(error: BaseException) -> bool:
    """ENOSPC/EDQUOT, also when a library wrapped it in its own exception (safetensors, torch)."""
    if isinstance(error, OSError) and error.errno in DISK_FULL_ERRNOS:
        return True
    return any(text in str(error) for text in DISK_FULL_TEXTS)


def _write(path: Path, data: bytes) -> None:
    """The one place bytes reach a file (the fault-injection tests replace it to fill the disk)."""
    with path.open("wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())


def write_bytes(path: str | Path, data: bytes) -> Path:
    """Write `data` to `path` atomically (temporary file in the same folder, then rename)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=TMP_PREFIX + path.name + "-")
    os.close(fd)
    try:
        _write(Path(tmp), data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text(path: str | Path, text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


@contextmanager
def atomic_dir(target: str | Path):
    """Yield a temporary folder beside `target`; on success it replaces `target`, on error it is removed."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=TMP_PREFIX + target.name + "-"))
    try:
        yield tmp
        if target.exists():  # a checkpoint redone after a resume: the new one wins
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def remove_temporaries(*folders: str | Path) -> None:
    """Delete the `.tmp-*` leftovers of unfinished writes (they would keep a full disk full)."""
    for folder in folders:
        for leftover in Path(folder).glob(TMP_PREFIX + "*") if Path(folder).is_dir() else []:
            if leftover.is_dir():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)


def mount_point(path: str | Path) -> Path:
    """The mount point of the file system holding `path` (what `df` names as the disk)."""
    path = Path(path).resolve()
    while not path.exists():
        path = path.parent
    while not os.path.ismount(path):
        path = path.parent
    return path


def folder_bytes(folder: str | Path | None) -> int:
    """Total size of the files under `folder` (0 when there is none)."""
    if folder is None or not Path(folder).is_dir():
        return 0
    return sum(f.stat().st_size for f in Path(folder).rglob("*") if f.is_file())
