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
from collections.abc import Iterator, Sequence
from pathlib import Path

from bpsync.bigpanda.facts import MAX_VALUE_BYTES, MIN_DATA_ROWS, TRUNCATED_FRAME_ERROR

MAX_REASONS = 20  # a failed job lists this many problems, then counts the rest

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
    """Decoded lines, split on "\\n" only, each still ending with it (so csv sees line breaks)."""
    with path.open("rb") as fh:
        for number, raw in enumerate(fh, start=1):
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


def _scan(path: Path, titles: Sequence[str], reasons: _Reasons) -> set[int]:
    """Check header and rows; return the row hashes seen more than once (to verify exactly)."""
    reader = csv.reader(_lines(path, reasons), strict=True)
    header = _next_row(reader, reasons)
    if header is None:
        reasons.add("the table is empty: it needs a header row and at least one data row")
        return set()
    _check_header(header, titles, reasons)
    seen: set[int] = set()
    repeated: set[int] = set()
    rows = 0
    while (row := _next_row(reader, reasons)) is not None:
        rows += 1
        _check_row(row, len(header), reader.line_num, reasons)
        digest = hash(tuple(row))
        if digest in seen:
            repeated.add(digest)
        else:
            seen.add(digest)
    if rows < MIN_DATA_ROWS:
        reasons.add("the table has a header but no data rows; at least one row is required")
    return repeated


def _next_row(reader: Iterator[list[str]], reasons: _Reasons) -> list[str] | None:
    while True:
        try:
            return next(reader)
        except StopIteration:
            return None
        except csv.Error as exc:
            line = getattr(reader, "line_num", "?")
            reasons.add(f"line {line}: malformed CSV ({exc})")


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
        if hash(key) not in candidates:
            continue
        if key in first_seen:
            reasons.add(f"line {reader.line_num}: duplicate of the row on line {first_seen[key]}")
        else:
            first_seen[key] = reader.line_num
