"""The command line: parses options, runs one command, turns errors into exit codes.

    context.py  Context, exit codes, option value types (the bottom; imports nothing above)
    parser.py   the whole argparse parser; registers every command as `module:function`
    core.py     validate, fmt, plan, apply, show, import, force-unlock
    ci.py       `bpsync ci ...` (GitHub review helpers)
    state.py    `bpsync state ...`

Nothing here computes a plan or talks to BigPanda; it only calls the modules that do, and no
module outside this package imports from it.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bpsync.cli.context import EXIT_ERROR, EXIT_INTERRUPTED, Context
from bpsync.cli.parser import build_parser, command_of, parse, resolve
from bpsync.console import Console, wants_color
from bpsync.errors import BpsyncError, InvalidInput

if TYPE_CHECKING:
    from bpsync.interrupt import Interrupts

__all__ = ["build_parser", "main", "run"]


def run(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    console: Console | None = None,
    stdin_isatty: bool | None = None,
    client_options: Mapping[str, Any] | None = None,
    read_line: Callable[[], str] | None = None,
    interrupts: Interrupts | None = None,
) -> int:
    """Run one command; returns the exit code. Every error becomes a code here, and only here."""
    env = dict(os.environ) if env is None else env
    console = console or Console()
    debug = "--debug" in argv
    try:
        args = parse(build_parser(command_of(argv)), argv)
        ctx = _context(args, console, env, cwd, stdin_isatty, client_options)
        if read_line is not None:
            ctx.read_line = read_line
        ctx.interrupts = interrupts
        code: int = resolve(args.command_target)(ctx)
        return code
    except InvalidInput as e:
        console.problems(e.problems)
        console.error(e.render())
        return e.exit_code
    except BpsyncError as e:
        if debug:
            console.note(_traceback())
        console.error(e.render())
        return e.exit_code
    except KeyboardInterrupt:
        console.error("interrupted")
        return EXIT_INTERRUPTED
    except Exception as e:  # a bug: say so plainly, traceback only with --debug
        if debug:
            console.note(_traceback())
        console.error(
            f"unexpected {type(e).__name__}: {e}"
            + ("" if debug else " (run with --debug for the traceback)")
        )
        return EXIT_ERROR
    except SystemExit as e:  # --help and --version
        return int(e.code or 0) if isinstance(e.code, int) else 0


def _context(
    args: argparse.Namespace,
    console: Console,
    env: Mapping[str, str],
    cwd: Path | None,
    stdin_isatty: bool | None,
    client_options: Mapping[str, Any] | None,
) -> Context:
    no_color = bool(args.no_color)
    console.color_out = wants_color(console.out, env, no_color)
    console.color_err = wants_color(console.err, env, no_color)
    return Context(
        args,
        console,
        env,
        cwd or Path.cwd(),
        sys.stdin.isatty() if stdin_isatty is None else stdin_isatty,
        dict(client_options or {}),
    )


def _traceback() -> str:
    import traceback  # only with --debug: it costs start-up time otherwise

    return traceback.format_exc()


def main() -> None:
    code = run(sys.argv[1:])
    # The process ends here. At exit the interpreter's garbage collections would walk every
    # object the start-up made (~10 ms, a tenth of planning a 100 MB unchanged table); frozen,
    # they are left to the OS, like the rest of the memory. Nothing bpsync holds waits on a
    # collection: files are closed, locks released and output flushed by now.
    gc.freeze()
    sys.exit(code)
