"""The core commands (validate, fmt, plan, apply, show, import, force-unlock): each takes the
CLI context and returns an exit code."""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bpsync.cli.context import EXIT_CHANGES, EXIT_ERROR, EXIT_INTERRUPTED, EXIT_OK, Context
from bpsync.console import Console, LiveLines, sorted_problems
from bpsync.errors import (
    ApplyRefused,
    BpsyncError,
    ConfigError,
    Interrupted,
    InvalidInput,
    Problem,
    StalePlan,
    UsageError,
)
from bpsync.manifest import Manifest, load_manifests
from bpsync.table import FileDigests

if TYPE_CHECKING:
    from bpsync.applier import TableResult
    from bpsync.binding import Binding
    from bpsync.interrupt import Interrupts
    from bpsync.plan import Plan
    from bpsync.planner import RowsMemo
    from bpsync.remote import Remote
    from bpsync.state import State, StateBackend

# Heavy modules (planner, renderers, applier, httpx) are imported inside the commands that
# need them, so `bpsync validate` and `--help` start fast; and `plan` imports what it can only
# after the tables' digests are under way (see build_plan).


def validate(ctx: Context) -> int:
    from bpsync.validate import validate_project

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
    from bpsync.validate import validate_project

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
    from bpsync.validate import select

    manifests, problems = load_manifests(ctx.config)
    if any(p.severity == "error" for p in problems):
        raise InvalidInput(problems)
    check = bool(ctx.args.check)
    encoding = ctx.args.encoding
    if encoding is not None:
        import codecs

        try:
            codecs.lookup(encoding)
        except LookupError:
            raise UsageError(
                f"unknown encoding {encoding!r}", hint="e.g. --encoding cp1252 or latin-1"
            ) from None
    failed = False
    changed = 0
    for manifest in select(manifests, ctx.args.table):
        result = format_table(manifest, check=check, encoding=encoding)
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
    from datetime import UTC, datetime

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


def build_plan(
    ctx: Context, *, refresh: bool, memo: RowsMemo | None = None, render_format: str = ""
) -> Plan:
    """Plan the selected tables; shared by `plan` and `apply` (`memo`: see RowsMemo). The
    renderer of `render_format`, if given, is imported while the tables are hashed."""
    config = ctx.config
    digests = FileDigests()  # tables are hashed on another core while the rest goes on
    manifests = _load_selected(ctx, digests)  # first: it requests the digests
    from bpsync.planner import make_plan
    from bpsync.state import open_backend

    if render_format:
        _import_renderer(render_format)

    backend = open_backend(config)
    binding = _bound(ctx, backend, backend.read())  # refuses another endpoint's state
    state = binding.state
    remote = None
    with _scratch(refresh) as scratch:
        if refresh:
            from bpsync.refresh import refresh_remote

            with _client(ctx) as client:
                remote = refresh_remote(
                    client,
                    state,
                    manifests,
                    ctx.args.table,
                    ctx.console.note,
                    rows=_row_refresh(ctx, Path(scratch)),
                )
            _check_found(ctx, state, remote)
            if binding.adopted:
                with backend.lock(
                    "bpsync plan", timeout=ctx.args.lock_timeout, notify=ctx.console.warn
                ):
                    _record_adoption(ctx, backend, _bound(ctx, backend, backend.read()))
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


@contextlib.contextmanager
def _scratch(wanted: bool = True) -> Iterator[str]:
    """A temporary directory for the rows a refresh reads back (none when not refreshing)."""
    if not wanted:
        yield ""
        return
    import tempfile

    with tempfile.TemporaryDirectory(prefix="bpsync-refresh-") as scratch:
        yield scratch


def _bound(ctx: Context, backend: StateBackend, state: State) -> Binding:
    """`state` bound to the configured endpoint; refuses (before any request) state that
    belongs to another one (SPEC §5)."""
    from bpsync.binding import bind

    config = ctx.config
    return bind(
        state,
        config.endpoint,
        location=backend.location,
        environment=config.environment,
        environments=config.environments,
        env=ctx.env,
    )


def _record_adoption(ctx: Context, backend: StateBackend, binding: Binding) -> State:
    """Write the endpoint into state that recorded none, and say so (once: then it is
    recorded). Called holding the lock, after a refresh found the state's enrichments."""
    if not binding.adopted:
        return binding.state
    from bpsync.binding import adopted_note

    written = backend.write(binding.state)
    ctx.console.note(adopted_note(backend.location, ctx.config.endpoint))
    return written


def _check_found(ctx: Context, state: State, remote: Mapping[str, Remote]) -> None:
    from bpsync.refresh import check_found

    config = ctx.config
    where = str(config.endpoint)
    if config.environment:
        where += f" (environment {config.environment!r})"
    check_found(
        state,
        remote,
        where=where,
        token_env=config.api.token_env,
        allow_missing=bool(getattr(ctx.args, "allow_missing", False)),
    )


def _row_refresh(ctx: Context, directory: Path) -> Any:
    """The row refresh of a refresh (SPEC §7): its budget, where the rows go, its progress.
    None on an API version that cannot read rows (saying so once when it was asked for)."""
    from bpsync.bigpanda import facts
    from bpsync.console import read_progress
    from bpsync.refresh import RowRefresh

    asked = getattr(ctx.args, "refresh_rows", None)
    budget = ctx.config.refresh.max_rows if asked is None else asked
    if ctx.config.api.version not in facts.TABLE_READ_API_VERSIONS:
        if asked:
            ctx.console.note(
                f"Note: API {ctx.config.api.version} cannot read a table's rows; the refresh "
                "checks each enrichment's version only (--refresh-rows needs v2.1)."
            )
        return None
    live = LiveLines(ctx.console.err) if _is_tty(ctx.console.err) else None
    return RowRefresh(
        budget, directory, progress=lambda name: read_progress(name, ctx.console.note, live)
    )


def _client(
    ctx: Context,
    fault: Callable[[str], None] | None = None,
    interrupts: Interrupts | None = None,
) -> Any:
    from bpsync.bigpanda.client import BigPandaClient, process_rate_limiter

    config = ctx.config
    log = ctx.console.note if ctx.args.debug else None
    options = dict(ctx.client_options)
    if interrupts is not None:
        # Every sleep of the client (polls, backoff, rate limit) ends at a second Ctrl-C.
        inner = options.get("sleep")
        if inner is None:
            options["sleep"] = interrupts.sleep  # real time: the process's limiter is right
            options.setdefault("rate_limiter", process_rate_limiter())
        else:

            def sleep(seconds: float) -> None:
                interrupts.check()
                inner(seconds)
                interrupts.check()

            options["sleep"] = sleep
    return BigPandaClient(
        config.resolved_base_url,
        config.token(ctx.env),
        config.api.version,
        log=log,
        fault=fault,  # test seam: the crash matrix's "mid-upload" point (see _fault_hook)
        on_retry=None if log else ctx.console.note,  # --debug logs them with the rest
        **options,
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


def _import_renderer(fmt: str) -> None:
    """Import the module `render` will use for `fmt` (text, markdown or json)."""
    import importlib

    importlib.import_module(f"bpsync.render.{fmt if fmt in ('json', 'markdown') else 'text'}")


def render(ctx: Context, plan: Plan, fmt: str, plan_file: str | None = None) -> None:
    from bpsync.gcpause import cycle_collector_paused

    with cycle_collector_paused():
        _render(ctx, plan, fmt, plan_file)


def _render(ctx: Context, plan: Plan, fmt: str, plan_file: str | None) -> None:
    if fmt == "json":
        from bpsync.render.json import write_json

        with _Batched(ctx.console.out) as out:
            write_json(plan, out)
        return
    if fmt == "markdown":
        ctx.console.print(_markdown(ctx, plan, plan_file))
        return
    from bpsync.render.text import render_text

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
    refresh = _wants_refresh(ctx)
    the_plan = build_plan(ctx, refresh=refresh, render_format=ctx.args.format)
    if not refresh and ctx.args.refresh is None and _has_remote(ctx, the_plan):
        ctx.console.note(
            f"Note: not refreshed: {ctx.config.api.token_env} is not set, so BigPanda's side "
            "was not read (no drift check); the plan compares with the state only."
        )
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


def _has_remote(ctx: Context, the_plan: Plan) -> bool:
    """An endpoint is configured, or a table is known to live in BigPanda: a refresh was due."""
    from bpsync.config import API_URL_ENV

    configured = bool(ctx.env.get(API_URL_ENV) or ctx.config.api.base_url)
    return configured or any(t.enrichment_id for t in the_plan.tables)


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
                import signal

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
    try:
        answer = ctx.read_line().strip()
    except (EOFError, KeyboardInterrupt):
        ctx.console.err.write("\n")  # the prompt's line was left open
        answer = ""
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
    from bpsync.interrupt import Interrupts
    from bpsync.planner import RowsMemo, make_plan
    from bpsync.refresh import refresh_remote
    from bpsync.state import open_backend

    config = ctx.config
    config.token(ctx.env)  # fail before taking the lock when there is no token
    _check_verify(ctx)
    fault = _fault_hook(ctx.env)
    backend = open_backend(config, fault=fault)  # test seam: kills mid state write too
    with backend.lock(
        "bpsync apply", timeout=ctx.args.lock_timeout, notify=ctx.console.warn
    ) as _lock:
        fault("locked")
        binding = _bound(ctx, backend, backend.read())  # before any request
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
        say = [ctx.console.note]  # the live lines' note once they exist (a terminal)
        interrupts = ctx.interrupts or Interrupts(lambda text: say[0](text))
        with _client(ctx, fault=fault, interrupts=interrupts) as client:
            store = StateStore(backend, _bound(ctx, backend, backend.read()).state, fault)
            live = LiveLines(ctx.console.err) if _is_tty(ctx.console.err) else None
            if live is not None:
                say[0] = live.note
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
                interrupts=interrupts,
                verify=ctx.args.verify,
            )
            with interrupts.installed():
                resumed = applier.resume_pending()
            report.results += resumed
            if interrupts.count:
                raise Interrupted(
                    "apply interrupted while re-attaching to the jobs of an earlier apply; "
                    "nothing new was started",
                    hint="run `bpsync apply` again: it re-attaches to any job still pending",
                )
            if resumed and (ctx.args.planfile or ctx.args.expect_fingerprint):
                raise StalePlan(
                    "a job left pending by an interrupted apply was completed, "
                    "so the state moved since the plan was made",
                    hint="run `bpsync plan` again and review it",
                )
            manifests = _load_selected(ctx)
            with _scratch() as scratch:
                remote = refresh_remote(
                    client,
                    store.state,
                    manifests,
                    ctx.args.table,
                    ctx.console.note,
                    rows=_row_refresh(ctx, Path(scratch)),
                )
                _check_found(ctx, store.state, remote)  # before any write
                store.state = _record_adoption(ctx, backend, _adoption(binding, store.state))
                fresh = make_plan(
                    config,
                    manifests,
                    store.state,
                    backend,
                    only=ctx.args.table,
                    remote=remote,
                    now=_now(),
                    memo=memo,
                )
            if ctx.args.planfile:
                _check_saved_remote(the_plan, fresh)
            else:
                the_plan = fresh
                report.plan = the_plan
                expected = ctx.args.expect_fingerprint
                if expected and expected != the_plan.fingerprint:
                    _fingerprint_mismatch(expected, the_plan)
                check_mass_delete(the_plan, ctx.args.allow_mass_delete)
                render(ctx, the_plan, "text")
                if not the_plan.has_changes:
                    return EXIT_OK
                _confirm(ctx, the_plan)
            with interrupts.installed():
                result = applier.apply(the_plan)
            report.results += result.results
    for r in result.failed:
        if r.interrupted != "not started":
            ctx.console.error(f"{r.name}: {r.message}")
    ctx.console.print(result.summary())
    if result.interrupted:
        return EXIT_INTERRUPTED
    if result.failed:
        return EXIT_ERROR
    return EXIT_OK


def _adoption(first: Binding, state: State) -> Binding:
    """`state` (as the store now holds it), adopting the endpoint if it was unbound when
    apply started."""
    from bpsync.binding import Binding

    return Binding(state, adopted=first.adopted)


def _check_verify(ctx: Context) -> None:
    from bpsync.bigpanda import facts

    version = ctx.config.api.version
    if ctx.args.verify and version not in facts.TABLE_READ_API_VERSIONS:
        raise ConfigError(
            f"apply --verify needs an API that can read a table's rows; API {version} cannot",
            hint="apply without --verify (the job's `done` is what v1 confirms), or use v2.1",
        )


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
        if (
            expected
            and expected != the_plan.fingerprint
            and not _refresh_may_explain(ctx, the_plan)
        ):
            _fingerprint_mismatch(expected, the_plan)
    check_mass_delete(the_plan, ctx.args.allow_mass_delete)
    return the_plan


def _refresh_may_explain(ctx: Context, offline: Plan) -> bool:
    """Whether what a refresh finds could enter the fingerprint: only for tables that know an
    enrichment or an interrupted apply's intent. Otherwise a mismatch is final, and refused
    before any request."""
    from bpsync.state import open_backend

    if any(t.enrichment_id for t in offline.tables):
        return True
    return any(ts.pending for ts in open_backend(ctx.config).read().tables.values())


def _fingerprint_mismatch(expected: str, fresh: Plan) -> None:
    from bpsync.plan import remote_findings

    findings = remote_findings(fresh.tables)
    if findings:
        raise ApplyRefused(
            f"fingerprint mismatch: the approved plan was {expected}, a fresh plan is "
            f"{fresh.fingerprint}; BigPanda's side shows what the reviewed plan may not "
            "have: " + "; ".join(findings),
            hint="nothing was changed; review a new plan (`bpsync plan`), which shows this "
            "drift, before applying",
        )
    raise ApplyRefused(
        f"fingerprint mismatch: the approved plan was {expected}, "
        f"a fresh plan is {fresh.fingerprint}",
        hint="the tables, manifests or state moved since the plan was "
        "reviewed; review the new plan before applying",
    )


def _check_saved_remote(saved: Plan, fresh: Plan) -> None:
    """Refuse a saved plan when the apply-time refresh finds drift it did not show."""
    new = sorted(set(remote_findings_of(fresh)) - set(remote_findings_of(saved)))
    if new:
        raise StalePlan(
            "BigPanda changed since the plan was made, and the plan does not show it: "
            + "; ".join(new),
            hint="nothing was changed; run `bpsync plan --out FILE` again and review it",
        )


def remote_findings_of(plan: Plan) -> tuple[str, ...]:
    from bpsync.plan import remote_findings

    return remote_findings(plan.tables)


def import_(ctx: Context) -> int:
    args = ctx.args
    if args.import_all:
        if not args.generate:
            raise UsageError(
                "bpsync import: --all needs --generate", hint="see `bpsync import --help`"
            )
        if args.name or args.enrichment_id or args.csv:
            raise UsageError(
                "import --all takes no NAME, ENRICHMENT_ID or --csv",
                hint="import one table with `bpsync import NAME ID --generate [--csv FILE]`",
            )
        return _import_all(ctx)
    if not args.name or not args.enrichment_id:
        raise UsageError(
            "bpsync import: needs NAME and ENRICHMENT_ID (or --all --generate)",
            hint="see `bpsync import --help`",
        )
    if args.include_inactive:
        raise UsageError("--include-inactive goes with --all --generate")
    if (args.csv or args.dir) and not args.generate:
        raise UsageError("--csv and --dir go with --generate")
    if args.generate:
        return _import_generate(ctx)
    return _import_adopt(ctx)


def _importer(ctx: Context, backend: Any, client: Any) -> Any:
    from bpsync.console import read_progress
    from bpsync.importer import Importer, default_directory

    live = LiveLines(ctx.console.err) if _is_tty(ctx.console.err) else None
    directory = ctx.path(ctx.args.dir) if ctx.args.dir else default_directory(ctx.config)
    return Importer(
        ctx.config,
        backend,
        client,
        directory,
        progress=lambda name: read_progress(name, ctx.console.note, live),
    )


def _existing_manifests(ctx: Context) -> list[Manifest]:
    manifests, problems = load_manifests(ctx.config)
    if any(p.severity == "error" for p in problems):
        raise InvalidInput(problems)  # names and ids cannot be checked against broken files
    return manifests


def _report_imported(ctx: Context, imported: Any, version: int | None) -> bool:
    """One line for a written table; its table's problems after it. True when clean."""
    ctx.console.note(
        f"{imported.name}: wrote {imported.manifest} and {imported.csv} "
        f"({imported.rows:,} rows) from enrichment {imported.enrichment_id}"
        + (f", version {version}" if version is not None else "")
    )
    if not any(p.severity == "error" for p in imported.problems):
        if imported.problems:
            ctx.console.problems(imported.problems)
        return True
    ctx.console.problems(imported.problems)
    ctx.console.error(
        f"{imported.name}: BigPanda's table breaks the CSV rules above; it was written and "
        f"adopted as it is: fix {imported.csv}, then `bpsync plan` shows the fix as a change"
    )
    return False


def _import_generate(ctx: Context) -> int:
    from bpsync.bigpanda import facts
    from bpsync.errors import NotFoundError
    from bpsync.importer import not_found
    from bpsync.state import open_backend

    config, args = ctx.config, ctx.args
    if config.api.version not in facts.TABLE_READ_API_VERSIONS and not args.csv:
        raise ConfigError(
            f"API {config.api.version} documents no way to read a table's rows; nothing was "
            "written",
            hint="export the table from BigPanda's UI and run "
            f"`bpsync import {args.name} {args.enrichment_id} --generate --csv FILE`",
        )
    manifests = _existing_manifests(ctx)
    config.token(ctx.env)
    backend = open_backend(config)
    lock = backend.lock("bpsync import", timeout=args.lock_timeout, notify=ctx.console.warn)
    with lock, _client(ctx) as client:
        _bound(ctx, backend, backend.read())  # another endpoint's state: refused, nothing sent
        importer = _importer(ctx, backend, client)
        importer.check_one(args.name, args.enrichment_id, manifests)
        try:
            e = client.get_enrichment(args.enrichment_id)
        except NotFoundError as exc:
            raise not_found(args.enrichment_id, exc) from None
        source = ctx.path(args.csv) if args.csv else None
        imported = importer.generate(args.name, e, source)
    ok = _report_imported(ctx, imported, e.version)
    if ok:
        ctx.console.note(
            f"Imported enrichment {e.id} as table {args.name}; `bpsync plan` now shows no "
            "changes for it."
        )
    return EXIT_OK if ok else EXIT_ERROR


def _import_all(ctx: Context) -> int:
    from bpsync.bigpanda import facts
    from bpsync.errors import AuthError, BpsyncError
    from bpsync.state import open_backend

    config, args = ctx.config, ctx.args
    if config.api.version not in facts.TABLE_READ_API_VERSIONS:
        raise ConfigError(
            f"API {config.api.version} documents no way to read a table's rows, so "
            "`import --all --generate` cannot write the CSVs; nothing was written",
            hint="export each table from BigPanda's UI and run "
            "`bpsync import NAME ID --generate --csv FILE` for it",
        )
    manifests = _existing_manifests(ctx)
    config.token(ctx.env)
    backend = open_backend(config)
    clean = True
    done: list[Any] = []
    lock = backend.lock("bpsync import", timeout=args.lock_timeout, notify=ctx.console.warn)
    with lock, _client(ctx) as client:
        _bound(ctx, backend, backend.read())  # another endpoint's state: refused, nothing sent
        importer = _importer(ctx, backend, client)
        found = importer.unknown(manifests, args.include_inactive)
        if not found:
            ctx.console.note(
                "Nothing to import: every enrichment is managed by a manifest or the state."
            )
            return EXIT_OK
        names = importer.names_for(found, manifests)
        importer.check_discoverable(names[0])
        for name, e in zip(names, found, strict=True):
            try:
                imported = importer.generate(name, e, None)
            except AuthError:
                raise  # the key cannot read: every other table would fail the same way
            except BpsyncError as err:
                ctx.console.error(f"{name} (enrichment {e.id}): {err.render()}")
                clean = False
                continue
            done.append(imported)
            clean = _report_imported(ctx, imported, e.version) and clean
    rows = sum(i.rows for i in done)
    failed = len(found) - len(done)
    ctx.console.note(
        f"Imported {len(done)} of {len(found)} enrichment(s) ({rows:,} rows)"
        + (f"; {failed} failed (see above)" if failed else "")
        + ". Review the files and open a pull request with them."
    )
    return EXIT_OK if clean else EXIT_ERROR


def _import_adopt(ctx: Context) -> int:
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
        binding = _bound(ctx, backend, backend.read())  # before any request
        state = binding.state
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
        if binding.adopted:
            from bpsync.binding import adopted_note

            ctx.console.note(adopted_note(backend.location, config.endpoint))
    ctx.console.note(
        f"Imported enrichment {eid} as table {name}. Its current rows are unknown "
        "to bpsync, so the next plan shows every row as to be uploaded."
    )
    return EXIT_OK
