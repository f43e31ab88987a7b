"""`bpsync state ...`: where the state lives (the copying itself is bpsync.state.migrate)."""

from __future__ import annotations

from dataclasses import replace

from bpsync.cli.context import EXIT_OK, Context
from bpsync.errors import ConfigError, EndpointMismatch, StateError


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


def rebind(ctx: Context) -> int:
    """Re-record the endpoint of the state, after finding its enrichments there (SPEC §5)."""
    from bpsync.bigpanda.client import BigPandaClient
    from bpsync.refresh import refresh_remote
    from bpsync.state import open_backend

    config = ctx.config
    endpoint = config.endpoint
    token = config.token(ctx.env)
    backend = open_backend(config)
    with backend.lock(
        "bpsync state rebind", timeout=ctx.args.lock_timeout, notify=ctx.console.warn
    ):
        state = backend.read()
        if state.endpoint == endpoint:
            ctx.console.note(f"The state in {backend.location} is already bound to {endpoint}.")
            return EXIT_OK
        with BigPandaClient(
            endpoint.base_url, token, endpoint.api_version, **ctx.client_options
        ) as client:
            remote = refresh_remote(client, state, [], (), ctx.console.note)
        missing = sorted(name for name, r in remote.items() if not r.exists)
        if missing and not ctx.args.allow_missing:
            raise EndpointMismatch(
                f"not rebinding the state in {backend.location} to {endpoint}: "
                f"{len(missing)} of {len(remote)} enrichment(s) it records are not there "
                f"({', '.join(missing)})",
                hint=f"check {config.api.token_env}, --env and {_url_settings()}; if those "
                "enrichments really are gone, rebind with --allow-missing (the next plan "
                "creates them again)",
            )
        backend.write(state.bound_to(endpoint))
    before = state.endpoint or "no recorded endpoint"
    ctx.console.note(
        f"Rebound the state in {backend.location} from {before} to {endpoint}; "
        f"{len(remote) - len(missing)} of {len(remote)} enrichment(s) found there."
    )
    return EXIT_OK


def _url_settings() -> str:
    return "BIGPANDA_API_URL / api.base_url / api.region"
