"""`bpsync init`: a starter bpsync.yaml, or (`--from FILE.csv`) a manifest for an existing table."""

from __future__ import annotations

from pathlib import Path

from bpsync.cli.context import EXIT_OK, Context
from bpsync.errors import UsageError, display_path


def init(ctx: Context) -> int:
    from bpsync import scaffold

    args = ctx.args
    if args.csv is None:
        if args.key or args.name:
            raise UsageError(
                "--key and --name go with --from FILE.csv", hint="see `bpsync init --help`"
            )
        root = ctx.start_dir
        for w in scaffold.init_project(root):
            ctx.console.note(f"Wrote {display_path(w.path, root)}: {w.what}.")
        ctx.console.note(
            "Next: put a table in tables/ and run `bpsync init --from tables/NAME.csv`, "
            "then `bpsync validate` and `bpsync plan`."
        )
        return EXIT_OK
    config = ctx.config
    root = config.root
    written, warnings = scaffold.init_manifest(root, ctx.path(args.csv), args.key, args.name)
    for p in warnings:
        ctx.console.warn(str(p))
    for w in written:
        ctx.console.note(f"Wrote {display_path(w.path, root)}: {w.what}.")
    _say_if_undiscovered(ctx, written[0].path)
    ctx.console.note("Review it (map_name, the key, tag names), then run `bpsync plan`.")
    return EXIT_OK


def _say_if_undiscovered(ctx: Context, manifest: Path) -> None:
    from bpsync.manifest import discover

    if manifest.resolve() not in {p.resolve() for p in discover(ctx.config)}:
        ctx.console.warn(
            f"{display_path(manifest, ctx.config.root)} does not match `manifests:` "
            f"({', '.join(ctx.config.manifests)}), so bpsync will not read it; "
            "move it, or add its directory to `manifests:` in bpsync.yaml"
        )
