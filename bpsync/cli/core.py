"""The core commands (validate, fmt, plan, apply, show, import, force-unlock): each takes the
CLI context and returns an exit code."""

from __future__ import annotations

import io
import os
import signal
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from bpsync.cli.context import EXIT_CHANGES, EXIT_ERROR, EXIT_OK, Context
from bpsync.console import Console, LiveLines, sorted_problems
from bpsync.errors import (
    ApplyRefused,
    BpsyncError,
    ConfigError,
    InvalidInput,
    Problem,
    StalePlan,
    UsageError,
)
from bpsync.manifest import Manifest, load_manifests
from bpsync.table import FileDigests
from bpsync.validate import select, validate_project

if TYPE_CHECKING:
    from bpsync.applier import TableResult
    from bpsync.plan import Plan
    from bpsync.planner import RowsMemo

# Heavy modules (planner, renderers, applier, httpx) are imported inside the commands that
# need them, so `bpsync validate` and `--help` start fast.


def validate(ctx: Context) -> int:
    if ctx.args.format == "json":
        return _validate_json(ctx)
    report = validate_project(ctx.config, ctx.args.table)
    ctx.console.problems(report.problems, ctx.args.format)
    rows = sum(t.info.rows for t in report.tables)
    summary = (
        f"{len(report.manifests)} manifest(s), {len(report.tables)} table(s), "
        f"{rows:,} row(s): {report.error_count} error(s), "
        f"{report.warning_count} warning(s)"
    )
    if report.ok:
        ctx.console.note(ctx.console.paint("Valid.", "green", stream="err") + " " + summary)
        return EXIT_OK
    ctx.console.note(summary)
    return EXIT_ERROR


def _validate_json(ctx: Context) -> int:
    """`validate --format json`: the document alone on stdout, whatever is wrong (even
    bpsync.yaml itself); the problems also go to stderr as text; the exit code is the same."""
    from bpsync.render.results import validate_document, write_document

    try:
        report = validate_project(ctx.config, ctx.args.table)
    except (InvalidInput, ConfigError) as e:
        problems = (
            e.problems
            if isinstance(e, InvalidInput)
            else [Problem("", None, None, e.message, e.hint)]
        )
        errors = sum(1 for p in problems if p.severity == "error")
        doc = validate_document(
            sorted_problems(problems),
            manifests=0,
            tables=0,
            rows=0,
            errors=errors,
            warnings=len(problems) - errors,
        )
        write_document(doc, ctx.console.out)
        raise
    write_document(
        validate_document(
            sorted_problems(report.problems),
            manifests=len(report.manifests),
            tables=len(report.tables),
            rows=sum(t.info.rows for t in report.tables),
            errors=report.error_count,
            warnings=report.warning_count,
        ),
        ctx.console.out,
    )
    ctx.console.problems(report.problems)
    ctx.console.note(
        f"{'Valid.' if report.ok else 'Invalid.'} {report.error_count} error(s), "
        f"{report.warning_count} warning(s)"
    )
    return EXIT_OK if report.ok else EXIT_ERROR


def fmt(ctx: Context) -> int:
    from bpsync.fmt import format_table

    manifests, problems = load_manifests(ctx.config)
    if any(p.severity == "error" for p in problems):
        raise InvalidInput(problems)
    check = bool(ctx.args.check)
    failed = False
    changed = 0
    for manifest in select(manifests, ctx.args.table):
        result = format_table(manifest, check=check)
        if result.problems:
            ctx.console.problems(result.problems)
            failed = True
        elif result.changed:
            changed += 1
            verb = "would reformat" if check else "reformatted"
            ctx.console.print(f"{verb} {manifest.csv_display} ({', '.join(result.reasons)})")
    if failed:
        ctx.console.error("some tables are invalid and were left as they are")
        return EXIT_ERROR
    if check and changed:
        ctx.console.note(f"{changed} table(s) not in canonical form; run `bpsync fmt`")
        return EXIT_ERROR
    if not changed:
        ctx.console.note("All tables are in canonical form.")
    return EXIT_OK


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _load_selected(ctx: Context, digests: FileDigests | None = None) -> list[Manifest]:
    on_csv = digests.request if digests is not None else None
    manifests, problems = load_manifests(ctx.config, on_csv)
    if any(p.severity == "error" for p in problems):
        raise InvalidInput(problems)
    for p in problems:
        ctx.console.warn(str(p))
    return select_known(manifests, ctx.args.table)


def select_known(manifests: list[Manifest], names: list[str]) -> list[Manifest]:
    """Like `select`, but a name may also be a table that only the state knows (deleted)."""
    if not names:
        return manifests
    return [m for m in manifests if m.name in names]


def build_plan(ctx: Context, *, refresh: bool, memo: RowsMemo | None = None) -> Plan:
    """Plan the selected tables; shared by `plan` and `apply` (`memo`: see RowsMemo)."""
    from bpsync.planner import make_plan
    from bpsync.state import open_backend

    config = ctx.config
    digests = FileDigests()  # tables are hashed on another core while manifests load
    manifests = _load_selected(ctx, digests)
    backend = open_backend(config)
    state = backend.read()
    remote = None
    if refresh:
        from bpsync.refresh import refresh_remote

        with _client(ctx) as client:
            remote = refresh_remote(client, state, manifests, ctx.args.table, ctx.console.note)
    plan = make_plan(
        config,
        manifests,
        state,
        backend,
        only=ctx.args.table,
        remote=remote,
        now=_now(),
        digests=digests,
        memo=memo,
    )
    for w in plan.warnings:
        ctx.console.warn(w)
    return plan


def _client(ctx: Context, fault: Callable[[str], None] | None = None) -> Any:
    from bpsync.bigpanda.client import BigPandaClient

    config = ctx.config
    log = ctx.console.note if ctx.args.debug else None
    return BigPandaClient(
        config.resolved_base_url,
        config.token(ctx.env),
        config.api.version,
        log=log,
        fault=fault,  # test seam: the crash matrix's "mid-upload" point (see _fault_hook)
        **ctx.client_options,
    )


def _wants_refresh(ctx: Context) -> bool:
    refresh = ctx.args.refresh
    if refresh is None:
        return ctx.config.has_token(ctx.env)
    if refresh:
        ctx.config.token(ctx.env)  # --refresh without a token is an error
    return bool(refresh)


class _Batched(io.StringIO):
    """Collects many small writes and passes them on in ~1 MB pieces: with an unbuffered
    stdout (PYTHONUNBUFFERED, common in CI) every small write would be a system call."""

    def __init__(self, target: Any, size: int = 1 << 20) -> None:
        super().__init__()
        self.target, self.size = target, size

    def write(self, text: str) -> int:
        if len(text) >= self.size:  # a big piece already (a block of JSON rows): no copy
            if self.tell():
                self.drain()
            self.target.write(text)
            return len(text)
        n = super().write(text)
        if self.tell() >= self.size:
            self.drain()
        return n

    def drain(self) -> None:
        self.target.write(self.getvalue())
        self.seek(0)
        self.truncate()

    def __exit__(self, *exc: Any) -> None:
        self.drain()
        self.target.flush()
        self.close()


def render(ctx: Context, plan: Plan, fmt: str, plan_file: str | None = None) -> None:
    from bpsync.render.json import write_json
    from bpsync.render.text import render_text

    if fmt == "json":
        with _Batched(ctx.console.out) as out:
            write_json(plan, out)
        return
    if fmt == "markdown":
        ctx.console.print(_markdown(ctx, plan, plan_file))
        return
    paint = ctx.console.paint if ctx.console.color_out else None
    text = (
        render_text(plan, paint=paint, max_rows=ctx.args.max_rows)
        if paint
        else render_text(plan, max_rows=ctx.args.max_rows)
    )
    ctx.console.out.write(text if text.endswith("\n") else text + "\n")


def _markdown(ctx: Context, plan: Plan, plan_file: str | None) -> str:
    """The PR comment, or with --max-bytes the job summary's fuller rendering; the comment
    links to the run (its summary and artifact) when running in GitHub Actions."""
    from bpsync.render.markdown import github_link_base, github_run_url, render_markdown

    link_base = _link_base(ctx, github_link_base)
    run_url = github_run_url(ctx.env)
    max_bytes: int | None = getattr(ctx.args, "max_bytes", None)
    if max_bytes is not None:
        return render_markdown(
            plan,
            link_base=link_base,
            limit=max_bytes,
            unit="bytes",
            run_url=run_url,
            plan_file=plan_file,
        )
    return render_markdown(
        plan, link_base=link_base, run_url=run_url, summary_url=run_url, plan_file=plan_file
    )


def _link_base(ctx: Context, base_of: Callable[[Mapping[str, str]], str | None]) -> str | None:
    """Links to CSV lines at the commit; CSV paths are relative to the project root, which
    may sit below the repository's top (`-C DIR`)."""
    base = base_of(ctx.env)
    if base is None:
        return None
    root = ctx.config.root
    for top in (root, *root.parents):
        if (top / ".git").exists():
            prefix = root.relative_to(top).as_posix()
            return base if prefix == "." else f"{base}{prefix}/"
    return base


def plan(ctx: Context) -> int:
    the_plan = build_plan(ctx, refresh=_wants_refresh(ctx))
    render(ctx, the_plan, ctx.args.format, plan_file=ctx.args.out)
    if ctx.args.out:
        from bpsync.planfile import save_plan

        save_plan(the_plan, ctx.path(ctx.args.out))
        ctx.console.note(
            f"Saved the plan to {ctx.args.out}; apply it with `bpsync apply {ctx.args.out}`."
        )
    if ctx.args.detailed_exitcode and the_plan.has_changes:
        return EXIT_CHANGES
    return EXIT_OK


def show(ctx: Context) -> int:
    from bpsync.planfile import load_plan

    planfile = ctx.args.planfile
    render(ctx, load_plan(ctx.path(planfile)), ctx.args.format, plan_file=planfile)
    return EXIT_OK


def force_unlock(ctx: Context) -> int:
    from bpsync.state import open_backend

    info = open_backend(ctx.config).force_unlock(ctx.args.lock_id)
    ctx.console.note(
        f"Lock {info.id} released (was held by {info.holder}, pid {info.pid} on "
        f"{info.host}, command `{info.command}`)."
    )
    return EXIT_OK


def _fault_hook(env: Mapping[str, str]) -> Callable[[str], None]:
    """Test seam for the crash matrix: SIGKILL this process at a named apply step.

    Set only by bpsync's own tests (BPSYNC_TEST_KILL_AT); deterministic, unlike sleeps.
    The points are the Applier's, "locked", the client's "mid-upload" and the local state
    backend's "state:…" ones; `POINT#N` kills at the N-th time POINT is reached (e.g. the
    third state write, `state:before-rename#3`).
    """
    point, _, nth = env.get("BPSYNC_TEST_KILL_AT", "").partition("#")
    left = [int(nth) if nth.isdigit() else 1]

    def hook(name: str) -> None:
        if name == point:
            left[0] -= 1
            if left[0] == 0:
                os.kill(os.getpid(), signal.SIGKILL)

    return hook


def _is_tty(stream: Any) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def _confirm(ctx: Context, the_plan: Plan) -> None:
    if ctx.args.auto_approve:
        return
    if not ctx.stdin_isatty:
        raise ApplyRefused(
            "no terminal to ask for confirmation",
            hint="review the plan and run `bpsync apply --auto-approve`, or apply "
            "a saved plan file",
        )
    ctx.console.note("Do you want to perform these actions? Only 'yes' will be accepted.")
    ctx.console.err.write("  Enter a value: ")
    ctx.console.err.flush()
    answer = input().strip()
    if answer != "yes":
        raise ApplyRefused("apply cancelled", hint="nothing was changed")


def _check_saved(ctx: Context, saved: Plan) -> None:
    from bpsync.guards import describe_moved

    names = [t.name for t in saved.tables]
    ctx.args.table = names
    fresh = build_plan(ctx, refresh=False)
    moved = describe_moved(saved, fresh)
    if moved:
        raise StalePlan(
            "the saved plan is stale: " + "; ".join(moved),
            hint="run `bpsync plan --out FILE` again and review it",
        )


@dataclass
class _ApplyReport:
    """What an apply did, for `apply --format json`."""

    plan: Plan | None = None
    results: list[TableResult] = field(default_factory=list)


def apply(ctx: Context) -> int:
    if getattr(ctx.args, "format", "text") != "json":
        return _apply(ctx, _ApplyReport())
    from bpsync.render.results import apply_document, write_document

    # The document goes alone to stdout; the plan, progress and summary go to stderr.
    stdout = ctx.console.out
    err = ctx.console.err
    ctx.console = Console(
        out=err, err=err, color_out=ctx.console.color_err, color_err=ctx.console.color_err
    )
    report = _ApplyReport()
    try:
        code = _apply(ctx, report)
    except BpsyncError as e:
        write_document(apply_document(report.plan, report.results, e.render()), stdout)
        raise
    write_document(apply_document(report.plan, report.results), stdout)
    return code


def _apply(ctx: Context, report: _ApplyReport) -> int:
    from bpsync.applier import Applier, StateStore
    from bpsync.guards import check_mass_delete
    from bpsync.planner import RowsMemo, make_plan
    from bpsync.refresh import refresh_remote
    from bpsync.state import open_backend

    config = ctx.config
    config.token(ctx.env)  # fail before taking the lock when there is no token
    fault = _fault_hook(ctx.env)
    backend = open_backend(config, fault=fault)  # test seam: kills mid state write too
    with backend.lock(
        "bpsync apply", timeout=ctx.args.lock_timeout, notify=ctx.console.warn
    ) as _lock:
        fault("locked")
        memo = RowsMemo()  # the plan after the refresh reuses the rows read before it
        the_plan = _offline_plan(ctx, memo)
        report.plan = the_plan
        needs_approval = not (ctx.args.planfile or ctx.args.auto_approve or ctx.stdin_isatty)
        if needs_approval and the_plan.has_changes:
            # Refused before any request: with no terminal nobody can say yes.
            raise ApplyRefused(
                "no terminal to ask for confirmation",
                hint="review `bpsync plan` and run `bpsync apply --auto-approve`, or apply a "
                "saved plan file (`bpsync plan --out FILE`, then `bpsync apply FILE`)",
            )
        with _client(ctx, fault=fault) as client:
            store = StateStore(backend, backend.read(), fault)
            live = LiveLines(ctx.console.err) if _is_tty(ctx.console.err) else None
            applier = Applier(
                client,
                store,
                config.root,
                config.api.version,
                live.note if live else ctx.console.note,
                timeout=ctx.args.timeout,
                parallelism=ctx.args.parallelism,
                fault=fault,
                live=live.set if live else None,
            )
            resumed = applier.resume_pending()
            report.results += resumed
            if resumed and (ctx.args.planfile or ctx.args.expect_fingerprint):
                raise StalePlan(
                    "a job left pending by an interrupted apply was completed, "
                    "so the state moved since the plan was made",
                    hint="run `bpsync plan` again and review it",
                )
            if not ctx.args.planfile:
                manifests = _load_selected(ctx)
                remote = refresh_remote(
                    client, store.state, manifests, ctx.args.table, ctx.console.note
                )
                the_plan = make_plan(
                    config,
                    manifests,
                    store.state,
                    backend,
                    only=ctx.args.table,
                    remote=remote,
                    now=_now(),
                    memo=memo,
                )
                report.plan = the_plan
                check_mass_delete(the_plan, ctx.args.allow_mass_delete)
                render(ctx, the_plan, "text")
                if not the_plan.has_changes:
                    return EXIT_OK
                _confirm(ctx, the_plan)
            result = applier.apply(the_plan)
            report.results += result.results
    for r in result.failed:
        ctx.console.error(f"{r.name}: {r.message}")
    ctx.console.print(result.summary())
    if result.failed:
        return EXIT_ERROR
    return EXIT_OK


def _offline_plan(ctx: Context, memo: RowsMemo | None = None) -> Plan:
    """The plan checked before any request: saved plan digests, fingerprint, mass delete."""
    from bpsync.guards import check_mass_delete
    from bpsync.planfile import load_plan

    if ctx.args.planfile:
        saved = load_plan(ctx.path(ctx.args.planfile))
        _check_saved(ctx, saved)
        the_plan = saved
    else:
        the_plan = build_plan(ctx, refresh=False, memo=memo)
        expected = ctx.args.expect_fingerprint
        if expected and expected != the_plan.fingerprint:
            raise ApplyRefused(
                f"fingerprint mismatch: the approved plan was {expected}, "
                f"a fresh plan is {the_plan.fingerprint}",
                hint="the tables, manifests or state moved since the plan was "
                "reviewed; review the new plan before applying",
            )
    check_mass_delete(the_plan, ctx.args.allow_mass_delete)
    return the_plan


def import_(ctx: Context) -> int:
    from bpsync.state import TableState, open_backend

    config = ctx.config
    name, eid = ctx.args.name, ctx.args.enrichment_id
    manifests, _ = load_manifests(config)
    if name not in {m.name for m in manifests}:
        raise UsageError(
            f"no manifest defines table {name!r}",
            hint="write tables/<name>.yaml first, then import",
        )
    config.token(ctx.env)
    backend = open_backend(config)
    with backend.lock("bpsync import", timeout=ctx.args.lock_timeout, notify=ctx.console.warn):
        state = backend.read()
        current = state.table(name)
        if current is not None and current.enrichment_id:
            raise ConfigError(
                f"table {name} already manages enrichment {current.enrichment_id}",
                hint="delete its manifest and apply first, to manage another one",
            )
        with _client(ctx) as client:
            e = client.get_enrichment(eid)
        schema = {
            "map_name": e.name,
            "description": e.description,
            "active": e.active,
            "when": e.when,
            "fields": [dict(f) for f in e.fields],
        }
        backend.write(
            state.with_table(
                TableState(name, eid, config.api.version, schema, remote_version=e.version)
            )
        )
    ctx.console.note(
        f"Imported enrichment {eid} as table {name}. Its current rows are unknown "
        "to bpsync, so the next plan shows every row as to be uploaded."
    )
    return EXIT_OK
