"""The bottom of the command line: what every command receives, and the option value types.

Everything above (the parser, the command modules, `run`) builds on this module; it imports
nothing from them. Kept light, so that `bpsync --help` loads no YAML, schema or HTTP code.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bpsync.console import Console

if TYPE_CHECKING:
    from bpsync.config import Config
    from bpsync.interrupt import Interrupts

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_CHANGES = 2  # only `plan --detailed-exitcode`: something would change
EXIT_INTERRUPTED = 130


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
    # The confirmation prompt's answer (tests: a function raising EOFError for Ctrl-D).
    read_line: Callable[[], str] = input
    # Ctrl-C handling for apply (tests inject one and call it as a signal would).
    interrupts: Interrupts | None = None
    _config: Config | None = field(default=None, init=False)

    @property
    def start_dir(self) -> Path:
        """Where bpsync runs "as if started" (`-C DIR`): the one place `-C` is resolved."""
        directory = getattr(self.args, "directory", None)
        return self.cwd / directory if directory else self.cwd

    def path(self, given: Path) -> Path:
        """A path from the command line: relative ones are relative to `start_dir`."""
        return given if given.is_absolute() else self.start_dir / given

    @property
    def config(self) -> Config:
        if self._config is None:
            from bpsync.config import load_config

            self._config = load_config(self.start_dir, self.env)
        return self._config


Command = Callable[[Context], int]


def parse_duration(text: str) -> float:
    """`90s`, `5m`, `1h`, or a bare number of seconds."""
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


def int_at_least(minimum: int) -> Callable[[str], int]:
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


positive_int = int_at_least(1)
non_negative_int = int_at_least(0)


def pr_number(text: str) -> int:
    """An argparse type: a pull request number, `7` or `#7`."""
    try:
        n = int(text.lstrip("#"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a pull request number: {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"not a pull request number: {text!r}")
    return n
