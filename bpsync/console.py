"""Where output goes and whether it is coloured.

Renderings asked for with --format go alone to stdout; notes, warnings and progress go to
stderr (SPEC §2). Colour only on a TTY, never with NO_COLOR or --no-color.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TextIO

from bpsync.errors import Problem

_CODES = {"red": "31", "green": "32", "yellow": "33", "cyan": "36", "bold": "1", "dim": "2"}


def wants_color(stream: TextIO, env: Mapping[str, str], no_color_flag: bool) -> bool:
    if no_color_flag or "NO_COLOR" in env:
        return False
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


@dataclass
class Console:
    out: TextIO = field(default_factory=lambda: sys.stdout)
    err: TextIO = field(default_factory=lambda: sys.stderr)
    color_out: bool = False
    color_err: bool = False

    def paint(self, text: str, style: str, *, stream: str = "out") -> str:
        on = self.color_out if stream == "out" else self.color_err
        if not on or not style:
            return text
        codes = ";".join(_CODES[s] for s in style.split())
        return f"\033[{codes}m{text}\033[0m"

    def print(self, text: str = "") -> None:
        self.out.write(text + "\n")

    def note(self, text: str) -> None:
        self.err.write(text + "\n")
        self.err.flush()

    def warn(self, text: str) -> None:
        self.note(self.paint("Warning:", "yellow bold", stream="err") + " " + text)

    def error(self, text: str) -> None:
        self.note(self.paint("Error:", "red bold", stream="err") + " " + text)

    def problems(self, problems: Iterable[Problem], fmt: str = "text") -> None:
        for p in sorted_problems(problems):
            if fmt == "github":
                self.out.write(github_annotation(p) + "\n")
            elif p.severity == "warning":
                self.warn(str(p))
            else:
                self.error(str(p))


def sorted_problems(problems: Iterable[Problem]) -> list[Problem]:
    """Problems in the order they are shown (and listed by `validate --format json`)."""
    return sorted(problems, key=_problem_order)


def _problem_order(p: Problem) -> tuple[str, bool, int, int]:
    # Per file, located problems by line; unlocated ones (summaries like "… and N more") last.
    return (p.path, p.line is None, p.line or 0, p.col or 0)


def github_annotation(p: Problem) -> str:
    """A GitHub Actions workflow command that annotates the file and line."""
    level = "warning" if p.severity == "warning" else "error"
    props = [f"file={_escape_prop(p.path)}"]
    if p.line is not None:
        props.append(f"line={p.line}")
    if p.col is not None:
        props.append(f"col={p.col}")
    message = p.message + (f" — {p.hint}" if p.hint else "")
    return f"::{level} {','.join(props)}::{_escape_data(message)}"


def _escape_data(s: str) -> str:
    return s.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _escape_prop(s: str) -> str:
    return _escape_data(s).replace(":", "%3A").replace(",", "%2C")


class LiveLines:
    """One live status line per running job on a terminal, redrawn in place.

    Notes printed meanwhile go above the block. Only for TTYs: logs get plain lines.
    """

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.lines: dict[str, str] = {}
        self.drawn = 0
        self._lock = threading.Lock()

    def _clear(self) -> None:
        if self.drawn:
            self.stream.write(f"\033[{self.drawn}F\033[J")  # up N lines, clear to the end
            self.drawn = 0

    def _draw(self) -> None:
        for line in self.lines.values():
            self.stream.write(line + "\n")
        self.drawn = len(self.lines)
        self.stream.flush()

    def set(self, key: str, line: str | None) -> None:
        with self._lock:
            self._clear()
            if line is None:
                self.lines.pop(key, None)
            else:
                self.lines[key] = line
            self._draw()

    def note(self, text: str) -> None:
        with self._lock:
            self._clear()
            self.stream.write(text + "\n")
            self._draw()


class Progress:
    """Progress of one long operation: a live line on a terminal (`live`), else a plain note
    at most every `every` seconds (CI logs); nothing during the first `after` seconds, so
    quick operations stay quiet."""

    def __init__(
        self,
        key: str,
        note: Callable[[str], None],
        live: LiveLines | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        after: float = 3.0,
        every: float = 15.0,
    ) -> None:
        self.key, self._note, self._live, self._clock = key, note, live, clock
        self._start = clock()
        self._after, self._every = after, every
        self._last: float | None = None
        self.shown = False

    def update(self, line: str) -> None:
        now = self._clock()
        if now - self._start < self._after:
            return
        if self._live is not None:
            self._live.set(self.key, line)
            self.shown = True
        elif self._last is None or now - self._last >= self._every:
            self._note(line)
            self._last = now
            self.shown = True

    def done(self) -> None:
        if self._live is not None and self.shown:
            self._live.set(self.key, None)


def read_progress(
    table: str, note: Callable[[str], None], live: LiveLines | None = None, **kw: Any
) -> Callable[[int, int | None], None]:
    """A table read's progress callback: "TABLE: read N of T rows (P%)"."""
    progress = Progress(table, note, live, **kw)

    def on_rows(rows: int, total: int | None) -> None:
        if total:
            text = f"{table}: read {rows:,} of {total:,} rows ({min(rows / total, 1):.0%})"
        else:
            text = f"{table}: read {rows:,} rows"
        progress.update(text)
        if total is not None and rows >= total:
            progress.done()

    return on_rows
