"""Keyed row diff of a table against its applied snapshot, streaming.

Both sides are compared in canonical form, one line per row, so a row is unchanged exactly
when its canonical line appears on the other side (keys are unique on both sides).
1. The new table is scanned (and validated) block by block; its line hashes go into a dict
   (a 64-bit hash per row, ~60 bytes, not the row itself).
2. The snapshot is read once; each of its lines found in the dict is popped: unchanged.
   Lines not found are kept: removed or changed (usually ~1%).
3. If anything is left in the dict, the new table is read once more (as plain lines when it
   is canonical, which is cheap) for just those lines: added or changed. Matching the two
   leftovers by key separates change from add/remove.
Re-ordering or re-quoting never shows as a change, and memory holds hashes, not rows.

Line identity uses Python's salted 64-bit SipHash. A false "unchanged" needs two different
lines with equal hashes: about 1e-6 for two 5-million-row tables. This affects only what
the plan displays: `no-op` is decided by SHA-256 and apply always uploads the exact table.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from itertools import compress, repeat
from operator import is_, itemgetter
from pathlib import Path
from typing import BinaryIO

from bpsync.plan import ADD, CHANGE, REMOVE, RowChange
from bpsync.table import (
    ProblemSink,
    TableInfo,
    TableLayout,
    TableScan,
    key_hash,
    parse_line,
    prefetched,
    split_blocks,
)

SnapshotOpener = Callable[[], BinaryIO]


@dataclass(frozen=True)
class RowDiff:
    info: TableInfo  # the new table's scan
    changes: tuple[RowChange, ...]  # sorted by key
    added: int
    changed: int
    removed: int
    unchanged: int
    old_rows: int
    old_columns: tuple[str, ...]


def _iter_snapshot(open_snapshot: SnapshotOpener) -> Iterator[tuple[int, list[str], bool]]:
    """(number of the first line, lines, whether any is quoted) per block of the snapshot."""
    line = 0
    for _offset, raw, _last in split_blocks(prefetched(open_snapshot)):
        lines = raw.decode("utf-8").split("\n")
        if lines[-1] == "":
            lines.pop()
        yield line + 1, lines, b'"' in raw
        line += len(lines)


def diff_table(
    path: Path, layout: TableLayout, sink: ProblemSink, open_snapshot: SnapshotOpener
) -> RowDiff:
    # Phase 1: the snapshot's line hashes.
    old: dict[int, None] = {}
    old_header = ""
    for first, lines, _ in _iter_snapshot(open_snapshot):
        if first == 1:
            old_header, lines = lines[0], lines[1:]
        old.update(zip(map(hash, lines), repeat(None)))
    old_rows = len(old)
    old_columns = tuple(parse_line(old_header)) if old_header else ()

    # Phase 2: validate the new table; a line found in the snapshot is unchanged (popped).
    fresh: list[tuple[int, str]] = []

    def match(first: int, lines: list[str]) -> None:
        popped = map(old.pop, map(hash, lines), repeat(_MISSING))
        for i in compress(range(len(lines)), map(is_, popped, repeat(_MISSING))):
            fresh.append((first + i, lines[i]))

    scan = TableScan(path, layout, sink, match)
    scan.track_keys = False  # duplicate keys are found below, without a dict of all keys
    info = scan.run()
    if not info.ok:
        return RowDiff(info, (), 0, 0, 0, 0, old_rows, old_columns)

    # Phase 3: the snapshot again, for the rows not found (removed or changed) and for keys
    # of new rows that an unchanged row also holds (a duplicate key).
    key_titles = [layout.titles[k] for k in layout.key_indexes]
    new_columns = _header_of(path, layout)
    new_key_idx = tuple(new_columns.index(t) for t in key_titles)
    new_key = itemgetter(*new_key_idx)
    fresh_keys = {new_key(parse_line(line)) for _, line in fresh}
    gone: list[tuple[int, str]] = []
    if old or fresh_keys:
        old_key_idx = _key_indexes(old_columns, key_titles)
        for first, lines, quoted in _iter_snapshot(open_snapshot):
            if first == 1:
                first, lines = 2, lines[1:]
            at = range(len(lines))
            if old:
                hits = compress(at, map(old.__contains__, map(hash, lines)))
                gone.extend((first + i, lines[i]) for i in hits)
            if fresh_keys:
                keys = _keys_of(lines, old_key_idx, quoted)
                for i in compress(at, map(fresh_keys.__contains__, keys)):
                    line = lines[i]
                    if hash(line) not in old:  # an unchanged row holds a key a new row holds
                        scan.dup_suspects.add(key_hash(_key(line, old_key_idx)))
    if scan.dup_suspects or len(fresh_keys) != len(fresh):
        scan.dup_suspects.update(key_hash(k if isinstance(k, tuple) else (k,)) for k in fresh_keys)
        scan.report_duplicates()
        if sink.errors:
            return RowDiff(replace(info, ok=False), (), 0, 0, 0, 0, old_rows, old_columns)
    return _classify(info, new_key_idx, old_columns, old_rows, gone, fresh, key_titles)


def _keys_of(lines: list[str], idx: tuple[int, ...], quoted: bool) -> Iterator[object]:
    """Keys of canonical lines, as itemgetter gives them (a str for one column)."""
    get = itemgetter(*idx)
    if quoted:
        return map(get, map(parse_line, lines))
    if idx == (0,):
        return map(get, map(str.partition, lines, repeat(",")))
    return map(get, map(str.split, lines, repeat(","), repeat(max(idx) + 1)))


_MISSING = object()


def _key(line: str, idx: tuple[int, ...]) -> tuple[str, ...]:
    cells = parse_line(line)
    return tuple(cells[k] for k in idx)


def _classify(
    info: TableInfo,
    new_key_idx: tuple[int, ...],
    old_columns: tuple[str, ...],
    old_rows: int,
    gone: list[tuple[int, str]],
    fresh: list[tuple[int, str]],
    key_titles: list[str],
) -> RowDiff:
    """Pair removed-or-changed old rows with added-or-changed new rows by key."""
    old_key_idx = _key_indexes(old_columns, key_titles)
    leftover: dict[tuple[str, ...], tuple[int, tuple[str, ...]]] = {}
    for lineno, line in gone:
        cells = tuple(parse_line(line))
        leftover[tuple(cells[k] for k in old_key_idx)] = (lineno, cells)
    changes: list[RowChange] = []
    changed = 0
    for lineno, line in fresh:
        cells = tuple(parse_line(line))
        key = tuple(cells[k] for k in new_key_idx)
        old = leftover.pop(key, None)
        if old is None:
            changes.append(RowChange(ADD, key, None, cells, lineno))
        else:
            changed += 1
            changes.append(RowChange(CHANGE, key, old[1], cells, lineno, old[0]))
    for key, (old_line, cells) in leftover.items():
        changes.append(RowChange(REMOVE, key, cells, None, old_line, old_line))
    changes.sort(key=lambda c: c.key)
    added = len(fresh) - changed
    return RowDiff(
        info,
        tuple(changes),
        added,
        changed,
        len(leftover),
        info.rows - added - changed,
        old_rows,
        old_columns,
    )


def _header_of(path: Path, layout: TableLayout) -> tuple[str, ...]:
    with path.open("r", encoding="utf-8", newline="") as f:
        first = f.readline().rstrip("\r\n")
    return tuple(parse_line(first)) if first else layout.titles


def _key_indexes(old_columns: tuple[str, ...], key_titles: list[str]) -> tuple[int, ...]:
    """Where the key columns sit in the snapshot (its columns may differ after a replace)."""
    if all(t in old_columns for t in key_titles):
        return tuple(old_columns.index(t) for t in key_titles)
    # The key itself changed: no old row can match a new key; use the old first columns.
    return tuple(range(min(len(key_titles), len(old_columns))))
