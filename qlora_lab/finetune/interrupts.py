"""Ctrl-C during a fine-tune: honoured at the next step boundary, so the checkpoint is exact.

Python turns SIGINT into a KeyboardInterrupt wherever the main thread happens to be: in
the middle of a forward, or of `optimizer.step()` with half the parameters updated, after
the step's dropout masks drew from the RNG. A checkpoint taken there does not continue
the run exactly. Here the first Ctrl-C only asks the loop to stop after the current step
(which it checkpoints); a second one stops at once (`SecondInterrupt`), keeping the last
checkpoint on disk.
"""

from __future__ import annotations

import signal
import sys
import threading
from contextlib import contextmanager


class SecondInterrupt(KeyboardInterrupt):
    """Ctrl-C pressed again while the run was already stopping: stop now, without a new checkpoint."""


class StopRequest:
    """Set by the first Ctrl-C; the training loop reads `requested` between steps."""

    def __init__(self) -> None:
        self.requested = False

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise SecondInterrupt("stopped at once by a second Ctrl-C; the last checkpoint on disk is kept "
                                  "(continue with --resume)")
        self.requested = True
        print("\nCtrl-C: stopping after this step, with a checkpoint (Ctrl-C again to stop at once).",
              file=sys.stderr, flush=True)

    @contextmanager
    def installed(self, enabled: bool = True):
        """Route SIGINT to this request for the duration (main thread only; else a plain no-op)."""
        if not enabled or threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = signal.signal(signal.SIGINT, self._handle)
        try:
            yield self
        finally:
            signal.signal(signal.SIGINT, previous)
