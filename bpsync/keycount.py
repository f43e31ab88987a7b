"""How many rows of a valid table hold one of a few keys, counted on the second core.

The byte-aligned row diff (`bytealign`) never parses the rows it skips, so whether an added
row's key is also held by an unchanged row takes one more read of the table: every key, the
largest single cost left in planning an edited table. That read needs nothing from the diff
until its end, so it runs in a child process (`python -m bpsync.keycount PATH COLUMNS`),
started with the diff: the child logs every key's hash (8 bytes a row), then reads the wanted
keys as JSON on stdin and prints how many rows hold one of them. Its hashes are its own
(each process salts `hash` differently): the keys themselves are sent.

The child first says whether any key's hash repeats in the table (it sorts its log): if none
does, no key is held twice and nothing needs to be sent (`held_once`). If the child cannot
be started or does not answer, the count is taken in process instead: slower, never
different.
"""

from __future__ import annotations

import contextlib
import json
import sys
from array import array
from collections.abc import Iterator, Sequence
from itertools import repeat
from operator import itemgetter
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

from bpsync.table import parse_line, split_blocks, table_bytes

if TYPE_CHECKING:
    import subprocess

Key = tuple[str, ...]


def key_hashes(path: Path, idx: tuple[int, ...]) -> Iterator[int]:
    """The hash of every data row's key (a bare str for one column, as `key_hash`), in file
    order, of a table already validated (every record on one line, CR only in CRLF)."""
    get = itemgetter(*idx)
    last = max(idx) + 1
    for offset, raw, _last in split_blocks(table_bytes(path)):
        text = raw.decode("utf-8")
        if "\r" in text:
            text = text.replace("\r\n", "\n")
        lines = text.split("\n")
        if lines[-1] == "":
            lines.pop()
        if offset == 0:
            lines = lines[1:]  # the header
        if '"' in text:
            cells = map(parse_line, lines)
        elif idx == (0,):
            cells = map(str.partition, lines, repeat(","))  # type: ignore[arg-type]
        else:
            cells = map(str.split, lines, repeat(","), repeat(last))
        yield from map(hash, map(get, cells))


def _wanted(keys: Sequence[Sequence[str]]) -> set[int]:
    return {hash(k[0] if len(k) == 1 else tuple(k)) for k in keys}


# Keys go to the child as lines, their cells joined by this (JSON only when a cell holds it
# or a newline): half a million keys cost ~1 s as JSON both ways, ~0.1 s as lines.
_CELL_SEP = "\x1f"


def _question(keys: Sequence[Key]) -> bytes:
    """The keys as the child reads them: `T` and one key a line, or `J` and JSON."""
    width = len(keys[0]) if keys else 0
    if width and all(len(k) == width for k in keys):
        rows = map(itemgetter(0), keys) if width == 1 else map(_CELL_SEP.join, keys)
        text = "\n".join(rows)
        if text.count("\n") == len(keys) - 1 and text.count(_CELL_SEP) == len(keys) * (width - 1):
            return b"T" + text.encode("utf-8")
    return b"J" + json.dumps([list(k) for k in keys]).encode("utf-8")


def _wanted_of(question: bytes, width: int) -> set[int]:
    """The hashes `_wanted` gives for the keys `_question` encoded."""
    if question[:1] != b"T":
        return _wanted(json.loads(question[1:]))
    lines = question[1:].decode("utf-8").split("\n")
    if width == 1:
        return set(map(hash, lines))
    return set(map(hash, map(tuple, map(str.split, lines, repeat(_CELL_SEP)))))


def count_keys(path: Path, idx: tuple[int, ...], keys: Sequence[Key]) -> int:
    """In process: how many rows of `path` hold one of `keys`."""
    wanted = _wanted(keys)
    return sum(map(wanted.__contains__, key_hashes(path, idx)))


class KeyCounter:
    """`count_keys` in a child process started now; `count` waits for its answer."""

    def __init__(self, path: Path, idx: tuple[int, ...], *, child: bool = True) -> None:
        self.path, self.idx = path, idx
        self._proc: subprocess.Popen[bytes] | None = None
        self._told = False  # the child's first line (whether a key repeats) was read
        if not child:
            return
        import subprocess  # only when rows were added: a plan of unchanged tables needs none

        cmd = [sys.executable, "-m", "bpsync.keycount", str(path), ",".join(map(str, idx))]
        with contextlib.suppress(OSError):
            self._proc = subprocess.Popen(
                cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
            )

    def count(self, keys: Sequence[Key]) -> int:
        """How many rows hold one of `keys`."""
        self._repeats()
        answer = self._ask(_question(keys))
        return count_keys(self.path, self.idx, keys) if answer is None else answer

    def held_once(self, keys: Sequence[Key]) -> bool:
        """Whether no row but one holds each of `keys` (distinct keys of rows of the table).

        The child says first whether any key's hash repeats in the table at all: usually
        none does, and then the keys need not be sent (half a million keys cost ~0.5 s)."""
        if self._repeats() is False:
            self.close()
            return True
        return self.count(keys) == len(keys)

    def _repeats(self) -> bool | None:
        """The child's first answer: whether a key hash repeats (None: no answer, or read)."""
        proc = self._proc
        if proc is None or proc.stdout is None or self._told:
            return None
        self._told = True
        try:
            line = proc.stdout.readline()
        except OSError:
            line = b""
        if line not in (b"0\n", b"1\n"):
            self.close()  # no child to ask: counted in process
            return None
        return line == b"1\n"

    def _ask(self, question: bytes) -> int | None:
        proc, self._proc = self._proc, None
        if proc is None:
            return None
        try:
            out, _ = proc.communicate(question)
            return int(out) if proc.returncode == 0 else None
        except (OSError, ValueError):
            return None
        finally:
            _stop(proc)

    def close(self) -> None:
        """Stop the child if it still runs (its answer was not wanted)."""
        if self._proc is not None:
            _stop(self._proc)
            self._proc = None

    def __enter__(self) -> KeyCounter:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait()
    for stream in (proc.stdin, proc.stdout):
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()


def main(argv: Sequence[str]) -> int:
    path, columns = Path(argv[0]), tuple(int(c) for c in argv[1].split(","))
    import numpy as np  # the log sorted while the diff goes on: the answer is a look-up

    log = np.sort(np.frombuffer(array("q", key_hashes(path, columns)), dtype=np.int64))
    sys.stdout.write("1\n" if bool((log[1:] == log[:-1]).any()) else "0\n")
    sys.stdout.flush()
    wanted = np.fromiter(_wanted_of(sys.stdin.buffer.read(), len(columns)), dtype=np.int64)
    rows = np.searchsorted(log, wanted, "right") - np.searchsorted(log, wanted, "left")
    sys.stdout.write(str(int(rows.sum())))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
