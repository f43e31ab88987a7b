"""The emulator's own reading of BigPanda's CSV upload rules (api doc §5.2, §12).

Deliberately independent of bpsync's validator: the emulator plays BigPanda, so a bug in
bpsync's checks cannot hide behind the same bug here. It streams the file, so a 500 MB upload
costs memory only for one hash per row (the duplicate check).

BigPanda appears to frame the body on "\\n" with Akka `Framing.delimiter` (§12), so lines are
split on "\\n" only; a "\\r" anywhere is reported, and a body whose last line lacks "\\n" fails
with exactly `TRUNCATED_FRAME_ERROR`, the way the real job does.
"""

from __future__ import annotations

import csv
import itertools
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path

from bpsync.bigpanda.facts import MAX_VALUE_BYTES, MIN_DATA_ROWS, TRUNCATED_FRAME_ERROR

MAX_REASONS = 20  # a failed job lists this many problems, then counts the rest
_BLOCK = 1 << 20  # bytes read at a time

csv.field_size_limit(1 << 30)  # the 32K rule is ours to report, not the csv module's


class _Reasons:
    """Collects failure reasons, keeping the first MAX_REASONS and counting the rest."""

    def __init__(self) -> None:
        self.items: list[str] = []
        self.extra = 0

    def add(self, text: str) -> None:
        if len(self.items) < MAX_REASONS:
            self.items.append(text)
        else:
            self.extra += 1

    def result(self) -> list[str]:
        if self.extra:
            return [*self.items, f"... and {self.extra} more problem(s)"]
        return list(self.items)


def check_table(path: Path, titles: Sequence[str]) -> list[str]:
    """Every rule the table at `path` breaks for a schema with these field `titles`."""
    size = path.stat().st_size
    if size == 0:
        return ["the table is empty: it needs a header row and at least one data row"]
    with path.open("rb") as fh:
        fh.seek(-1, 2)
        if fh.read(1) != b"\n":
            return [TRUNCATED_FRAME_ERROR]
    reasons = _Reasons()
    duplicates = _scan(path, titles, reasons)
    if duplicates:
        _report_duplicates(path, duplicates, reasons)
    return reasons.result()


def read_rows(path: Path) -> list[dict[str, str]]:
    """The stored table as dicts keyed by header title (for tests and inspection)."""
    with path.open(encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh))


def _lines(path: Path, reasons: _Reasons) -> Iterator[str]:
    """Decoded lines, split on "\n" only, each still ending with it (so csv sees line breaks)."""
    for number, raw in _blocks(path):
        yield from _decoded(_lf_lines(raw), number, reasons)


def _decoded(lines: list[bytes], number: int, reasons: _Reasons) -> Iterator[str]:
    for number, raw in enumerate(lines, start=number):  # noqa: B020 (numbered from `number`)
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            reasons.add(f"line {number}: not valid UTF-8 (byte {exc.start} of the line)")
            line = raw.decode("utf-8", errors="replace")
        if "\r" in line:
            reasons.add(
                f"line {number}: carriage return (\\r) found; use LF line endings, "
                "line breaks are not supported"
            )
            line = line.replace("\r", "")
        yield line


def _blocks(path: Path) -> Iterator[tuple[int, bytes]]:
    """(number of the first line, its bytes: whole lines) per ~1 MiB of the file; a block
    never ends inside a quoted value (its count of quotes is even)."""
    number, rest, held = 1, b"", b""
    with path.open("rb") as fh:
        while chunk := fh.read(_BLOCK):
            chunk = rest + chunk
            cut = chunk.rfind(b"\n") + 1
            held, rest = held + chunk[:cut], chunk[cut:]
            if held and (b'"' not in held or held.count(b'"') % 2 == 0):
                yield number, held
                number += held.count(b"\n")
                held = b""
    if held or rest:
        yield number, held + rest


def _lf_lines(data: bytes) -> list[bytes]:
    """Lines cut at "\n" only, each keeping it (the last may lack it)."""
    lines = [x + b"\n" for x in data.split(b"\n")]
    last = lines.pop()[:-1]
    if last:
        lines.append(last)
    return lines


def _scan(path: Path, titles: Sequence[str], reasons: _Reasons) -> set[int]:
    """Check header and rows; return the row hashes seen more than once (to verify exactly).

    A plain block of lines (no quote, CR or long line, every line the header's width) is
    checked at once, as a service's bulk path would; others go through csv.reader line by
    line. Either way a row is hashed as the tuple of its cells."""
    blocks = _blocks(path)
    first = next(blocks, None)
    header = None
    if first is not None:
        head, _, body = first[1].partition(b"\n")
        first = (2, body)
        header = _next_row(csv.reader(_decoded([head + b"\n"], 1, reasons), strict=True), reasons)
    if header is None or first is None:
        reasons.add("the table is empty: it needs a header row and at least one data row")
        return set()
    _check_header(header, titles, reasons)
    seen: set[int] = set()
    repeated: set[int] = set()
    rows = 0
    for number, raw in itertools.chain([first], blocks):
        hashes = _plain_rows(raw, len(header))
        if hashes is None:
            hashes = _slow_rows(_lf_lines(raw), number, len(header), reasons)
        rows += len(hashes)
        block = set(hashes)
        repeated |= block & seen
        if len(block) != len(hashes):
            repeated |= {h for h, n in Counter(hashes).items() if n > 1}
        seen |= block
    if rows < MIN_DATA_ROWS:
        reasons.add("the table has a header but no data rows; at least one row is required")
    return repeated


def _plain_rows(raw: bytes, width: int) -> list[int] | None:
    """The row hashes of a plain block, or None when it needs the line-by-line checks."""
    if not raw.endswith(b"\n") or b'"' in raw or b"\r" in raw:
        return None
    try:
        rows = raw.decode("utf-8").split("\n")
    except UnicodeDecodeError:
        return None
    rows.pop()  # after the last "\n"
    if not rows or not all(rows) or max(map(len, rows)) * 4 > MAX_VALUE_BYTES:
        return None
    if set(map(str.count, rows, itertools.repeat(","))) != {width - 1}:
        return None
    return list(map(hash, rows))  # a plain line is its cells joined by ","


def _row_hash(row: list[str]) -> int:
    return hash(",".join(row))


def _slow_rows(lines: list[bytes], number: int, width: int, reasons: _Reasons) -> list[int]:
    reader = csv.reader(_decoded(lines, number, reasons), strict=True)
    hashes = []
    while (row := _next_row(reader, reasons, number - 1)) is not None:
        _check_row(row, width, number - 1 + reader.line_num, reasons)
        hashes.append(_row_hash(row))
    return hashes


def _next_row(reader: Iterator[list[str]], reasons: _Reasons, before: int = 0) -> list[str] | None:
    """The next row; `before`: lines of the file before the reader's first."""
    while True:
        try:
            return next(reader)
        except StopIteration:
            return None
        except csv.Error as exc:
            line = getattr(reader, "line_num", None)
            reasons.add(f"line {'?' if line is None else before + line}: malformed CSV ({exc})")


def _check_header(header: list[str], titles: Sequence[str], reasons: _Reasons) -> None:
    seen: set[str] = set()
    for title in header:
        if title in seen:
            reasons.add(f"header: column {title!r} appears more than once")
        seen.add(title)
    missing = [t for t in titles if t not in seen]
    extra = [t for t in header if t not in set(titles)]
    if missing:
        reasons.add(f"header: missing column(s) {', '.join(map(repr, missing))}")
    if extra:
        reasons.add(f"header: column(s) not in the schema {', '.join(map(repr, extra))}")


def _check_row(row: list[str], width: int, line: int, reasons: _Reasons) -> None:
    if not row:
        reasons.add(f"line {line}: empty line")
        return
    if len(row) != width:
        reasons.add(f"line {line}: {len(row)} values, but the header has {width} columns")
    for value in row:
        if "\n" in value:
            reasons.add(f"line {line}: a value contains a line break, which is not supported")
        # UTF-8 needs at most 4 bytes a character: only long values can be too long.
        if len(value) * 4 > MAX_VALUE_BYTES and len(value.encode()) > MAX_VALUE_BYTES:
            reasons.add(f"line {line}: a value is longer than {MAX_VALUE_BYTES} bytes")


def _report_duplicates(path: Path, candidates: set[int], reasons: _Reasons) -> None:
    """Second pass over rows whose hash repeated: report only true duplicates."""
    first_seen: dict[tuple[str, ...], int] = {}
    quiet = _Reasons()  # the first pass already reported everything else
    reader = csv.reader(_lines(path, quiet), strict=True)
    _next_row(reader, quiet)
    while (row := _next_row(reader, quiet)) is not None:
        key = tuple(row)
        if _row_hash(row) not in candidates:
            continue
        if key in first_seen:
            reasons.add(f"line {reader.line_num}: duplicate of the row on line {first_seen[key]}")
        else:
            first_seen[key] = reader.line_num
