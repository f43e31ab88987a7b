"""The local state backend: a directory (``.bpsync/`` by default) meant to be committed to git.

Layout::

    .bpsync/
      .gitignore                  ignores lock.json, lock.guard and *.tmp: CI commits the rest
      state.json                  the state (indent 2, sorted keys, trailing newline)
      state.json.bak              the state before the last write
      snapshots/<sha256>.csv.zst  applied tables (see bpsync.state.snapshot; an older
                                  state's <sha256>.csv.gz is still read)
      lock.json                   the lock while a command holds it

Every write is atomic (temp file in the same directory, fsync, rename, fsync of the directory)
and goes only under this directory. The lock is ``lock.json`` created with ``O_CREAT|O_EXCL``;
removals (release, takeover, force-unlock) compare ids under an ``flock`` on ``lock.guard`` so
that none can remove a lock it did not just inspect. ``flock`` dies with its process, so the
guard itself can never go stale.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from bpsync.errors import StateError
from bpsync.state.base import StateBackend, Wording
from bpsync.state.lock import (
    LOCK_BEING_CREATED,
    LockBeingCreated,
    LockInfo,
    encode_lock,
    parse_lock,
    pid_alive,
)
from bpsync.state.snapshot import (
    CHUNK,
    SNAPSHOT_DIR,
    snapshot_id,
    snapshot_name,
    snapshot_names,
)

if sys.platform != "win32":
    import fcntl

STATE_FILE = "state.json"
BACKUP_FILE = "state.json.bak"
LOCK_FILE = "lock.json"
GUARD_FILE = "lock.guard"

GITIGNORE = """\
# Written by bpsync. Commit this directory (state.json, snapshots/) so every run plans against
# the last apply; the lock and temp files belong to one machine and one run.
lock.json
lock.guard
*.tmp
"""

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

# An empty or half-written lock file younger than this is taken to be a lock being created
# right now (O_EXCL creates the file before its content is written), not a damaged one.
_CREATING_GRACE_S = 5.0


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
    import uuid  # this and subprocess, socket: only to write, to check git, to take over

    return final.with_name(f".{final.name}.{uuid.uuid4().hex[:12]}.tmp")


def _is_json(raw: bytes) -> bool:
    try:
        json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return False
    return True


# Snapshots are committed to git with the state (the apply workflow pushes .bpsync/). GitHub
# warns about files over 50 MB and refuses files over 100 MiB.
SNAPSHOT_WARN_BYTES = 50_000_000
SNAPSHOT_REFUSE_BYTES = 95_000_000
_S3_ADVICE = (
    "keep the state in S3 instead: set `state: {backend: s3, bucket: NAME}` in bpsync.yaml and "
    'run `bpsync state migrate --to s3` (see the README, "Big tables")'
)


def tracked_by_git(path: Path) -> bool:
    """Whether git keeps `path`: inside a work tree and not ignored, or already tracked.
    No git, or no repository: not tracked."""
    import subprocess

    here = next((p for p in (path, *path.parents) if p.is_dir()), Path.cwd())

    def git(*args: str) -> subprocess.CompletedProcess[bytes] | None:
        try:
            return subprocess.run(
                ["git", "-C", str(here), *args], capture_output=True, timeout=30, check=False
            )
        except (OSError, subprocess.SubprocessError):
            return None

    # A file inside: a `.bpsync/` pattern matches directories, and the directory may not exist.
    target = str(path.resolve() / "state.json")
    ignored = git("check-ignore", "-q", "--no-index", target)
    if ignored is None or ignored.returncode not in (0, 1):
        return False  # no git, or not inside a repository
    if ignored.returncode == 1:
        return True
    listed = git("ls-files", "--", str(path.resolve()))
    return bool(listed and listed.returncode == 0 and listed.stdout.strip())


class LocalBackend(StateBackend):
    """State in a local directory. ``fault`` is a test seam: it is called with each of
    :data:`FAULT_POINTS` as a write reaches it, so tests can crash a write half-way."""

    def __init__(self, path: Path, *, fault: Callable[[str], None] | None = None) -> None:
        super().__init__()
        self.path = Path(path)
        self._fault = fault or (lambda point: None)
        self._wording = Wording(
            state_noun="state file",
            restore_state=(
                f"Restore {self.state_path} from git (git checkout -- {self.state_path}) or "
                f"from the backup of the state before the last write ({self.backup_path}), "
                "then retry. The backup is one write older: what that write recorded (the "
                "last table applied, or a pending job or enrichment it noted) is missing from "
                "it; the next `bpsync plan` shows such a table as changed again, and apply "
                "adopts or re-attaches what BigPanda already has"
            ),
            lineage_hint="these are different state histories; check the state path",
            snapshot_missing=(
                f"restore {self.snapshots_dir} from git, or run `bpsync apply` to upload the "
                "table again and record a new snapshot"
            ),
            snapshot_damaged="restore it from git, or run `bpsync apply` to upload the table "
            "again and record a fresh snapshot",
            lock_noun="lock file",
            lock_damaged=f"delete {self.lock_path} by hand",
            no_lock=f"check what else creates and deletes {self.lock_path}",
        )

    def __repr__(self) -> str:
        return f"LocalBackend({str(self.path)!r})"

    def check_snapshot_room(
        self, table: str, plain_size: int, measure: Callable[[], int], warn: Callable[[str], None]
    ) -> None:
        # zstd stores incompressible blocks raw, 3 bytes of header per 128 KiB: the snapshot of
        # a table is never 0.1% larger than it, so small tables need no measuring.
        if plain_size + plain_size // 1000 + 64 <= SNAPSHOT_WARN_BYTES:
            return
        size = measure()
        if size <= SNAPSHOT_WARN_BYTES:
            return
        shown = f"{size / 1e6:,.1f} MB"
        if size > SNAPSHOT_REFUSE_BYTES and tracked_by_git(self.path):
            raise StateError(
                f"refusing to apply table {table}: its snapshot would take {shown} in "
                f"{self.snapshots_dir}, which git tracks, and GitHub refuses files over 100 MB, "
                "so the state could not be pushed (nothing was uploaded)",
                hint=_S3_ADVICE,
            )
        warn(
            f"the snapshot of table {table} takes {shown} in {self.snapshots_dir}; git hosts "
            f"warn about such files and GitHub refuses them past 100 MB: {_S3_ADVICE}"
        )

    @property
    def location(self) -> str:
        return str(self.path)

    @property
    def wording(self) -> Wording:
        return self._wording

    @property
    def state_path(self) -> Path:
        return self.path / STATE_FILE

    @property
    def backup_path(self) -> Path:
        return self.path / BACKUP_FILE

    @property
    def lock_path(self) -> Path:
        return self.path / LOCK_FILE

    @property
    def snapshots_dir(self) -> Path:
        return self.path / SNAPSHOT_DIR

    def snapshot_path(self, sha256: str) -> Path:
        """The file of snapshot ``sha256``: the one there is (``.csv.zst``, else an older
        state's ``.csv.gz``), or where it is written when there is none."""
        paths = self._snapshot_paths(sha256)
        return next((path for path in paths if path.is_file()), paths[0])

    def _snapshot_paths(self, sha256: str) -> list[Path]:
        return [self.snapshots_dir / name for name in snapshot_names(sha256)]

    @property
    def state_where(self) -> str:
        return str(self.state_path)

    @property
    def backup_where(self) -> str:
        return str(self.backup_path)

    @property
    def lock_where(self) -> str:
        return str(self.lock_path)

    def snapshot_where(self, sha256: str) -> str:
        return str(self.snapshot_path(sha256))

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

    def _load_state(self) -> tuple[bytes, str | None] | None:
        try:
            return self.state_path.read_bytes(), None
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StateError(f"cannot read {self.state_path}: {exc}") from exc

    def _backup_exists(self) -> bool:
        return self.backup_path.exists()

    def _store_state(self, data: bytes, *, previous: bytes | None, version: str | None) -> None:
        # No versions to compare: the serial check under the lock is what keeps updates.
        self._ensure_dir()
        try:
            self._write_state(data, previous=previous)
        except OSError as exc:
            raise StateError(
                f"cannot write {self.state_path}: {exc}",
                hint="the previous state is intact",
            ) from exc

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

    def _snapshot_exists(self, sha256: str) -> bool:
        return any(path.is_file() for path in self._snapshot_paths(sha256))

    def _store_snapshot(self, sha256: str, stream: BinaryIO) -> None:
        self._ensure_dir()
        self.snapshots_dir.mkdir(exist_ok=True)
        dest = self.snapshots_dir / snapshot_name(sha256)
        tmp = _temp_path(dest)
        try:
            with open(tmp, "xb") as out:
                shutil.copyfileobj(stream, out, CHUNK)
                self._fault("snapshot:temp-written")
                out.flush()
                os.fsync(out.fileno())
            self._fault("snapshot:before-rename")
            os.replace(tmp, dest)
            _fsync_dir(dest.parent)
        finally:
            with contextlib.suppress(OSError):
                tmp.unlink()

    def _open_snapshot_bytes(self, sha256: str) -> tuple[BinaryIO, str] | None:
        for path in self._snapshot_paths(sha256):
            try:
                return open(path, "rb"), str(path)  # closed by the stream open_snapshot returns
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise StateError(f"cannot read snapshot {path}: {exc}") from exc
        return None

    def _snapshot_ids(self) -> Iterator[str]:
        try:
            entries = list(self.snapshots_dir.iterdir())
        except FileNotFoundError:
            return
        seen: set[str] = set()
        for entry in entries:
            sha = snapshot_id(entry.name)
            if sha is not None and sha not in seen:
                seen.add(sha)
                yield sha

    def _delete_snapshots(self, ids: list[str]) -> list[str]:
        deleted: list[str] = []
        for sha in ids:
            found = False
            for path in self._snapshot_paths(sha):
                try:
                    path.unlink()
                except FileNotFoundError:
                    continue
                except OSError as exc:
                    raise StateError(f"cannot delete snapshot {path}: {exc}") from exc
                found = True
            if found:
                deleted.append(sha)
        return deleted

    # -- lock -----------------------------------------------------------------------------

    def _read_lock(self) -> LockInfo | LockBeingCreated | None:
        try:
            raw = self.lock_path.read_bytes()
            mtime = self.lock_path.stat().st_mtime
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StateError(f"cannot read lock file {self.lock_path}: {exc.strerror}") from exc
        young = time.time() - mtime < _CREATING_GRACE_S and len(raw) < 4096
        if young and not _is_json(raw):
            return LOCK_BEING_CREATED
        return parse_lock(raw, self.lock_corrupt)

    def _create_lock(self, info: LockInfo) -> bool:
        self._ensure_dir()
        try:
            fd = os.open(self.lock_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        except OSError as exc:
            raise StateError(f"cannot create lock file {self.lock_path}: {exc.strerror}") from exc
        try:
            try:
                # One write call: a reader sees an empty file or the whole lock, and treats an
                # empty one as being created (see _CREATING_GRACE_S).
                os.write(fd, encode_lock(info))
                os.fsync(fd)
            finally:
                os.close(fd)
        except BaseException as exc:
            with contextlib.suppress(OSError):
                self.lock_path.unlink()
            if isinstance(exc, OSError):
                raise StateError(
                    f"cannot write lock file {self.lock_path}: {exc.strerror}"
                ) from exc
            raise
        return True

    @contextlib.contextmanager
    def _guard(self) -> Iterator[None]:
        if sys.platform == "win32":  # no flock: the O_EXCL create still keeps locks exclusive
            yield
            return
        guard = self.path / GUARD_FILE
        try:
            fd = os.open(guard, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise StateError(f"cannot open {guard}: {exc.strerror}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the flock

    def _remove_lock(self, lock_id: str) -> bool:
        with self._guard():
            held = self._read_lock()
            if not isinstance(held, LockInfo) or held.id != lock_id:
                return False
            try:
                self.lock_path.unlink()
            except FileNotFoundError:
                return False
            return True

    def _take_over(self, held: LockInfo) -> bool:
        import socket

        # Only a process on this host can be checked; elsewhere a lock may be live forever.
        stale = (
            held.host == socket.gethostname()
            and held.pid != os.getpid()
            and not pid_alive(held.pid)
        )
        return stale and self._remove_lock(held.id)
