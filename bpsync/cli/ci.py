"""`bpsync ci comment | fingerprint | issue`: GitHub review helpers for CI workflows.

    bpsync ci comment --body-file plan.md            # upsert the one sticky plan comment of a PR
    bpsync ci fingerprint --from-comment-of-commit SHA   # the fingerprint reviewers approved
    bpsync ci fingerprint --from-file plan.md|plan.json|plan.out
    bpsync ci issue --title T --body-file F [--close]    # one drift issue, found by its marker
    bpsync ci environments                               # ["sandbox", "prod"]: a job matrix

With environments (SPEC §8), `bpsync --env NAME ci ...` works on that environment's own plan
comment and drift issue (markers `<!-- bpsync:plan:NAME -->`, `<!-- bpsync:drift:NAME -->`).

How approval by fingerprint works is told in bpsync.review; the HTTP calls are bpsync.github,
imported only when a command needs GitHub.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

from bpsync.cli.context import EXIT_OK, Context
from bpsync.config import ENVIRONMENT_ENV
from bpsync.errors import ApplyRefused, ConfigError, UsageError
from bpsync.review import (
    ACTIONS_BOT,
    REVIEW_HINT,
    body_environment,
    drift_marker,
    fingerprint_from_file,
    fingerprint_from_text,
    fit_comment,
    plan_marker,
    with_marker,
)

if TYPE_CHECKING:
    from bpsync.github import GitHub

_SHA = re.compile(r"[0-9a-fA-F]{7,40}")


def _github(ctx: Context) -> GitHub:
    from bpsync.github import GitHub

    return GitHub.from_env(ctx.env)


def comment(ctx: Context) -> int:
    from bpsync.github import pr_from_event

    args = ctx.args
    text = _read_text(ctx.path(args.body_file))
    found, planned_for = body_environment(text)
    chosen = args.environment is not None or bool(ctx.env.get(ENVIRONMENT_ENV, "").strip())
    # Without --env, a rendering's marker names its environment: no bpsync.yaml needed (the
    # workflow's comment job runs the base branch, which may not know a new one yet).
    from_body = args.marker or (found and not chosen)
    environment = planned_for if from_body else ctx.config.environment
    if found and planned_for != environment and not args.marker:
        raise UsageError(
            f"{args.body_file} is the plan of {_named(planned_for)}, not of "
            f"{_named(environment)}: it would be posted as the other environment's comment",
            hint=f"run `bpsync --env {planned_for} ci comment ...`"
            if planned_for
            else "run `bpsync ci comment ...` without --env (and BPSYNC_ENV unset)",
        )
    marker = args.marker or plan_marker(environment)
    body = fit_comment(with_marker(text, marker))
    with _github(ctx) as gh:
        number = args.pr or pr_from_event(ctx.env)
        author = args.author or gh.own_login()
        result = gh.upsert_comment(number, body, marker=marker, author=author)
    verb = "Updated" if result.updated else "Created"
    what = f"the {environment} plan comment" if environment else "the plan comment"
    ctx.console.note(f"{verb} {what} of pull request #{number}: {result.url}")
    ctx.console.print(result.url)
    return EXIT_OK


def fingerprint(ctx: Context) -> int:
    args = ctx.args
    if args.from_file is not None:
        ctx.console.print(fingerprint_from_file(ctx.path(args.from_file)))
        return EXIT_OK
    environment = ctx.config.environment
    marker = args.marker or plan_marker(environment)
    author = args.author or ACTIONS_BOT
    with _github(ctx) as gh:
        if args.from_pr is not None:
            number = args.from_pr
            where = f"pull request #{number}"
        else:
            sha = args.from_comment_of_commit.strip()
            if not _SHA.fullmatch(sha):
                raise ConfigError(f"not a commit SHA: {sha!r}")
            number = gh.merged_pr_of_commit(sha)
            where = f"pull request #{number} (merged as {sha[:12]})"
        found = gh.find_comment(number, marker=marker, author=author)
    comment = f"{environment} plan comment" if environment else "plan comment"
    if found is None:
        raise ApplyRefused(
            f"no {comment} by {author} on {where}, so no reviewed plan approves this change"
            + (f" in environment {environment!r}" if environment else ""),
            hint=REVIEW_HINT,
        )
    approved = fingerprint_from_text(str(found.get("body") or ""))
    if approved is None:
        raise ApplyRefused(
            f"the {comment} on {where} shows no fingerprint (its last plan failed?)",
            hint=REVIEW_HINT,
        )
    ctx.console.note(f"Approved fingerprint from the {comment} on {where}: {approved}")
    ctx.console.print(approved)
    return EXIT_OK


def issue(ctx: Context) -> int:
    args = ctx.args
    marker = args.marker or drift_marker(ctx.config.environment)
    body = None
    if args.body_file is not None:
        body = fit_comment(with_marker(_read_text(ctx.path(args.body_file)), marker))
    elif not args.close:
        raise UsageError("bpsync ci issue: give --body-file FILE, or --close")
    with _github(ctx) as gh:
        author = args.author or gh.own_login()
        if args.close:
            closed = gh.close_issue(marker=marker, author=author, comment_body=body)
            if closed is None:
                ctx.console.note("No open issue holds the marker; nothing to close.")
            else:
                ctx.console.note(f"Closed issue #{closed['number']}: {closed.get('html_url', '')}")
            return EXIT_OK
        assert body is not None
        result = gh.upsert_issue(args.title, body, marker=marker, author=author)
    verb = "Updated" if result.updated else "Opened"
    ctx.console.note(f"{verb} issue #{result.number}: {result.url}")
    ctx.console.print(result.url)
    return EXIT_OK


def environments(ctx: Context) -> int:
    """The environments of bpsync.yaml in order, as a JSON array for a job matrix; `[""]`
    without environments, so one job runs, with no `--env`. Environments whose bpsync.yaml
    base URL is a loopback host (an emulator for rehearsals, which no CI runner reaches)
    are left out unless `--all`."""
    import json

    names = ctx.load_config(need_environment=False).environments
    if not ctx.args.all:
        names = tuple(n for n in names if not _is_local(ctx, n))
    ctx.console.print(json.dumps(list(names) or [""]))
    return EXIT_OK


def _is_local(ctx: Context, name: str) -> bool:
    from urllib.parse import urlsplit

    from bpsync.bigpanda.urls import is_loopback_host
    from bpsync.config import API_URL_ENV, load_config

    own = {k: v for k, v in ctx.env.items() if k != API_URL_ENV}  # bpsync.yaml's URL only
    config = load_config(ctx.start_dir, own, name, need_environment=True)
    return is_loopback_host(urlsplit(config.resolved_base_url).hostname or "")


def _named(environment: str | None) -> str:
    return f"environment {environment!r}" if environment else "no environment"


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read {path}: {e}") from None
