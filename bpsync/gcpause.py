"""Python's cycle collector paused while a plan's rows are built and written.

A diff or a rendering makes millions of small objects (lines, cells, row changes) that hold
no reference cycles; reference counting frees them. The collector's passes over them cost
about a fifth of a plan with 500,000 changed rows and free nothing. Only these stretches run
without it: HTTP exchanges (httpx's responses and their streams refer to each other) and
everything else keep it, so no cycle outlives its command.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def cycle_collector_paused() -> Iterator[None]:
    """Pause the collector for the block (nested: the outermost resumes it)."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
