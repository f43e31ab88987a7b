"""The local state backend: a directory (``.bpsync/`` by default) meant to be committed to git.

Layout::

    .bpsync/
      .gitignore             ignores lock.json, lock.guard and *.tmp, so CI can commit the rest
      state.json             the state (indent 2, sorted keys, trailing newline)
      state.json.bak         the state before the last write
      snapshots/<sha256>.csv.gz   applied tables, gzip level 1, mtime 0 (bytes are reproducible)
      lock.json              the lock while a command holds it

Every write is atomic (temp file in the same directory, fsync, rename, fsync of the directory)
and goes only under this directory.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import os
import re
import sys
import time
import uuid
import zlib
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, BinaryIO, cast

from bpsync.errors import StateCorrupt, StateError
from bpsync.state.lock import LockFile, LockInfo, Notify, notify_stderr
from bpsync.state.model import State, dumps_state, is_sha256_hex, parse_state
from bpsync.table import sha256_file

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

STATE_FILE = "state.json"
BACKUP_FILE = "state.json.bak"
LOCK_FILE = "lock.json"
SNAPSHOT_DIR = "snapshots"
SNAPSHOT_SUFFIX = ".csv.gz"

GITIGNORE = """\
# Written by bpsync. Commit this directory (state.json, snapshots/) so every run plans against
# the last apply; the lock and temp files belong to one machine and one run.
lock.json
lock.guard
*.tmp
"""

# 1 MiB reads: large enough that hashing and zlib dominate, small enough that memory stays flat
# for 500 MB tables.
_CHUNK = 1 << 20

_SNAPSHOT_NAME = re.compile(r"([0-9a-f]{64})\.csv\.gz")

# Fault points, in the order write() reaches them; tests crash the process at each one.
FAULT_POINTS = (
    "state:temp-written",
    "state:temp-synced",
    "state:backup-written",
    "state:before-rename",
    "state:renamed",
    "snapshot:temp-written",
    "snapshot:before-rename",
)


def _fsync_dir(path: Path) -> None:
    # Makes the rename itself durable. Not possible (nor needed) on Windows.
    if sys.platform == "win32":
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _temp_path(final: Path) -> Path:
    return final.with_name(f".{final.name}.{uuid.uuid4().hex[:12]}.tmp")


class _VerifiedSnapshot(io.RawIOBase):
    """Decompresses a snapshot and, on reaching its end, checks the bytes against the id, so a
    damaged snapshot can never be diffed against silently."""

    def __init__(self, raw: IO[bytes], sha256: str, path: Path) -> None:
        super().__init__()
        self._raw = raw
        self._gz = gzip.GzipFile(fileobj=raw, mode="rb")
        self._expected = sha256
        self._digest = hashlib.sha256()
        self._path = path
        self._verified = False

    def readable(self) -> bool:
        return True

    def _corrupt(self, detail: str) -> StateCorrupt:
        return StateCorrupt(
            f"{self._path}: snapshot is damaged ({detail})",
            hint="restore it from git, or run `bpsync apply` to upload the table again and "
            "record a fresh snapshot",
        )

    def readinto(self, buffer: WriteableBuffer, /) -> int:
        try:
            n = self._gz.readinto(buffer)
        except (OSError, EOFError, zlib.error) as exc:
            raise self._corrupt(str(exc) or type(exc).__name__) from exc
        if n:
            with memoryview(buffer) as view:
                self._digest.update(view[:n])
        elif not self._verified:
            self._verified = True
            actual = self._digest.hexdigest()
            if actual != self._expected:
                raise self._corrupt(f"its content hashes to {actual}")
        return n

    def close(self) -> None:
        if not self.closed:
            try:
                self._gz.close()
            finally:
                self._raw.close()
        super().close()


class LocalBackend:
    """State in a local directory. ``fault`` is a test seam: it is called with each of
    :data:`FAULT_POINTS` as a write reaches it, so tests can crash a write half-way."""

    def __init__(self, path: Path, *, fault: Callable[[str], None] | None = None) -> None:
        self.path = Path(path)
        self._fault = fault or (lambda point: None)
        self._lock = LockFile(self.path / LOCK_FILE, where=str(self.path))

    def __repr__(self) -> str:
        return f"LocalBackend({str(self.path)!r})"

    @property
    def location(self) -> str:
        return str(self.path)

    @property
    def state_path(self) -> Path:
        return self.path / STATE_FILE

    @property
    def backup_path(self) -> Path:
        return self.path / BACKUP_FILE

    @property
    def snapshots_dir(self) -> Path:
        return self.path / SNAPSHOT_DIR

    def snapshot_path(self, sha256: str) -> Path:
        if not is_sha256_hex(sha256):
            raise StateError(f"not a snapshot id (64 lowercase hex digits): {sha256!r}")
        return self.snapshots_dir / f"{sha256}{SNAPSHOT_SUFFIX}"

    # -- directory ------------------------------------------------------------------------

    def _ensure_dir(self) -> None:
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            gitignore = self.path / ".gitignore"
            if not gitignore.exists():
                self._replace_atomically(gitignore, GITIGNORE.encode("utf-8"))
        except OSError as exc:
            raise StateError(f"cannot create state directory {self.path}: {exc}") from exc

    def _replace_atomically(self, final: Path, data: bytes) -> None:
        tmp = _temp_path(final)
        try:
            with open(tmp, "xb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, final)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        _fsync_dir(final.parent)

    # -- state ----------------------------------------------------------------------------

    def _corrupt(self, detail: str, hint: str = "") -> StateCorrupt:
        recover = (
            f"bpsync never treats damaged state as empty. Restore {self.state_path} from git "
            f"(git checkout -- {self.state_path}) or from the backup of the state before the "
            f"last write ({self.backup_path}), then retry"
        )
        return StateCorrupt(
            f"{self.state_path}: state file is damaged: {detail}",
            hint=f"{hint}; {recover}" if hint else recover,
        )

    def _read_raw(self) -> bytes | None:
        try:
            return self.state_path.read_bytes()
        except FileNotFoundError:
            if self.backup_path.exists():
                raise self._corrupt(f"it is missing but {self.backup_path} exists") from None
            return None
        except OSError as exc:
            raise StateError(f"cannot read {self.state_path}: {exc}") from exc

    def _parse(self, raw: bytes) -> State:
        return parse_state(raw, self._corrupt)

    def read(self) -> State:
        raw = self._read_raw()
        return State.empty() if raw is None else self._parse(raw)

    def write(self, state: State) -> State:
        self._ensure_dir()
        raw = self._read_raw()
        current = State.empty() if raw is None else self._parse(raw)
        if current.serial != state.serial:
            raise StateError(
                f"refusing to overwrite {self.state_path}: it is at serial {current.serial} "
                f"but this state was read at serial {state.serial} (another command wrote "
                "state meanwhile)",
                hint="run the command again so it starts from the current state",
            )
        if raw is not None and state.lineage != current.lineage:
            raise StateError(
                f"refusing to overwrite {self.state_path}: it belongs to lineage "
                f"{current.lineage}, this state to lineage {state.lineage or '(new)'}",
                hint="these are different state histories; check the state path",
            )
        new = State(
            serial=state.serial + 1,
            lineage=state.lineage or str(uuid.uuid4()),
            tables=state.tables,
        )
        try:
            self._write_state(dumps_state(new).encode("utf-8"), previous=raw)
        except OSError as exc:
            raise StateError(
                f"cannot write {self.state_path}: {exc}",
                hint="the previous state is intact",
            ) from exc
        return new

    def _write_state(self, data: bytes, *, previous: bytes | None) -> None:
        tmp = _temp_path(self.state_path)
        bak_tmp = _temp_path(self.backup_path)
        try:
            with open(tmp, "xb") as f:
                f.write(data)
                self._fault("state:temp-written")
                f.flush()
                os.fsync(f.fileno())
            self._fault("state:temp-synced")
            if previous is not None:
                with open(bak_tmp, "xb") as f:
                    f.write(previous)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(bak_tmp, self.backup_path)
                self._fault("state:backup-written")
            self._fault("state:before-rename")
            os.replace(tmp, self.state_path)
            self._fault("state:renamed")
            _fsync_dir(self.path)
        finally:
            for leftover in (tmp, bak_tmp):
                with contextlib.suppress(OSError):
                    leftover.unlink()

    # -- snapshots ------------------------------------------------------------------------

    def has_snapshot(self, sha256: str) -> bool:
        return self.snapshot_path(sha256).is_file()

    def put_snapshot(self, sha256: str, source: Path) -> None:
        dest = self.snapshot_path(sha256)
        try:
            if dest.is_file():
                # Content-addressed: nothing to store, but still refuse a caller's wrong digest.
                actual = sha256_file(source)
            else:
                self._ensure_dir()
                self.snapshots_dir.mkdir(exist_ok=True)
                actual = self._store_snapshot(source, dest, sha256)
        except OSError as exc:
            raise StateError(f"cannot record snapshot of {source} in {dest}: {exc}") from exc
        if actual != sha256:
            raise StateError(
                f"refusing to record {source} as snapshot {sha256}: its bytes hash to {actual}",
                hint="the table changed while bpsync read it; run the command again",
            )

    def _store_snapshot(self, source: Path, dest: Path, sha256: str) -> str:
        tmp = _temp_path(dest)
        digest = hashlib.sha256()
        buf = bytearray(_CHUNK)
        view = memoryview(buf)
        try:
            with open(source, "rb", buffering=0) as src, open(tmp, "xb") as out:
                # filename="" and mtime=0 keep the gzip header free of names and times, so the
                # same table always gives the same bytes and git sees no change.
                with gzip.GzipFile(
                    filename="", mode="wb", fileobj=out, compresslevel=1, mtime=0
                ) as gz:
                    while n := src.readinto(buf):
                        digest.update(view[:n])
                        gz.write(view[:n])
                self._fault("snapshot:temp-written")
                out.flush()
                os.fsync(out.fileno())
            actual = digest.hexdigest()
            if actual == sha256:
                self._fault("snapshot:before-rename")
                os.replace(tmp, dest)
                _fsync_dir(dest.parent)
            return actual
        finally:
            with contextlib.suppress(OSError):
                tmp.unlink()

    def open_snapshot(self, sha256: str, *, table: str | None = None) -> BinaryIO:
        path = self.snapshot_path(sha256)
        try:
            raw = open(path, "rb")  # noqa: SIM115 - closed by the returned stream
        except FileNotFoundError:
            of_table = f" of table {table}" if table else ""
            raise StateError(
                f"the applied snapshot{of_table} ({sha256}) is missing: {path} does not exist",
                hint=(
                    f"restore {self.snapshots_dir} from git, or run `bpsync apply` to upload "
                    "the table again and record a new snapshot"
                ),
            ) from None
        except OSError as exc:
            raise StateError(f"cannot read snapshot {path}: {exc}") from exc
        return cast(BinaryIO, io.BufferedReader(_VerifiedSnapshot(raw, sha256, path), _CHUNK))

    def prune_snapshots(self, keep: Iterable[str]) -> list[str]:
        keep_set = set(keep)
        deleted: list[str] = []
        try:
            entries = list(self.snapshots_dir.iterdir())
        except FileNotFoundError:
            return []
        for entry in entries:
            m = _SNAPSHOT_NAME.fullmatch(entry.name)
            if m is None or m.group(1) in keep_set:
                continue
            try:
                entry.unlink()
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise StateError(f"cannot delete snapshot {entry}: {exc}") from exc
            deleted.append(m.group(1))
        return sorted(deleted)

    # -- lock -----------------------------------------------------------------------------

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
        notify = notify or notify_stderr
        self._ensure_dir()
        info = self._lock.acquire(
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
                self._lock.release(info, notify=notify)
            except StateError as exc:
                # Never mask the command's own error with a failure to tidy up.
                notify(f"could not release the state lock {info.id}: {exc}")

    def force_unlock(self, lock_id: str) -> LockInfo:
        return self._lock.force_unlock(lock_id)

    def current_lock(self) -> LockInfo | None:
        return self._lock.current()
