"""The state lock: who holds it, how it is described, and the local lock file.

Every backend describes its lock with :class:`LockInfo` and refuses with :func:`lock_held`, so
users see the same message whatever holds the state. :class:`LockFile` is the local
implementation: ``lock.json`` created with ``O_CREAT|O_EXCL``.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import socket
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bpsync.errors import LockHeld, StateCorrupt, StateError
from bpsync.units import format_duration as format_duration  # re-exported (bpsync.state)

if sys.platform != "win32":
    import fcntl

Notify = Callable[[str], None]

# An empty or half-written lock file younger than this is taken to be a lock being created
# right now (O_EXCL creates the file before its content is written), not a damaged one.
_CREATING_GRACE_S = 5.0


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # containers often run as a uid with no passwd entry
        return f"uid{os.getuid()}" if hasattr(os, "getuid") else "unknown"


@dataclass(frozen=True)
class LockInfo:
    """One holder of the state lock. ``taken_over_from`` is set when acquiring it replaced a
    lock left by a dead process; it is not part of the stored lock."""

    id: str
    holder: str  # user@host
    pid: int
    host: str
    command: str  # e.g. "bpsync apply"
    created_at: str  # ISO-8601 UTC
    taken_over_from: LockInfo | None = None

    @classmethod
    def new(cls, command: str, *, now: datetime | None = None) -> LockInfo:
        host = socket.gethostname()
        return cls(
            id=str(uuid.uuid4()),
            holder=f"{_user()}@{host}",
            pid=os.getpid(),
            host=host,
            command=command,
            created_at=_iso(now or _utc_now()),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "holder": self.holder,
            "pid": self.pid,
            "host": self.host,
            "command": self.command,
            "created_at": self.created_at,
        }

    @classmethod
    def from_dict(cls, data: object) -> LockInfo:
        """Raises StateCorrupt (without location: the caller knows where it read it)."""
        if not isinstance(data, dict):
            raise StateCorrupt("the lock is not a JSON object")
        for key in ("id", "holder", "host", "command", "created_at"):
            if not isinstance(data.get(key), str) or not data[key]:
                raise StateCorrupt(f"the lock lacks a valid {key!r}")
        pid = data.get("pid")
        if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
            raise StateCorrupt("the lock lacks a valid 'pid'")
        return cls(
            id=data["id"],
            holder=data["holder"],
            pid=pid,
            host=data["host"],
            command=data["command"],
            created_at=data["created_at"],
        )

    def age(self, now: datetime | None = None) -> float | None:
        """Seconds since the lock was taken; None if ``created_at`` does not parse."""
        try:
            created = datetime.fromisoformat(self.created_at)
        except ValueError:
            return None
        if created.tzinfo is None:
            created = created.replace(tzinfo=UTC)
        return max(0.0, ((now or _utc_now()) - created).total_seconds())

    def describe(self, now: datetime | None = None) -> str:
        age = self.age(now)
        held = f"held for {format_duration(age)}" if age is not None else f"since {self.created_at}"
        return (
            f"{self.holder} (lock id {self.id}, pid {self.pid}, host {self.host}, "
            f"command `{self.command}`, {held})"
        )


def lock_held(
    info: LockInfo, *, where: str, waited: float = 0, now: datetime | None = None
) -> LockHeld:
    """The one refusal users see when the state is locked, whichever backend holds it."""
    after = f" after waiting {format_duration(waited)}" if waited >= 1 else ""
    return LockHeld(
        f"state {where} is locked by {info.describe(now)}{after}",
        hint=(
            "wait for that command to finish (or retry with --lock-timeout 5m); "
            f"if it is gone, clear the lock with `bpsync force-unlock {info.id}`"
        ),
    )


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this host (signal 0 only checks)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except OSError:
        return True  # cannot tell: assume alive, never steal a live lock
    return True


def notify_stderr(message: str) -> None:
    print(f"Warning: {message}", file=sys.stderr)


class _Creating:
    """Marker for a lock file that exists but whose content is not written yet."""


_CREATING = _Creating()


class LockFile:
    """``lock.json`` in a directory. Creation is atomic by ``O_CREAT|O_EXCL``; removals
    (release, takeover, force-unlock) compare ids under an ``flock`` on ``lock.guard`` so that
    none can remove a lock it did not just inspect. ``flock`` dies with its process, so the
    guard itself can never go stale."""

    def __init__(self, path: Path, *, where: str | None = None) -> None:
        self.path = path
        self.guard_path = path.with_name(path.stem + ".guard")
        self.where = where or str(path.parent)

    # -- reading --------------------------------------------------------------------------

    def _corrupt(self, detail: str) -> StateCorrupt:
        return StateCorrupt(
            f"{self.path}: lock file is damaged ({detail})",
            hint=(
                "bpsync does not remove a lock it cannot read: if no bpsync command is running "
                f"against this state, delete {self.path} by hand"
            ),
        )

    def _read(self) -> LockInfo | _Creating | None:
        try:
            raw = self.path.read_bytes()
            mtime = self.path.stat().st_mtime
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StateError(f"cannot read lock file {self.path}: {exc.strerror}") from exc
        try:
            data = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            if time.time() - mtime < _CREATING_GRACE_S and len(raw) < 4096:
                return _CREATING
            raise self._corrupt(f"not valid JSON: {exc}") from exc
        try:
            return LockInfo.from_dict(data)
        except StateCorrupt as exc:
            raise self._corrupt(exc.message) from exc

    def current(self) -> LockInfo | None:
        """The lock as stored now. A lock still being written reads as none yet."""
        held = self._read()
        return held if isinstance(held, LockInfo) else None

    # -- writing --------------------------------------------------------------------------

    @contextlib.contextmanager
    def _guard(self) -> Iterator[None]:
        if sys.platform == "win32":  # no flock: the O_EXCL create still keeps locks exclusive
            yield
            return
        try:
            fd = os.open(self.guard_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise StateError(f"cannot open {self.guard_path}: {exc.strerror}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the flock

    def _try_create(self, info: LockInfo) -> bool:
        data = (json.dumps(info.to_dict(), indent=2, sort_keys=True) + "\n").encode("utf-8")
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        except OSError as exc:
            raise StateError(f"cannot create lock file {self.path}: {exc.strerror}") from exc
        try:
            try:
                # One write call: a reader sees an empty file or the whole lock, and treats an
                # empty one as being created (see _CREATING_GRACE_S).
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
        except BaseException as exc:
            with contextlib.suppress(OSError):
                self.path.unlink()
            if isinstance(exc, OSError):
                raise StateError(f"cannot write lock file {self.path}: {exc.strerror}") from exc
            raise
        return True

    def _is_stale(self, held: LockInfo) -> bool:
        # Only a process on this host can be checked; elsewhere a lock may be live forever.
        return (
            held.host == socket.gethostname()
            and held.pid != os.getpid()
            and not pid_alive(held.pid)
        )

    def _remove_if(self, lock_id: str) -> bool:
        """Remove the lock if it still has this id. Call under the guard."""
        held = self._read()
        if not isinstance(held, LockInfo) or held.id != lock_id:
            return False
        try:
            self.path.unlink()
        except FileNotFoundError:
            return False
        return True

    def acquire(
        self,
        command: str,
        *,
        timeout: float = 0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        notify: Notify | None = None,
        poll_interval: float = 0.5,
    ) -> LockInfo:
        notify = notify or notify_stderr
        start = clock()
        deadline = start + max(0.0, timeout)
        mine = LockInfo.new(command)
        taken_over: LockInfo | None = None
        while True:
            if self._try_create(mine):
                return replace(mine, taken_over_from=taken_over)
            held = self._read()
            if held is None:
                continue  # released between our create and our read: try again at once
            if isinstance(held, LockInfo) and self._is_stale(held):
                with self._guard():
                    removed = self._remove_if(held.id)
                if removed:
                    taken_over = held
                    notify(
                        f"took over the state lock {held.id} left by `{held.command}` "
                        f"(pid {held.pid} on {held.host} no longer exists)"
                    )
                continue
            now = clock()
            if now >= deadline:
                if isinstance(held, _Creating):
                    raise LockHeld(
                        f"state {self.where} is locked: another command is creating "
                        f"the lock {self.path} right now",
                        hint="retry in a moment, or with --lock-timeout 1m",
                    )
                raise lock_held(held, where=self.where, waited=now - start)
            sleep(min(poll_interval, deadline - now))

    def release(self, info: LockInfo, *, notify: Notify | None = None) -> None:
        """Remove the lock only if it is still ours: a lock that was force-unlocked and taken
        by another command must survive our exit."""
        with self._guard():
            removed = self._remove_if(info.id)
        if not removed:
            (notify or notify_stderr)(
                f"the state lock {info.id} was no longer ours when `{info.command}` ended "
                "(force-unlocked?); left the current lock in place"
            )

    def force_unlock(self, lock_id: str) -> LockInfo:
        not_locked = StateError(f"state {self.where} is not locked; nothing to unlock")
        if not self.path.exists():
            raise not_locked
        with self._guard():
            held = self._read()
            if held is None or isinstance(held, _Creating):
                raise not_locked
            if held.id != lock_id:
                raise StateError(
                    f"lock id {lock_id} does not match the current lock: "
                    f"state {self.where} is locked by {held.describe()}",
                    hint="pass the id shown in the lock error; bpsync left the lock in place",
                )
            self.path.unlink()
            return held
