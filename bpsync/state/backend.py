"""The contract every state backend keeps (local directory today, S3 later).

A backend stores three things: the state document, the applied snapshots (content-addressed
by the SHA-256 hex of the canonical CSV bytes), and the lock. The contract suite in
``tests/test_state.py`` runs against each implementation.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import BinaryIO, Protocol, runtime_checkable

from bpsync.state.lock import LockInfo, Notify
from bpsync.state.model import State


@runtime_checkable
class StateBackend(Protocol):
    """Where state, snapshots and the lock live.

    Errors are always :class:`bpsync.errors.StateError` or a subclass: ``StateCorrupt`` for a
    stored document that cannot be trusted (never read as empty), ``LockHeld`` for a refused
    lock.
    """

    @property
    def location(self) -> str:
        """Where the state is, as users should see it (``.bpsync``, ``s3://bucket/prefix``)."""
        ...

    def read(self) -> State:
        """The stored state; ``State.empty()`` (serial 0) when none was ever written."""
        ...

    def write(self, state: State) -> State:
        """Store ``state`` atomically and return it as stored (serial + 1, lineage set).

        Refuses with StateError when the stored serial is not ``state.serial`` (someone wrote
        since ``state`` was read: a lost update) or the lineage differs. Keeps the previous
        document as a backup.
        """
        ...

    def put_snapshot(self, sha256: str, source: Path) -> None:
        """Record the canonical table at ``source`` as snapshot ``sha256``, streaming it, and
        refuse if its bytes do not hash to ``sha256``. Recording an existing one is a no-op."""
        ...

    def has_snapshot(self, sha256: str) -> bool: ...

    def open_snapshot(self, sha256: str, *, table: str | None = None) -> BinaryIO:
        """The canonical CSV bytes of a snapshot, as a stream. Missing → StateError; bytes
        that do not match ``sha256`` (checked when the stream reaches its end) → StateCorrupt.
        ``table`` only makes messages say which table the snapshot belongs to."""
        ...

    def prune_snapshots(self, keep: Iterable[str]) -> list[str]:
        """Delete every snapshot not in ``keep``; return the deleted ids, sorted."""
        ...

    def lock(
        self,
        command: str,
        *,
        timeout: float = 0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        notify: Notify | None = None,
    ) -> AbstractContextManager[LockInfo]:
        """Hold the state lock for the ``with`` block, waiting up to ``timeout`` seconds, else
        LockHeld. ``notify`` hears of a dead holder's lock being taken over."""
        ...

    def force_unlock(self, lock_id: str) -> LockInfo:
        """Remove the lock if its id is ``lock_id``; StateError if unlocked or another id."""
        ...

    def current_lock(self) -> LockInfo | None: ...
