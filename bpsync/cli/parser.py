"""The whole `bpsync` argument parser, and the only place commands are registered.

Options shared by several commands are declared once, as argparse parent parsers. A command
is named by `module:function` inside `bpsync.cli` and imported only when it runs, so that
`bpsync --help` loads none of the planner, renderers or HTTP code.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any, NoReturn, TypeAlias

from bpsync import __version__
from bpsync.cli.context import (
    Command,
    int_at_least,
    non_negative_int,
    parse_duration,
    positive_int,
    pr_number,
)
from bpsync.errors import UsageError
from bpsync.review import ACTIONS_BOT, DEFAULT_API_URL, DRIFT_MARKER, PLAN_MARKER

_ENV_PLAN_MARKER = "<!-- bpsync:plan:NAME -->"
_INVALID_CHOICE = re.compile(r"invalid choice: '?([^'\s]*)'? \(choose from (.*)\)")


class _Parser(argparse.ArgumentParser):
    """Usage errors exit 64, not argparse's 2 (2 means "changes" for `plan
    --detailed-exitcode`), and name the closest command when one is mistyped."""

    def error(self, message: str) -> NoReturn:
        m = _INVALID_CHOICE.search(message)
        if m:
            choices = [c.strip(" '\"") for c in m.group(2).split(",")]
            message += did_you_mean(m.group(1), choices)
        raise UsageError(f"{self.prog}: {message}", hint=f"see `{self.prog} --help`")


_Sub: TypeAlias = "argparse._SubParsersAction[_Parser]"  # what `add_subparsers` returns


def did_you_mean(word: str, known: Sequence[str]) -> str:
    """`; did you mean X?` for the closest of `known`, or nothing."""
    import difflib  # only for a usage error

    close = difflib.get_close_matches(word, known, n=1, cutoff=0.6)
    return f"; did you mean {close[0]}?" if close else ""


def _parent() -> _Parser:
    return _Parser(add_help=False)


def _option(*flags: str, **kwargs: Any) -> _Parser:
    """A parent parser holding one shared option: declared here once, given by `parents=` to
    every command that takes it."""
    p = _parent()
    p.add_argument(*flags, **kwargs)
    return p


def _plan_format() -> _Parser:
    p = _parent()
    p.add_argument(
        "--format",
        choices=("text", "markdown", "json"),
        default="text",
        help="text (default), markdown (the pull-request comment) or json (versioned)",
    )
    p.add_argument(
        "--max-bytes",
        type=int_at_least(2_000),
        default=None,
        metavar="N",
        help="markdown: fit the rendering in N bytes of UTF-8 instead of a PR comment's "
        "60,000 characters (GitHub's job summary takes 1,000,000)",
    )
    return p


class _Groups:
    """The shared option groups, each built once per parser and only when a command uses it."""

    @cached_property
    def table(self) -> _Parser:
        return _option(
            "--table",
            action="append",
            default=[],
            metavar="NAME",
            help="limit to this table (repeatable)",
        )

    @cached_property
    def plan_format(self) -> _Parser:
        return _plan_format()

    @cached_property
    def max_rows(self) -> _Parser:
        return _option(
            "--max-rows",
            type=non_negative_int,
            default=20,
            metavar="N",
            help="rows shown per table in text (0 = all)",
        )

    @cached_property
    def lock_timeout(self) -> _Parser:
        return _option(
            "--lock-timeout",
            type=parse_duration,
            default=0.0,
            metavar="DURATION",
            help="wait this long for the state lock (default 0s)",
        )

    @cached_property
    def allow_missing(self) -> _Parser:
        return _option(
            "--allow-missing",
            action="store_true",
            help="go on when BigPanda has none of the enrichments the state records (they were "
            "all deleted): plan to create them again",
        )

    @cached_property
    def refresh_rows(self) -> _Parser:
        """plan and apply: the row refresh's budget (SPEC §7), overriding refresh.max_rows."""
        return _option(
            "--refresh-rows",
            type=non_negative_int,
            default=None,
            metavar="N",
            help="v2.1: read back the rows of tables up to N rows "
            "(default refresh.max_rows; 0: off)",
        )


# One example per command, shown at the end of its --help (a test requires one for each).
EXAMPLES: dict[str, str] = {
    "validate": "bpsync validate --format github",
    "fmt": "bpsync fmt --check",
    "plan": "bpsync plan --out plan.out --detailed-exitcode",
    "apply": "bpsync apply plan.out",
    "show": "bpsync show plan.out --format markdown",
    "import": "bpsync import service-owners 5f3c9a1e2b7d4c0011aa22bb",
    "force-unlock": "bpsync force-unlock 0b6f3c5e-8f1d-4a7e-9c2b-5d4e3f2a1b0c",
    "init": "bpsync init --from tables/owners.csv --key application",
    "completion": "bpsync completion bash > ~/.local/share/bash-completion/completions/bpsync",
    "ci": "bpsync ci comment --body-file plan.md",
    "ci comment": "bpsync ci comment --body-file plan.md --pr 42",
    "ci fingerprint": 'bpsync ci fingerprint --from-comment-of-commit "$GITHUB_SHA"',
    "ci issue": "bpsync ci issue --title 'BigPanda drift' --body-file drift.md",
    "ci environments": 'bpsync ci environments   # a job matrix: ["sandbox", "prod"]',
    "state": "bpsync state migrate --to s3",
    "state migrate": "bpsync state migrate --to s3 --bucket acme-bpsync --prefix bigpanda/prod",
    "state rebind": "bpsync state rebind   # after moving the enrichments' base URL or region",
}
TOP_EXAMPLES = (
    "bpsync validate",
    "bpsync plan",
    "bpsync apply --auto-approve",
)


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the layout of an epilog (the examples, which hold line breaks), but wraps
    one-line descriptions to the terminal as usual."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if "\n" in text:
            return super()._fill_text(text, width, indent)
        return argparse.HelpFormatter._fill_text(self, text, width, indent)


def _add_examples(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> None:
    """Give every command its example (and the formatter that keeps it as written)."""
    parser.formatter_class = _Formatter
    example = EXAMPLES.get(" ".join(path))
    if example:
        parser.epilog = f"example:\n  {example}"
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                _add_examples(sub, (*path, name))


def _command(p: argparse.ArgumentParser, target: str) -> None:
    """Name the function that runs the command: `module:function` in bpsync.cli."""
    p.set_defaults(command_target=target)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser of every command; with `command` (see `command_of`), of that one only: the
    same parser for that command line, built in a fraction of the time."""
    p = _Parser(prog="bpsync", description="Keep BigPanda mapping enrichment tables in git.")
    p.add_argument("--version", action="version", version=f"bpsync {__version__}")
    p.add_argument("-C", dest="directory", metavar="DIR", help="run as if started in DIR")
    p.add_argument(
        "--env",
        dest="environment",
        metavar="NAME",
        help="the environment of bpsync.yaml to use (default: $BPSYNC_ENV)",
    )
    p.add_argument("--no-color", action="store_true", help="never colour the output")
    p.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    groups = _Groups()
    for name, add in _COMMANDS.items():
        if command in (None, name):
            add(sub, groups)
    _add_examples(p)
    p.epilog = "examples:\n" + "\n".join(f"  {e}" for e in TOP_EXAMPLES)
    return p


def _validate_command(sub: _Sub, g: _Groups) -> None:
    v = sub.add_parser("validate", help="check manifests and tables offline", parents=[g.table])
    v.add_argument(
        "--format",
        choices=("text", "github", "json"),
        default="text",
        help="github: one ::error annotation per problem on stdout; json: every problem "
        "(file, line, column, severity, message, hint) as one versioned document on stdout",
    )
    _command(v, "core:validate")


def _fmt_command(sub: _Sub, g: _Groups) -> None:
    f = sub.add_parser("fmt", help="rewrite tables in canonical form", parents=[g.table])
    f.add_argument("--check", action="store_true", help="only report files that would change")
    f.add_argument(
        "--encoding",
        metavar="NAME",
        help='the encoding non-UTF-8 tables were saved in (Excel\'s "CSV (Comma delimited)" on '
        "Windows: cp1252); they are rewritten as UTF-8. A BOM and UTF-16 are recognised "
        "without it",
    )
    _command(f, "core:fmt")


def _plan_command(sub: _Sub, g: _Groups) -> None:
    pl = sub.add_parser(
        "plan",
        help="show what apply would change, row by row",
        parents=[
            g.table,
            g.plan_format,
            g.max_rows,
            g.lock_timeout,
            g.allow_missing,
            g.refresh_rows,
        ],
    )
    pl.add_argument("--out", type=Path, metavar="FILE", help="save the plan for `apply FILE`")
    pl.add_argument(
        "--detailed-exitcode",
        action="store_true",
        help="exit 0 when nothing changes, 2 when something does",
    )
    refresh = pl.add_mutually_exclusive_group()
    refresh.add_argument(
        "--refresh",
        dest="refresh",
        action="store_true",
        default=None,
        help="read the enrichments from BigPanda (needs the token)",
    )
    refresh.add_argument(
        "--no-refresh",
        dest="refresh",
        action="store_false",
        help="stay offline even when a token is set",
    )
    _command(pl, "core:plan")


def _apply_command(sub: _Sub, g: _Groups) -> None:
    a = sub.add_parser(
        "apply",
        help="make BigPanda match the manifests",
        parents=[g.table, g.max_rows, g.lock_timeout, g.allow_missing, g.refresh_rows],
    )
    a.add_argument(
        "planfile",
        nargs="?",
        type=Path,
        metavar="PLANFILE",
        help="apply exactly this plan (from `bpsync plan --out FILE`); refused if anything moved",
    )
    a.add_argument("--auto-approve", action="store_true", help="do not ask for `yes`")
    a.add_argument(
        "--format",
        choices=("text", "json"),
        default="text",
        help="json: the result per table (action, enrichment id, job id, rows, duration, "
        "outcome, error) as one versioned document on stdout; everything else on stderr",
    )
    a.add_argument(
        "--expect-fingerprint", metavar="FP", help="refuse unless a fresh plan has this fingerprint"
    )
    a.add_argument(
        "--allow-mass-delete",
        action="store_true",
        help="allow removing more than max_delete_fraction of a table's rows",
    )
    a.add_argument(
        "--timeout",
        type=parse_duration,
        default=parse_duration("30m"),
        metavar="DURATION",
        help="bound the wait on jobs (default 30m)",
    )
    a.add_argument(
        "--parallelism",
        type=positive_int,
        default=4,
        metavar="N",
        help="tables applied at once (default 4)",
    )
    a.add_argument(
        "--verify",
        action="store_true",
        help="v2.1: read each table back after its job is done and compare it",
    )
    _command(a, "core:apply")


def _show_command(sub: _Sub, g: _Groups) -> None:
    s = sub.add_parser("show", help="render a saved plan", parents=[g.plan_format, g.max_rows])
    s.add_argument(
        "planfile", type=Path, metavar="PLANFILE", help="a plan saved by `bpsync plan --out FILE`"
    )
    _command(s, "core:show")


def _import_command(sub: _Sub, g: _Groups) -> None:
    i = sub.add_parser(
        "import",
        help="adopt an existing enrichment into state",
        description="`import NAME ENRICHMENT_ID` adopts an enrichment for an existing manifest; "
        "with --generate it first writes the manifest and CSV from BigPanda. "
        "`import --all --generate` does that for every enrichment the repository does not "
        "manage yet.",
        parents=[g.lock_timeout],
    )
    i.add_argument("name", nargs="?", metavar="NAME", help="the table's name in this repository")
    i.add_argument(
        "enrichment_id", nargs="?", metavar="ENRICHMENT_ID", help="the enrichment's id in BigPanda"
    )
    i.add_argument(
        "--generate",
        action="store_true",
        help="write the manifest and CSV from BigPanda (v2.1 reads the rows; v1 needs --csv)",
    )
    i.add_argument(
        "--all",
        dest="import_all",
        action="store_true",
        help="every enrichment no manifest or state entry knows (with --generate)",
    )
    i.add_argument(
        "--include-inactive", action="store_true", help="with --all: inactive enrichments too"
    )
    i.add_argument(
        "--csv", type=Path, metavar="FILE", help="the rows, exported from BigPanda's UI (v1)"
    )
    i.add_argument(
        "--dir",
        type=Path,
        metavar="DIR",
        help="where to write the files (default: the first manifests pattern's directory)",
    )
    _command(i, "core:import_")


def _force_unlock_command(sub: _Sub, g: _Groups) -> None:
    u = sub.add_parser("force-unlock", help="clear a stale state lock")
    u.add_argument("lock_id", metavar="LOCK_ID", help="the id a command refused by the lock showed")
    _command(u, "core:force_unlock")


def _init_command(sub: _Sub, g: _Groups) -> None:
    n = sub.add_parser(
        "init",
        help="write a starter bpsync.yaml, or a manifest for an existing CSV",
        description="Without --from: write a starter bpsync.yaml here. With --from: write "
        "the manifest of an existing table beside it (the first column, or the --key "
        "columns, as the key; every other column a result tag, with a valid tag_name "
        "suggested where the title is not one). Never overwrites a file; the table must "
        "pass `bpsync validate`'s rules first.",
    )
    n.add_argument(
        "--from",
        dest="csv",
        type=Path,
        metavar="FILE.csv",
        help="the existing table (.csv or .csv.gz) to write a manifest for",
    )
    n.add_argument(
        "--key",
        action="append",
        default=[],
        metavar="COL",
        help="a column that identifies a row (query_tag; repeatable; default: the first)",
    )
    n.add_argument(
        "--name", metavar="NAME", help="the table's name and manifest file (default: the CSV's)"
    )
    _command(n, "init:init")


def _completion_command(sub: _Sub, g: _Groups) -> None:
    c = sub.add_parser(
        "completion",
        help="print the shell completion script",
        description="Print a completion script for bash, zsh or fish, generated from this "
        "parser (so it always knows every command and option of this version).",
    )
    c.add_argument("shell", choices=("bash", "zsh", "fish"), help="the shell to complete for")
    _command(c, "completion:completion")


def _ci_commands(sub: _Sub, g: _Groups) -> None:
    ci = sub.add_parser(
        "ci",
        help="GitHub helpers for pull-request review and CI",
        description="GitHub helpers: the sticky plan comment, the approved fingerprint, "
        "the drift issue. Read GITHUB_TOKEN (or GH_TOKEN), GITHUB_REPOSITORY and "
        f"GITHUB_API_URL (default {DEFAULT_API_URL}).",
    )
    cisub = ci.add_subparsers(dest="ci_command", metavar="SUBCOMMAND", parser_class=_Parser)
    cisub.required = True

    c = cisub.add_parser(
        "comment",
        help="create or update the one plan comment of a pull request",
        description="Upsert the pull request's sticky comment: update the comment by --author "
        "that holds the marker, else create one. Other comments are left alone.",
    )
    c.add_argument(
        "--body-file",
        type=Path,
        required=True,
        metavar="FILE",
        help="the comment (e.g. `bpsync show plan.out --format markdown`)",
    )
    c.add_argument(
        "--pr",
        type=pr_number,
        metavar="N",
        help="pull request number (default: from GITHUB_EVENT_PATH)",
    )
    _marker_author(
        c,
        "comment",
        f"the plan comment's marker {PLAN_MARKER}, {_ENV_PLAN_MARKER} with --env NAME",
        f"the token's own login, or {ACTIONS_BOT} for a workflow token",
    )
    _command(c, "ci:comment")

    f = cisub.add_parser(
        "fingerprint",
        help="print the approved plan fingerprint",
        description="Print the fingerprint (sha256:…) of the plan reviewers saw, or exit 1.",
    )
    source = f.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--from-comment-of-commit",
        metavar="SHA",
        help="the plan comment of the merged pull request of commit SHA",
    )
    source.add_argument(
        "--from-pr", type=pr_number, metavar="N", help="the plan comment of pull request N"
    )
    source.add_argument(
        "--from-file",
        type=Path,
        metavar="FILE",
        help="a rendering (markdown or json) or a saved plan file",
    )
    _marker_author(
        f,
        "comment",
        f"the plan comment's marker {PLAN_MARKER}, {_ENV_PLAN_MARKER} with --env NAME",
        ACTIONS_BOT,
    )
    _command(f, "ci:fingerprint")

    i = cisub.add_parser(
        "issue",
        help="open, update or close the one issue found by a marker (drift)",
        description="Upsert the open issue by --author that holds the marker (its title and "
        "body are replaced), or with --close close it if open.",
    )
    i.add_argument("--title", required=True, metavar="TITLE", help="the issue's title")
    i.add_argument("--body-file", type=Path, metavar="FILE", help="the issue body")
    i.add_argument(
        "--close",
        action="store_true",
        help="close the issue if open (with --body-file: post that text on it first)",
    )
    _marker_author(
        i,
        "issue",
        f"{DRIFT_MARKER}, <!-- bpsync:drift:NAME --> with --env NAME",
        f"the token's own login, or {ACTIONS_BOT}",
    )
    _command(i, "ci:issue")

    e = cisub.add_parser(
        "environments",
        help="print the environments of bpsync.yaml as JSON (a job matrix)",
        description='Print the environments of bpsync.yaml, in order, as a JSON array (["sandbox", '
        '"prod"]) for a workflow\'s job matrix; [""] when bpsync.yaml defines none. '
        "Environments whose base URL is a loopback host (an emulator to rehearse with) are "
        "left out, unless --all.",
    )
    e.add_argument(
        "--all", action="store_true", help="also list environments on a loopback base URL"
    )
    _command(e, "ci:environments")


def _marker_author(
    p: argparse.ArgumentParser, what: str, marker_default: str, author_default: str
) -> None:
    p.add_argument(
        "--marker",
        metavar="TEXT",
        help=f"hidden text that identifies the {what} (default: {marker_default})",
    )
    p.add_argument(
        "--author",
        metavar="LOGIN",
        help=f"only this author's {what} counts (default: {author_default})",
    )


def _state_commands(sub: _Sub, g: _Groups) -> None:
    st = sub.add_parser(
        "state",
        help="manage where the state lives",
        description="Manage the state backend: where the state and its snapshots live "
        "(the local state directory or an S3 bucket, per bpsync.yaml's `state:`).",
    )
    stsub = st.add_subparsers(dest="state_command", metavar="SUBCOMMAND", parser_class=_Parser)
    stsub.required = True

    m = stsub.add_parser(
        "migrate",
        help="copy the state and its snapshots to another backend",
        description="Copy the state and every snapshot it references from the local state "
        "directory to the S3 bucket of bpsync.yaml (--to s3), or back (--to local), holding "
        "both locks. Refuses when the destination already has state, unless --force.",
        parents=[g.lock_timeout],
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
    _command(m, "state:migrate")

    r = stsub.add_parser(
        "rebind",
        help="bind the state to the configured BigPanda endpoint, after checking",
        description="State records the BigPanda endpoint (base URL and API version) it was "
        "applied to, and commands refuse to use it against another one. When the "
        "enrichments really moved (a new base URL, a region moved), rebind re-records the "
        "endpoint: it first reads every enrichment the state records from the configured "
        "endpoint, and refuses if any is missing there, unless --allow-missing.",
        parents=[g.lock_timeout],
    )
    r.add_argument(
        "--allow-missing",
        action="store_true",
        help="rebind even when some recorded enrichments are not found at the new endpoint",
    )
    _command(r, "state:rebind")


# Every command, in the order of `bpsync --help`, with the function that adds its parser.
_COMMANDS: dict[str, Callable[[_Sub, _Groups], None]] = {
    "validate": _validate_command,
    "fmt": _fmt_command,
    "plan": _plan_command,
    "apply": _apply_command,
    "show": _show_command,
    "import": _import_command,
    "force-unlock": _force_unlock_command,
    "init": _init_command,
    "completion": _completion_command,
    "ci": _ci_commands,
    "state": _state_commands,
}
# The top-level options before the command: those taking a value, and flags.
_TOP_VALUED = frozenset({"-C", "--env"})
_TOP_FLAGS = frozenset({"--no-color", "--debug"})


def command_of(argv: Sequence[str]) -> str | None:
    """The command `argv` runs, when that is certain without the full parser (the first word
    after top-level options written out in full); None otherwise (e.g. `--help`, a typo, an
    abbreviated option), and the whole parser is built."""
    words = iter(argv)
    for word in words:
        if word in _TOP_VALUED:
            next(words, None)
        elif word.startswith(("-C", "--env=")) or word in _TOP_FLAGS:
            continue
        else:
            return word if word in _COMMANDS else None
    return None


def parse(parser: argparse.ArgumentParser, argv: Sequence[str]) -> argparse.Namespace:
    """Parse `argv`; an unknown option fails naming the closest option of its command."""
    args, extra = parser.parse_known_args(list(argv))
    if extra:
        known = [o for p in _chain(parser, args) for o in _options_of(p)]
        unknown = extra[0]
        hint = did_you_mean(unknown.split("=", 1)[0], known) if unknown.startswith("-") else ""
        raise UsageError(
            f"{parser.prog}: unrecognized arguments: {' '.join(extra)}{hint}",
            hint=f"see `{parser.prog} --help`",
        )
    return args


def _chain(
    parser: argparse.ArgumentParser, args: argparse.Namespace
) -> list[argparse.ArgumentParser]:
    """The parsers `args` went through: the top one, then each chosen subcommand's."""
    chain = [parser]
    while True:
        subs = [a for a in chain[-1]._actions if isinstance(a, argparse._SubParsersAction)]
        name = getattr(args, subs[0].dest, None) if subs else None
        if name not in (subs[0].choices if subs else {}):
            return chain
        chain.append(subs[0].choices[name])


def _options_of(parser: argparse.ArgumentParser) -> list[str]:
    return [o for a in parser._actions for o in a.option_strings if o.startswith("--")]


def resolve(target: str) -> Command:
    """The command function named `module:function` inside bpsync.cli (imported now)."""
    import importlib

    module, _, name = target.partition(":")
    func: Command = getattr(importlib.import_module(f"bpsync.cli.{module}"), name)
    return func
