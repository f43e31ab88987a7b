"""Copy the state, and the snapshots it needs, between backends (``bpsync state migrate``).

    bpsync state migrate --to s3      .bpsync/  ->  s3://bucket/prefix  (from bpsync.yaml)
    bpsync state migrate --to local   s3://...  ->  .bpsync/

The S3 side is bpsync.yaml's ``state:`` section (bucket, prefix, region, endpoint_url), which
``--bucket``/``--prefix``/``--region``/``--endpoint-url`` override, so the state can be copied
before or after bpsync.yaml switches backends. The local side is ``state.path`` (or ``--path``).

Both locks are held for the whole copy. Snapshots go first and the state last, so the
destination never holds a state whose snapshots are not there yet. A destination that already
has state is refused unless ``--force`` (its previous state then stays as ``state.json.bak``).
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from bpsync.errors import StateError
from bpsync.state.backend import StateBackend
from bpsync.state.lock import Notify
from bpsync.state.model import State, referenced_snapshots

COMMAND = "bpsync state migrate"
_CHUNK = 1 << 20


@dataclass(frozen=True)
class MigrateResult:
    state: State  # as written to the destination
    copied: tuple[str, ...]  # snapshot ids uploaded
    present: tuple[str, ...]  # snapshot ids the destination already had
    missing: tuple[str, ...]  # referenced but absent from the source too


def migrate_state(
    source: StateBackend,
    dest: StateBackend,
    *,
    force: bool = False,
    timeout: float = 0,
    notify: Notify | None = None,
    progress: Notify | None = None,
) -> MigrateResult:
    """Copy the state of ``source`` and every snapshot it references to ``dest``.

    Keeps the source's lineage when ``dest`` is empty (the history continues); with ``force``
    over existing state, ``dest``'s lineage is kept and its serial grows, as for any write.
    """
    say = progress or (lambda _message: None)
    with (
        source.lock(COMMAND, timeout=timeout, notify=notify),
        dest.lock(COMMAND, timeout=timeout, notify=notify),
    ):
        state = source.read()
        if state.serial == 0:
            raise StateError(
                f"nothing to migrate: {source.location} holds no state",
                hint="check state.path / --path (local) or state.bucket and state.prefix (s3)",
            )
        existing = dest.read()
        if existing.serial > 0 and not force:
            raise StateError(
                f"refusing to migrate: {dest.location} already holds state (serial "
                f"{existing.serial}, lineage {existing.lineage}, "
                f"{len(existing.tables)} table(s))",
                hint="pass --force to replace it (the replaced state is kept as "
                "state.json.bak), or choose another state.prefix",
            )
        copied, present, missing = _copy_snapshots(source, dest, state, say, notify)
        base = existing if existing.serial > 0 else State(0, state.lineage, {})
        written = dest.write(State(base.serial, base.lineage, state.tables, state.endpoint))
    return MigrateResult(written, tuple(copied), tuple(present), tuple(missing))


def _copy_snapshots(
    source: StateBackend,
    dest: StateBackend,
    state: State,
    say: Notify,
    notify: Notify | None,
) -> tuple[list[str], list[str], list[str]]:
    owners: dict[str, str] = {}
    for ts in state.tables.values():
        for sha in (ts.sha256, ts.pending.sha256 if ts.pending else None):
            if sha is not None:
                owners.setdefault(sha, ts.name)
    copied: list[str] = []
    present: list[str] = []
    missing: list[str] = []
    wanted = sorted(referenced_snapshots(state))
    with tempfile.TemporaryDirectory(prefix="bpsync-migrate-") as tmp:
        for n, sha in enumerate(wanted, 1):
            table = owners.get(sha)
            if dest.has_snapshot(sha):
                present.append(sha)
                continue
            if not source.has_snapshot(sha):
                missing.append(sha)
                if notify is not None:
                    notify(
                        f"the snapshot of table {table} ({sha}) is missing from "
                        f"{source.location}; copied the state without it (its next plan "
                        "says how to recover)"
                    )
                continue
            say(f"Copying snapshot {n}/{len(wanted)} of table {table} ({sha[:12]}…)")
            path = Path(tmp) / f"{sha}.csv"
            try:
                # Through a temporary file: put_snapshot takes a path, and memory stays flat.
                with source.open_snapshot(sha, table=table) as f, open(path, "wb") as out:
                    shutil.copyfileobj(f, out, _CHUNK)
                dest.put_snapshot(sha, path)
            except OSError as exc:
                raise StateError(f"cannot copy snapshot {sha} through {tmp}: {exc}") from exc
            finally:
                path.unlink(missing_ok=True)
            copied.append(sha)
    return copied, present, missing
