"""The command line: parses options, wires the core together, turns errors into exit codes.

Nothing here computes a plan or talks to BigPanda; it only calls the modules that do.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from bpsync import __version__
from bpsync.config import Config, load_config
from bpsync.console import Console, wants_color
from bpsync.errors import BpsyncError, InvalidInput, UsageError

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_CHANGES = 2
EXIT_USAGE = 64


class _Parser(argparse.ArgumentParser):
    """argparse exits 2 on usage errors; SPEC §2 reserves 2 for `plan --detailed-exitcode`."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message}", hint=f"see `{self.prog} --help`")


@dataclass
class Context:
    """What a command needs from the outside world, injected so tests need no patching."""

    args: argparse.Namespace
    console: Console
    env: Mapping[str, str]
    cwd: Path
    stdin_isatty: bool
    # Extra BigPandaClient keyword arguments (tests: transport, poll intervals, limiter).
    client_options: Mapping[str, Any] = field(default_factory=dict)
    _config: Config | None = field(default=None, init=False)

    @property
    def start_dir(self) -> Path:
        """Where bpsync runs "as if started" (-C DIR); relative paths are relative to it."""
        return self.cwd / self.args.directory if self.args.directory else self.cwd

    def path(self, given: Path) -> Path:
        return self.start_dir / given

    @property
    def config(self) -> Config:
        if self._config is None:
            self._config = load_config(self.start_dir, self.env)
        return self._config


Command = Callable[[Context], int]


def parse_duration(text: str) -> float:
    """`90s`, `5m`, `1h`, or a bare number of seconds (SPEC §2)."""
    units = {"s": 1, "m": 60, "h": 3600}
    t = text.strip().lower()
    scale = units.get(t[-1:])
    number = t[:-1] if scale else t
    try:
        value = float(number) * (scale or 1)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"invalid duration {text!r}: use a number with s, m or h (90s, 5m, 1h)"
        ) from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"invalid duration {text!r}: must not be negative")
    return value


def _int_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: a whole number not below `minimum`."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}: {text!r}")
        return value

    return parse


_positive_int = _int_at_least(1)
_non_negative_int = _int_at_least(0)


def build_parser() -> argparse.ArgumentParser:
    from bpsync import commands

    p = _Parser(prog="bpsync", description="Keep BigPanda mapping enrichment tables in git.")
    p.add_argument("--version", action="version", version=f"bpsync {__version__}")
    p.add_argument("-C", dest="directory", metavar="DIR", help="run as if started in DIR")
    p.add_argument("--no-color", action="store_true", help="never colour the output")
    p.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    v = sub.add_parser("validate", help="check manifests and tables offline")
    v.add_argument("--table", action="append", default=[], metavar="NAME")
    v.add_argument(
        "--format",
        choices=("text", "github"),
        default="text",
        help="github: one ::error annotation per problem on stdout",
    )
    v.set_defaults(func=commands.validate)

    f = sub.add_parser("fmt", help="rewrite tables in canonical form")
    f.add_argument("--check", action="store_true", help="only report files that would change")
    f.add_argument("--table", action="append", default=[], metavar="NAME")
    f.set_defaults(func=commands.fmt)

    pl = sub.add_parser("plan", help="show what apply would change, row by row")
    _plan_options(pl)
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
    pl.set_defaults(func=commands.plan)

    a = sub.add_parser("apply", help="make BigPanda match the manifests")
    a.add_argument("planfile", nargs="?", type=Path, metavar="PLANFILE")
    a.add_argument("--table", action="append", default=[], metavar="NAME")
    a.add_argument("--auto-approve", action="store_true", help="do not ask for `yes`")
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
        type=_positive_int,
        default=4,
        metavar="N",
        help="tables applied at once (default 4)",
    )
    a.add_argument(
        "--lock-timeout",
        type=parse_duration,
        default=0.0,
        metavar="DURATION",
        help="wait this long for the state lock (default 0s)",
    )
    a.add_argument(
        "--max-rows",
        type=_non_negative_int,
        default=20,
        metavar="N",
        help="rows shown per table in the plan (0 = all)",
    )
    a.set_defaults(func=commands.apply)

    s = sub.add_parser("show", help="render a saved plan")
    s.add_argument("planfile", type=Path, metavar="PLANFILE")
    s.add_argument("--format", choices=("text", "markdown", "json"), default="text")
    s.add_argument(
        "--max-rows",
        type=_non_negative_int,
        default=20,
        metavar="N",
        help="rows shown per table in text (0 = all)",
    )
    s.set_defaults(func=commands.show)

    i = sub.add_parser("import", help="adopt an existing enrichment into state")
    i.add_argument("name", metavar="NAME")
    i.add_argument("enrichment_id", metavar="ENRICHMENT_ID")
    i.add_argument("--lock-timeout", type=parse_duration, default=0.0, metavar="DURATION")
    i.set_defaults(func=commands.import_)

    u = sub.add_parser("force-unlock", help="clear a stale state lock")
    u.add_argument("lock_id", metavar="LOCK_ID")
    u.set_defaults(func=commands.force_unlock)
    commands.add_extra_commands(sub)
    return p


def _plan_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--table",
        action="append",
        default=[],
        metavar="NAME",
        help="limit to this table (repeatable)",
    )
    p.add_argument("--format", choices=("text", "markdown", "json"), default="text")
    p.add_argument(
        "--max-rows",
        type=_non_negative_int,
        default=20,
        metavar="N",
        help="rows shown per table in text (0 = all)",
    )
    p.add_argument(
        "--lock-timeout",
        type=parse_duration,
        default=0.0,
        metavar="DURATION",
        help="wait this long for the state lock (default 0s)",
    )


def run(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    console: Console | None = None,
    stdin_isatty: bool | None = None,
    client_options: Mapping[str, Any] | None = None,
) -> int:
    """Run one command; returns the exit code. Every error becomes a code here, and only here."""
    env = dict(os.environ) if env is None else env
    console = console or Console()
    debug = "--debug" in argv
    try:
        args = build_parser().parse_args(list(argv))
        no_color = bool(args.no_color)
        console.color_out = wants_color(console.out, env, no_color)
        console.color_err = wants_color(console.err, env, no_color)
        ctx = Context(
            args,
            console,
            env,
            cwd or Path.cwd(),
            sys.stdin.isatty() if stdin_isatty is None else stdin_isatty,
            dict(client_options or {}),
        )
        code: int = args.func(ctx)
        return code
    except InvalidInput as e:
        console.problems(e.problems)
        console.error(e.render())
        return e.exit_code
    except BpsyncError as e:
        if debug:
            console.note(traceback.format_exc())
        console.error(e.render())
        return e.exit_code
    except KeyboardInterrupt:
        console.error("interrupted")
        return 130
    except Exception as e:  # a bug: say so plainly, traceback only with --debug
        if debug:
            console.note(traceback.format_exc())
        console.error(
            f"unexpected {type(e).__name__}: {e}"
            + ("" if debug else " (run with --debug for the traceback)")
        )
        return EXIT_ERROR
    except SystemExit as e:  # --help and --version
        return int(e.code or 0) if isinstance(e.code, int) else 0


def main() -> None:
    sys.exit(run(sys.argv[1:]))
