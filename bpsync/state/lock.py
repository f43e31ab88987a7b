"""The state lock as every backend sees it: who holds it, its stored form, how it is described.

Every backend describes its lock with :class:`LockInfo`, stores it with :func:`encode_lock` and
refuses with :func:`lock_held`, so users see the same message whatever holds the state. The
waiting, releasing and force-unlocking are in :mod:`bpsync.state.base`; how a lock is created
and removed atomically is each backend's own.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from bpsync.errors import LockHeld, StateCorrupt
from bpsync.units import format_duration

Notify = Callable[[str], None]


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _user() -> str:
    import getpass  # this and socket, uuid: only to take a lock (not to plan without one)

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
        import socket
        import uuid

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


class LockBeingCreated:
    """What a backend reads when a lock exists but its content is not written yet (a local
    ``O_EXCL`` create happens before the write): held, but nobody to name yet."""


LOCK_BEING_CREATED = LockBeingCreated()


def encode_lock(info: LockInfo) -> bytes:
    """The stored form of a lock, the same on every backend: indent 2, sorted keys."""
    return (json.dumps(info.to_dict(), indent=2, sort_keys=True) + "\n").encode("utf-8")


def parse_lock(raw: bytes, corrupt: Callable[[str], StateCorrupt]) -> LockInfo:
    """The lock in a stored lock's bytes; ``corrupt(detail)`` builds the error that names the
    backend's lock and how to clear it (a lock that cannot be read is never removed)."""
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise corrupt(f"not valid JSON: {exc}") from exc
    try:
        return LockInfo.from_dict(data)
    except StateCorrupt as exc:
        raise corrupt(exc.message) from exc
