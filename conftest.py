"""One execution per notebook in `make test`: nbval's run feeds the book's cache.

`make test` runs nbval on notebooks/ first. This plugin records every kernel message of
each cell nbval executes and, once all the cells of a notebook have passed, replays them
through nbclient's own output handling (streams, displays, clear_output, display
updates, ipywidgets state) into an executed copy of the notebook, stored in the book's
jupyter-cache (`execute.cache` in _config.yml). `jupyter-book build` then finds every
notebook in its cache and executes none: the book shows what nbval ran and checked.
A notebook with a failing cell is not cached, so the book build runs it again and fails.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

REPO_DIR = Path(__file__).resolve().parent
BOOK_CACHE = REPO_DIR / "_build" / ".jupyter_cache"  # _config.yml: execute.cache


class ReplayKernelClient:
    """What nbclient's Output-widget mimic needs of a kernel client during a replay.

    nbclient routes outputs into ipywidgets' Output widgets as a frontend would, and
    syncs their state back to the kernel; in a replay the kernel is nbval's, so the
    sync is dropped (the routed outputs still land in the stored widget state).
    """

    def __init__(self) -> None:
        from types import SimpleNamespace

        from jupyter_client.session import Session

        self.session = Session()
        self.shell_channel = SimpleNamespace(send=lambda msg: None)


class NotebookRecording:
    """The executed copy of one notebook, filled cell by cell as nbval runs them."""

    def __init__(self, nbval_file) -> None:
        from nbclient import NotebookClient

        self.path = Path(str(nbval_file.fspath))
        self.nb = copy.deepcopy(nbval_file.nb)
        self.code_cells = [c for c in self.nb.cells if c.cell_type == "code"]
        for cell in self.code_cells:
            cell.outputs, cell.execution_count = [], None
        self.client = NotebookClient(self.nb, record_timing=False)
        self.client.reset_execution_trackers()
        self.client.kc = ReplayKernelClient()
        self.passed: set[int] = set()
        self.failed = False

    def add_cell(self, cell_num: int, request_id: str | None, messages: list[dict], ok: bool) -> None:
        from nbclient.exceptions import CellExecutionComplete

        self.failed |= not ok or request_id is None
        if self.failed:
            return
        cell = self.code_cells[cell_num]
        self.client.clear_before_next_output = False  # per-cell state, as nbclient resets it
        for msg in messages:
            if msg.get("parent_header", {}).get("msg_id") != request_id:
                continue
            try:
                self.client.process_message(msg, cell, self.nb.cells.index(cell))
            except CellExecutionComplete:
                break
        cell.execution_count = cell_num + 1  # nbval runs cells without history numbers
        self.passed.add(cell_num)

    def complete(self) -> bool:
        return not self.failed and len(self.passed) == len(self.code_cells)

    def store_in_book_cache(self) -> None:
        from jupyter_cache import get_cache
        from jupyter_cache.base import CacheBundleIn

        self.client.set_widgets_metadata()
        cache = get_cache(str(BOOK_CACHE))
        cache.cache_notebook_bundle(
            CacheBundleIn(self.nb, str(self.path), data={"executed_by": "nbval"}),
            check_validity=False,
            overwrite=True,
        )


_recordings: dict[str, NotebookRecording] = {}


def _is_nbval_cell(item) -> bool:
    return type(item).__name__ == "IPyNbCell" and hasattr(item.parent, "nb")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    if not _is_nbval_cell(item):
        yield
        return
    nbfile = item.parent
    recording = _recordings.setdefault(str(nbfile.fspath), NotebookRecording(nbfile))
    messages: list[dict] = []
    request: dict[str, str | None] = {"id": None}
    read_message, execute = nbfile.get_kernel_message, nbfile.kernel.execute_cell_input

    def recording_read(*args, **kwargs):
        msg = read_message(*args, **kwargs)
        messages.append(msg)
        return msg

    def recording_execute(*args, **kwargs):
        request["id"] = execute(*args, **kwargs)
        return request["id"]

    nbfile.get_kernel_message, nbfile.kernel.execute_cell_input = recording_read, recording_execute
    try:
        outcome = yield
    finally:
        del nbfile.get_kernel_message, nbfile.kernel.execute_cell_input
    recording.add_cell(item.cell_num, request["id"], messages, ok=outcome.excinfo is None)
    if recording.complete():
        recording.store_in_book_cache()
