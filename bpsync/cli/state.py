"""`bpsync state ...`: where the state lives (the copying itself is bpsync.state.migrate)."""

from __future__ import annotations

from dataclasses import replace

from bpsync.cli.context import EXIT_OK, Context
from bpsync.errors import ConfigError, StateError


def migrate(ctx: Context) -> int:
    from bpsync.state.local import LocalBackend
    from bpsync.state.migrate import migrate_state
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
    local_dir = ctx.path(args.path) if args.path else config.state_dir
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
