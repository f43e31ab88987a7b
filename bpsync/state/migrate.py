"""``bpsync state migrate``: move the state, and the snapshots it needs, between backends.

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
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from bpsync.cli import EXIT_OK, Context, parse_duration
from bpsync.errors import ConfigError, StateError
from bpsync.state.backend import StateBackend
from bpsync.state.local import LocalBackend
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
        written = dest.write(State(base.serial, base.lineage, state.tables))
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


# --- the command ------------------------------------------------------------------------------


def register(sub: Any) -> None:
    """Add the `state` command group (`state migrate`) to the `bpsync` subparsers."""
    st = sub.add_parser(
        "state",
        help="manage where the state lives",
        description="Manage the state backend (SPEC §5).",
    )
    stsub = st.add_subparsers(dest="state_command", metavar="SUBCOMMAND")
    stsub.required = True

    m = stsub.add_parser(
        "migrate",
        help="copy the state and its snapshots to another backend",
        description="Copy the state and every snapshot it references from the local state "
        "directory to the S3 bucket of bpsync.yaml (--to s3), or back (--to local), holding "
        "both locks. Refuses when the destination already has state, unless --force.",
    )
    m.add_argument(
        "--to", required=True, choices=("s3", "local"), help="the backend to copy the state to"
    )
    m.add_argument(
        "--force",
        action="store_true",
        help="replace state the destination already has",
    )
    m.add_argument("--bucket", metavar="NAME", help="S3 bucket (default: state.bucket)")
    m.add_argument("--prefix", help="key prefix in the bucket (default: state.prefix)")
    m.add_argument("--region", help="AWS region (default: state.region, else the AWS config)")
    m.add_argument(
        "--endpoint-url",
        dest="endpoint_url",
        metavar="URL",
        help="S3-compatible endpoint (default: state.endpoint_url)",
    )
    m.add_argument(
        "--path",
        type=Path,
        metavar="DIR",
        help="the local state directory (default: state.path, .bpsync)",
    )
    m.add_argument(
        "--lock-timeout",
        type=parse_duration,
        default=0.0,
        metavar="DURATION",
        help="wait this long for each state lock (default 0s)",
    )
    m.set_defaults(func=migrate)


def migrate(ctx: Context) -> int:
    from bpsync.state.s3 import S3Backend  # optional dependency: boto3

    config = ctx.config
    args = ctx.args
    s3_config = replace(
        config.state,
        backend="s3",
        bucket=args.bucket or config.state.bucket,
        prefix=config.state.prefix if args.prefix is None else args.prefix,
        region=args.region or config.state.region,
        endpoint_url=args.endpoint_url or config.state.endpoint_url,
    )
    if not s3_config.bucket:
        raise ConfigError(
            "state migrate needs a bucket: state.bucket is not set",
            hint="set `bucket:` under `state:` in bpsync.yaml, or pass --bucket",
        )
    local_dir = ctx.cwd / args.path if args.path else config.state_dir
    if args.to == "s3" and not local_dir.is_dir():
        raise StateError(
            f"nothing to migrate: {local_dir} holds no state",
            hint="run in the project that holds .bpsync/, or pass --path DIR",
        )
    local = LocalBackend(local_dir)
    remote = S3Backend.from_config(s3_config)
    source, dest = (local, remote) if args.to == "s3" else (remote, local)

    result = migrate_state(
        source,
        dest,
        force=args.force,
        timeout=args.lock_timeout,
        notify=ctx.console.warn,
        progress=ctx.console.note,
    )
    ctx.console.note(
        f"Migrated the state ({len(result.state.tables)} table(s), serial "
        f"{result.state.serial}) from {source.location} to {dest.location}: "
        f"{len(result.copied)} snapshot(s) copied, {len(result.present)} already there"
        + (f", {len(result.missing)} missing at the source" if result.missing else "")
        + "."
    )
    if args.to == "s3":
        if config.state.backend != "s3":
            settings = [("backend", "s3"), ("bucket", s3_config.bucket)] + [
                (name, value)
                for name, value in (
                    ("prefix", s3_config.prefix),
                    ("region", s3_config.region),
                    ("endpoint_url", s3_config.endpoint_url),
                )
                if value
            ]
            shown = ", ".join(f"{name}: {value}" for name, value in settings)
            ctx.console.note(f"Next: set `state: {{{shown}}}` in bpsync.yaml.")
        ctx.console.note(
            f"{local_dir} was left as it is; once everyone uses the bucket, remove it "
            "(git rm -r) so that nobody plans against the old copy."
        )
    elif config.state.backend != "local":
        ctx.console.note("Next: set `state.backend: local` in bpsync.yaml.")
    return EXIT_OK
