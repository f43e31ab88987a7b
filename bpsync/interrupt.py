"""Ctrl-C during apply, the way Terraform users expect (SPEC §2).

The first interrupt says at once what happens and stops starting new work; the jobs already
running are waited for. The second stops waiting (within a second): the jobs stay pending in
state and the next apply re-attaches to them. Nothing here knows about signals' sources: the
CLI installs `Interrupts` as the SIGINT handler, tests call it directly.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from bpsync.errors import Interrupted

FIRST = (
    "Interrupt received: waiting for the running jobs to finish; press Ctrl-C again to stop "
    "waiting — the jobs are re-attached on the next apply"
)
SECOND = "Second interrupt: no longer waiting on the running jobs"


class Interrupts:
    """Counts interrupts; the applier asks it whether to start work and whether to wait."""

    def __init__(self, note: Callable[[str], None]) -> None:
        self._note = note
        self.count = 0
        self.stop_starting = threading.Event()
        self.stop_waiting = threading.Event()

    def __call__(self, signum: int = signal.SIGINT, frame: Any = None) -> None:
        self.count += 1
        if self.count == 1:
            self.stop_starting.set()
            self._note(FIRST)
        else:
            self.stop_waiting.set()
            self._note(SECOND)

    def sleep(self, seconds: float) -> None:
        """Sleep that a second interrupt cuts short (the client's poll and backoff sleeps)."""
        if self.stop_waiting.wait(max(0.0, seconds)):
            raise Interrupted("stopped waiting after a second interrupt")

    def check(self) -> None:
        if self.stop_waiting.is_set():
            raise Interrupted("stopped waiting after a second interrupt")

    @contextmanager
    def installed(self) -> Iterator[Interrupts]:
        """This object as the SIGINT handler while the block runs (main thread only)."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = signal.signal(signal.SIGINT, self)
        try:
            yield self
        finally:
            signal.signal(signal.SIGINT, previous)
