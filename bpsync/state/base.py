"""The contract every state backend keeps, and the logic all of them share.

A backend stores three things: the state document, the applied snapshots (content-addressed by
the SHA-256 hex of the canonical CSV bytes, in the format of :mod:`bpsync.state.snapshot`), and
the lock. :class:`StateBackend` holds everything that is the same whatever the storage: the
serial/lineage check that refuses lost updates, snapshot digest checks and verification, the
lock's wait loop, release and force-unlock. A backend subclasses it and implements only the
storage primitives (the abstract ``_``-methods below) and the wording of its recovery advice.
The contract suite, ``tests/test_state_contract.py``, runs against every backend.
"""

from __future__ import annotations

import contextlib
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import BinaryIO

from bpsync.errors import LockHeld, StateCorrupt, StateError
from bpsync.state.lock import (
    LockBeingCreated,
    LockInfo,
    Notify,
    lock_held,
    notify_stderr,
)
from bpsync.state.model import State, dumps_state, parse_state
from bpsync.state.snapshot import (
    DigestMismatch,
    Readable,
    check_snapshot_id,
    decode_snapshot,
    encode_snapshot,
)
from bpsync.table import sha256_file

# A lock that refuses to be created yet cannot be read back is normally one released between
# the two calls; this many in a row means a store that cannot create it at all.
_MAX_VANISHED = 20


@dataclass(frozen=True)
class Wording:
    """How a backend names its things and how users recover them there (paths and git for a
    directory, object versions and ``aws s3`` for a bucket)."""

    state_noun: str  # "state file", "state"
    restore_state: str  # how to get a good state document back
    lineage_hint: str  # where to look when the lineage differs
    snapshot_missing: str  # how to get a missing snapshot back
    snapshot_damaged: str  # how to get a damaged snapshot back
    lock_noun: str  # "lock file", "lock"
    lock_damaged: str  # how to clear a lock that cannot be read
    no_lock: str  # what is wrong when a lock can be neither created nor read


@dataclass(frozen=True)
class _Seen:
    """The state document as this backend last read or wrote it."""

    serial: int
    lineage: str
    version: str | None


class StateBackend(ABC):
    """Where state, snapshots and the lock live.

    Errors are always :class:`bpsync.errors.StateError` or a subclass: ``StateCorrupt`` for a
    stored document that cannot be trusted (never read as empty), ``LockHeld`` for a refused
    lock.
    """

    def __init__(self) -> None:
        self._seen: _Seen | None = None

    # -- what a backend implements --------------------------------------------------------

    @property
    @abstractmethod
    def location(self) -> str:
        """Where the state is, as users should see it (``.bpsync``, ``s3://bucket/prefix``)."""

    @property
    @abstractmethod
    def wording(self) -> Wording: ...

    @property
    @abstractmethod
    def state_where(self) -> str:
        """The state document, as messages name it."""

    @property
    @abstractmethod
    def backup_where(self) -> str: ...

    @property
    @abstractmethod
    def lock_where(self) -> str: ...

    @abstractmethod
    def snapshot_where(self, sha256: str) -> str: ...

    @abstractmethod
    def _load_state(self) -> tuple[bytes, str | None] | None:
        """The stored state document and its version (an ETag; None where the store has no
        versions), or None when there is none."""

    @abstractmethod
    def _backup_exists(self) -> bool: ...

    @abstractmethod
    def _store_state(
        self, data: bytes, *, previous: bytes | None, version: str | None
    ) -> str | None:
        """Replace the state document with ``data`` atomically, keeping ``previous`` as the
        backup; only if it is still at ``version``, where the store can check that (else
        raise :meth:`conflict`). Returns the new version."""

    @abstractmethod
    def _snapshot_exists(self, sha256: str) -> bool: ...

    @abstractmethod
    def _store_snapshot(self, sha256: str, stream: BinaryIO) -> None:
        """Store ``stream`` (snapshot bytes) as snapshot ``sha256``: all of it or nothing.
        Reading it raises :class:`DigestMismatch` at its end if the table is not ``sha256``;
        let that propagate, with nothing stored."""

    @abstractmethod
    def _open_snapshot_bytes(self, sha256: str) -> tuple[Readable, str] | None:
        """The stored bytes of snapshot ``sha256`` and where they are (as messages name it),
        or None when it does not exist. A snapshot may be stored under either name of
        :func:`~bpsync.state.snapshot.snapshot_names`: the first found is opened."""

    @abstractmethod
    def _snapshot_ids(self) -> Iterable[str]:
        """The ids of every stored snapshot, whichever its name (nothing else found beside
        them)."""

    @abstractmethod
    def _delete_snapshots(self, ids: list[str]) -> list[str]:
        """Delete these snapshots, under every name they are stored as; return those that
        were deleted."""

    @abstractmethod
    def _create_lock(self, info: LockInfo) -> bool:
        """Create the lock as ``info`` only if there is none (atomically). False if there is."""

    @abstractmethod
    def _read_lock(self) -> LockInfo | LockBeingCreated | None: ...

    @abstractmethod
    def _remove_lock(self, lock_id: str) -> bool:
        """Remove the lock only if its id is still ``lock_id`` (atomically). False if not."""

    def _take_over(self, held: LockInfo) -> bool:
        """Remove ``held`` if its holder is known to be dead. By default never: a holder can
        only be proven dead where its process can be checked."""
        return False

    # -- state ----------------------------------------------------------------------------

    def _state_corrupt(self, detail: str, hint: str = "") -> StateCorrupt:
        recover = f"bpsync never treats damaged state as empty. {self.wording.restore_state}"
        return StateCorrupt(
            f"{self.state_where}: {self.wording.state_noun} is damaged: {detail}",
            hint=f"{hint}; {recover}" if hint else recover,
        )

    def conflict(self, detail: str) -> StateError:
        """The refusal of a write that would lose someone else's update."""
        return StateError(
            f"refusing to overwrite {self.state_where}: {detail}",
            hint="run the command again so it starts from the current state",
        )

    def _read_current(self) -> tuple[State, bytes | None, str | None]:
        """The stored state, its bytes and version (None, None when there is none)."""
        stored = self._load_state()
        if stored is None:
            if self._backup_exists():
                raise self._state_corrupt(f"it is missing but {self.backup_where} exists")
            return State.empty(), None, None
        raw, version = stored
        return parse_state(raw, self._state_corrupt), raw, version

    def read(self) -> State:
        """The stored state; ``State.empty()`` (serial 0) when none was ever written."""
        state, _, version = self._read_current()
        self._seen = _Seen(state.serial, state.lineage, version)
        return state

    def write(self, state: State) -> State:
        """Store ``state`` atomically and return it as stored (serial + 1, lineage set).

        Refuses with StateError when the stored serial is not ``state.serial`` (someone wrote
        since ``state`` was read: a lost update) or the lineage differs. Keeps the previous
        document as a backup.
        """
        current, raw, version = self._read_current()
        if current.serial != state.serial:
            raise self.conflict(
                f"it is at serial {current.serial} but this state was read at serial "
                f"{state.serial} (another command wrote state meanwhile)"
            )
        if raw is not None and state.lineage != current.lineage:
            raise StateError(
                f"refusing to overwrite {self.state_where}: it belongs to lineage "
                f"{current.lineage}, this state to lineage {state.lineage or '(new)'}",
                hint=self.wording.lineage_hint,
            )
        seen = self._seen
        if (
            seen is not None
            and (seen.serial, seen.lineage) == (state.serial, state.lineage)
            and seen.version != version
        ):
            raise self.conflict(
                f"it was replaced since this command read it at serial {state.serial} "
                "(same serial, different content)"
            )
        import uuid  # only to write state

        new = State(
            serial=state.serial + 1,
            lineage=state.lineage or str(uuid.uuid4()),
            tables=state.tables,
            endpoint=state.endpoint,
        )
        data = dumps_state(new).encode("utf-8")
        new_version = self._store_state(data, previous=raw, version=version)
        self._seen = _Seen(new.serial, new.lineage, new_version)
        return new

    # -- snapshots ------------------------------------------------------------------------

    def has_snapshot(self, sha256: str) -> bool:
        return self._snapshot_exists(check_snapshot_id(sha256))

    def put_snapshot(self, sha256: str, source: Path) -> None:
        """Record the canonical table at ``source`` as snapshot ``sha256``, streaming it, and
        refuse if its bytes do not hash to ``sha256``. Recording an existing one is a no-op."""
        where = self.snapshot_where(check_snapshot_id(sha256))
        try:
            if self._snapshot_exists(sha256):
                # Content-addressed: nothing to store, but still refuse a caller's wrong digest.
                actual = sha256_file(source)
            else:
                actual = self._encode_and_store(sha256, source, where)
        except OSError as exc:
            raise StateError(f"cannot record snapshot of {source} in {where}: {exc}") from exc
        if actual != sha256:
            raise StateError(
                f"refusing to record {source} as snapshot {sha256}: its bytes hash to {actual}",
                hint="the table changed while bpsync read it; run the command again",
            )

    def check_snapshot_room(
        self, table: str, plain_size: int, measure: Callable[[], int], warn: Callable[[str], None]
    ) -> None:
        """Before any upload: refuse (StateError) a snapshot this backend cannot keep, or warn.
        ``plain_size`` is the table's size, ``measure()`` computes the snapshot's (a pass over
        the table, so only called when needed). A bucket keeps any size."""
        del table, plain_size, measure, warn

    def _encode_and_store(self, sha256: str, source: Path, where: str) -> str:
        encoder, stream = encode_snapshot(open(source, "rb"), sha256)  # noqa: SIM115 - closed below
        try:
            self._store_snapshot(sha256, stream)
        except DigestMismatch as exc:
            return exc.actual
        finally:
            stream.close()
        if encoder.actual is None:  # the store stopped reading early: never accept that
            raise StateError(f"storing snapshot {where} ended before the table did")
        return encoder.actual

    def open_snapshot(self, sha256: str, *, table: str | None = None) -> BinaryIO:
        """The canonical CSV bytes of a snapshot, as a stream. Missing → StateError; bytes
        that do not match ``sha256`` (checked when the stream reaches its end) → StateCorrupt.
        ``table`` only makes messages say which table the snapshot belongs to."""
        opened = self._open_snapshot_bytes(check_snapshot_id(sha256))
        if opened is None:
            of_table = f" of table {table}" if table else ""
            raise StateError(
                f"the applied snapshot{of_table} ({sha256}) is missing: "
                f"{self.snapshot_where(sha256)} does not exist",
                hint=self.wording.snapshot_missing,
            )
        body, where = opened
        return decode_snapshot(body, sha256, where, self.wording.snapshot_damaged)

    def prune_snapshots(self, keep: Iterable[str]) -> list[str]:
        """Delete every snapshot not in ``keep``; return the deleted ids, sorted."""
        keep_set = set(keep)
        doomed = sorted({sha for sha in self._snapshot_ids() if sha not in keep_set})
        return sorted(self._delete_snapshots(doomed)) if doomed else []

    # -- lock -----------------------------------------------------------------------------

    def lock_corrupt(self, detail: str) -> StateCorrupt:
        """The error for a stored lock that cannot be read (it is never removed)."""
        return StateCorrupt(
            f"{self.lock_where}: {self.wording.lock_noun} is damaged ({detail})",
            hint="bpsync does not remove a lock it cannot read: if no bpsync command is running "
            f"against this state, {self.wording.lock_damaged}",
        )

    def current_lock(self) -> LockInfo | None:
        """The lock as stored now. A lock still being written reads as none yet."""
        held = self._read_lock()
        return held if isinstance(held, LockInfo) else None

    @contextlib.contextmanager
    def lock(
        self,
        command: str,
        *,
        timeout: float = 0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        notify: Notify | None = None,
        poll_interval: float = 0.5,
    ) -> Iterator[LockInfo]:
        """Hold the state lock for the ``with`` block, waiting up to ``timeout`` seconds, else
        LockHeld. ``notify`` hears of a dead holder's lock being taken over."""
        notify = notify or notify_stderr
        info = self._acquire(
            command,
            timeout=timeout,
            clock=clock,
            sleep=sleep,
            notify=notify,
            poll_interval=poll_interval,
        )
        try:
            yield info
        finally:
            try:
                self._release(info, notify)
            except StateError as exc:
                # Never mask the command's own error with a failure to tidy up.
                notify(f"could not release the state lock {info.id}: {exc}")

    def _acquire(
        self,
        command: str,
        *,
        timeout: float,
        clock: Callable[[], float],
        sleep: Callable[[float], None],
        notify: Notify,
        poll_interval: float,
    ) -> LockInfo:
        start = clock()
        deadline = start + max(0.0, timeout)
        mine = LockInfo.new(command)
        taken_over: LockInfo | None = None
        vanished = 0
        while True:
            if self._create_lock(mine):
                return replace(mine, taken_over_from=taken_over)
            held = self._read_lock()
            if held is None:
                # Released between our create and our read: try again at once, but never spin
                # forever on a store that refuses creates without showing a lock.
                vanished += 1
                if vanished < _MAX_VANISHED:
                    continue
                raise StateError(
                    f"cannot take the state lock {self.lock_where}: the store refuses to "
                    "create it but shows no lock",
                    hint=self.wording.no_lock,
                )
            if isinstance(held, LockInfo):
                if held.id == mine.id:
                    return mine  # our own create, retried after its answer was lost
                if self._take_over(held):
                    taken_over = held
                    notify(
                        f"took over the state lock {held.id} left by `{held.command}` "
                        f"(pid {held.pid} on {held.host} no longer exists)"
                    )
                    continue
            now = clock()
            if now >= deadline:
                raise self._refusal(held, waited=now - start)
            sleep(min(poll_interval, deadline - now))

    def _refusal(self, held: LockInfo | LockBeingCreated, *, waited: float) -> LockHeld:
        if isinstance(held, LockInfo):
            return lock_held(held, where=self.location, waited=waited)
        return LockHeld(
            f"state {self.location} is locked: another command is creating "
            f"the lock {self.lock_where} right now",
            hint="retry in a moment, or with --lock-timeout 1m",
        )

    def _release(self, info: LockInfo, notify: Notify) -> None:
        """Remove the lock only if it is still ours: a lock that was force-unlocked and taken
        by another command must survive our exit."""
        if not self._remove_lock(info.id):
            notify(
                f"the state lock {info.id} was no longer ours when `{info.command}` ended "
                "(force-unlocked?); left the current lock in place"
            )

    def force_unlock(self, lock_id: str) -> LockInfo:
        """Remove the lock if its id is ``lock_id``; StateError if unlocked or another id."""
        held = self._read_lock()
        if not isinstance(held, LockInfo):
            raise StateError(f"state {self.location} is not locked; nothing to unlock")
        if held.id != lock_id:
            raise StateError(
                f"lock id {lock_id} does not match the current lock: "
                f"state {self.location} is locked by {held.describe()}",
                hint="pass the id shown in the lock error; bpsync left the lock in place",
            )
        if not self._remove_lock(lock_id):
            raise StateError(
                f"the lock of state {self.location} changed while it was being removed",
                hint="run `bpsync force-unlock` again with the id of the current lock",
            )
        return held
