"""Keyed row diff of a table against its applied snapshot, streaming.

Both sides are compared in canonical form, one line per row, so a row is unchanged exactly
when its canonical line appears on the other side (keys are unique on both sides).
Usually a table is edited in place: rows keep their order. Then the new table's lines are
aligned with the snapshot's while both are streamed (`_Aligner`): equal runs are skipped at C
speed and only the differing lines are kept. When the rows were re-ordered, alignment gives
up and every line is hashed instead:
1. The snapshot's line hashes are kept in order (a 64-bit hash per row, not the row itself),
   and in a set, or for a large snapshot sorted (numpy: a set of millions is probed at
   random, a cache miss or two per line).
2. The new table is scanned (and validated) block by block; each of its lines found among
   them is taken: unchanged. Lines not found are added or changed (usually ~1%) and kept;
   with sorted arrays each block's hashes are sorted, then looked up all at once.
3. The snapshot is read once more for the lines no new line took: removed or changed.
Either way the leftovers of both sides are paired by key: change, add or remove.
Re-ordering or re-quoting never shows as a change, and memory holds hashes, not rows.

Line identity uses Python's salted 64-bit SipHash. A false "unchanged" needs two different
lines with equal hashes: about 1e-6 for two 5-million-row tables. This affects only what
the plan displays: `no-op` is decided by SHA-256 and apply always uploads the exact table.
"""

from __future__ import annotations

from array import array
from bisect import bisect_left
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from itertools import compress, count, repeat
from operator import eq, is_, itemgetter, ne, not_, sub
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple, TypeVar, cast

from bpsync.bytealign import ByteAligner, NotAligned, nearest_common
from bpsync.gcpause import cycle_collector_paused
from bpsync.keycount import KeyCounter
from bpsync.plan import ADD, CHANGE, REMOVE, ChangeColumns
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
    changes: ChangeColumns  # sorted by key
    added: int
    changed: int
    removed: int
    unchanged: int
    old_rows: int
    old_columns: tuple[str, ...]


def _iter_snapshot(open_snapshot: SnapshotOpener) -> Generator[tuple[int, list[str], bool]]:
    """(number of the first line, lines, whether any is quoted) per block of the snapshot."""
    line = 0
    for _offset, raw, _last in split_blocks(prefetched(open_snapshot)):
        lines = raw.decode("utf-8").split("\n")
        if lines[-1] == "":
            lines.pop()
        yield line + 1, lines, b'"' in raw
        line += len(lines)


@cycle_collector_paused()
def diff_table(
    path: Path,
    layout: TableLayout,
    sink: ProblemSink,
    open_snapshot: SnapshotOpener,
    *,
    align_limit: int = 1_000_000,
    trusted: bool = False,
    old_keys_unique: bool = True,
    file_digest: Callable[[], str] | None = None,
) -> RowDiff:
    """The row diff: by aligning the rows in order when the table kept its row order (the
    usual edit), else by hashing every line (see the module docstring). Alignment keeps at
    most `align_limit` unmatched lines (~150 bytes each) before it hands over to hashing.

    `trusted`: the snapshot holds rows validated under these columns (an applied snapshot,
    not rows read back from BigPanda), so lines byte-equal to its lines need no checks
    again (`bytealign`). `old_keys_unique`: its keys are unique under the layout's key
    columns (False when the key columns changed since): otherwise every key is checked.
    `file_digest`: the file's SHA-256, taken on another core (see `TableScan`)."""
    if not old_keys_unique:
        # Duplicates among unchanged rows too. Its own sink: when the table passes, the diff
        # below reports the same warnings again.
        keys_sink = ProblemSink(sink.path, sink.cap)
        check = TableScan(path, layout, keys_sink).run()
        if not check.ok:
            _merge_into(sink, keys_sink)
            return RowDiff(check, NO_CHANGES, 0, 0, 0, 0, 0, ())
    if trusted:
        trial = ProblemSink(sink.path, sink.cap)
        try:
            d = _byte_aligned_diff(path, layout, trial, open_snapshot, align_limit, file_digest)
        except NotAligned as e:
            # The lines read were canonical (their bytes are their canonical text): where the
            # bytes did not align, neither would the lines; a line aligner's trial would only
            # repeat it. A large table this densely changed is hashed too: sorted arrays cost
            # less per row than aligning costs per difference (50% touched: ~1 s per 1M rows).
            big = path.stat().st_size >= _HASH_DENSE_BYTES
            if e.too_many or (e.canonical and (e.share > _Aligner.EARLY_SHARE or big)):
                return _hashed_diff(path, layout, sink, open_snapshot, file_digest)
        else:
            _merge_into(sink, trial)
            return d
    trial = ProblemSink(sink.path, sink.cap)
    try:
        d = _aligned_diff(path, layout, trial, open_snapshot, align_limit, file_digest)
    except _TooManyUnmatched:
        return _hashed_diff(path, layout, sink, open_snapshot, file_digest)
    _merge_into(sink, trial)
    return d


# See diff_table: a canonical table of this size that did not align byte by byte is hashed.
_HASH_DENSE_BYTES = 64 << 20


def _merge_into(sink: ProblemSink, trial: ProblemSink) -> None:
    sink.problems.extend(trial.problems)
    sink.errors += trial.errors
    sink.warnings += trial.warnings
    sink.suppressed_errors += trial.suppressed_errors
    sink.suppressed_warnings += trial.suppressed_warnings


class _TooManyUnmatched(Exception):
    """The rows were re-ordered (or mostly changed): alignment gives up for hashing."""


class _Aligner:
    """Walks the new table's lines along the snapshot's, in order.

    Runs of equal lines are skipped with list-slice comparisons (C speed, exponentially
    growing), so an edited-in-place table costs little more than reading both files. At a
    difference it looks ahead on both sides for the nearest common line (a few lines, then
    wider windows); what it passes over is kept as unmatched and resolved exactly at the end
    (equal text is a moved, unchanged row; the rest pairs by key). Too much unmatched text
    means the rows were re-ordered: it gives up, and the hashing diff takes over.

    The look-ahead never stops at the end of a block of the new table (the rest of the
    block is carried over to the next one): a window cut short there used to skip a whole
    window of snapshot lines for a few new ones, and once the two sides were more than a
    window apart no window could bring them together again.
    """

    WINDOW = 64
    # Wider windows tried in turn when no line of the last one matched.
    WIDER = (512, 4096)
    # Re-ordered rows show early: once this many new lines are read, if more than this
    # share of them is unmatched, alignment gives up then (not at the unmatched limit,
    # a full scan and snapshot read later). Even 50% of rows touched leaves ~60% matched.
    EARLY_LINES = 20_000
    EARLY_SHARE = 0.9

    def __init__(self, old_blocks: Iterator[tuple[int, list[str], bool]], limit: int) -> None:
        self.blocks = old_blocks
        self.limit = limit
        self.buf: list[str] = []
        self.pos = 0
        self.buf_first = 2  # line number of buf[0]
        self.header = ""
        self.started = False
        self.exhausted = False
        self.old_rows = 0
        self.old_un: list[tuple[int, str]] = []
        self.new_un: list[tuple[int, str]] = []
        # New lines not aligned yet when their block ended: (line number of the first, lines).
        self.carry: tuple[int, list[str]] | None = None
        self.fed = 0  # new lines received
        self.early_check = True

    def _fill(self, ahead: int = 2 * WINDOW) -> None:
        """Keep at least `ahead` snapshot lines after `pos` (fewer only at its end)."""
        while not self.exhausted and len(self.buf) - self.pos < ahead:
            block = next(self.blocks, None)
            if block is None:
                self.exhausted = True
                break
            lines = block[1]
            if not self.started:
                self.started = True
                self.header, lines = (lines[0], lines[1:]) if lines else ("", [])
            self.old_rows += len(lines)
            self.buf_first += self.pos
            self.buf = self.buf[self.pos :] + lines
            self.pos = 0

    def feed(self, first: int, lines: list[str]) -> None:
        self.fed += len(lines)
        if self.carry is not None:
            carried_first, carried = self.carry
            self.carry = None
            if carried_first + len(carried) == first:
                first, lines = carried_first, carried + lines
            else:  # a gap (an invalid row): the carried lines cannot be continued
                self._feed(carried_first, carried, final=True)
        self._feed(first, lines, final=False)
        if self.early_check and self.fed >= self.EARLY_LINES:
            self.early_check = False
            if len(self.new_un) > self.EARLY_SHARE * self.fed:
                raise _TooManyUnmatched

    def _feed(self, first: int, lines: list[str], *, final: bool) -> None:
        j, n = 0, len(lines)
        ahead = 2 * self.WINDOW
        while j < n:
            if len(self.buf) - self.pos < ahead and not self.exhausted:
                self._fill()
            if self.pos >= len(self.buf):
                self._unmatched_new(first, lines, j, n)
                return
            k = self._equal_run(lines, j, n)
            j += k
            self.pos += k
            if j < n and self.pos < len(self.buf):
                at = self._resync(first, lines, j, n, final)
                if at < 0:  # carried over: lines[j:] go on with the next block
                    self.carry = (first + j, lines[j:])
                    return
                j = at

    def _equal_run(self, lines: list[str], j: int, n: int) -> int:
        """How many lines from lines[j] equal the snapshot's from buf[pos].

        Equal slices of growing size are skipped with one list comparison each; in the first
        unequal slice, a C-level scan finds the differing line.
        """
        buf, pos = self.buf, self.pos
        most = min(n - j, len(buf) - pos)
        k, size = 0, 64
        while k < most:
            step = min(size, most - k)
            mine, theirs = lines[j + k : j + k + step], buf[pos + k : pos + k + step]
            if mine == theirs:
                k += step
                size = min(size * 2, 8192)
                continue
            return k + next(compress(count(), map(ne, mine, theirs)))
        return k

    def _resync(self, first: int, lines: list[str], j: int, n: int, final: bool) -> int:
        """Skip to the next line both sides share; keep what was skipped as unmatched.

        Returns where to go on in `lines`, or -1 to carry lines[j:] over to the next block
        (the look-ahead needs lines past this block's end)."""
        dj, di = self._one_line_edit(lines, j, n)
        if dj < 0:
            found = self._window_match(lines, j, n, final)
            if found is None:
                return -1
            dj, di = found
        if dj:
            self.new_un.extend(
                zip(range(first + j, first + j + dj), lines[j : j + dj], strict=True)
            )
        if di:
            start = self.buf_first + self.pos
            old = self.buf[self.pos : self.pos + di]
            self.old_un.extend(zip(range(start, start + di), old, strict=True))
            self.pos += di
        if len(self.old_un) + len(self.new_un) > self.limit:
            raise _TooManyUnmatched
        return j + dj

    def _one_line_edit(self, lines: list[str], j: int, n: int) -> tuple[int, int]:
        """(new lines, old lines) to skip for the usual one-row edits; (-1, -1) otherwise."""
        buf, pos = self.buf, self.pos
        new_next = j + 1 < n
        old_next = pos + 1 < len(buf)
        if new_next and old_next and lines[j + 1] == buf[pos + 1]:
            return 1, 1  # a changed row
        if new_next and lines[j + 1] == buf[pos]:
            return 1, 0  # an added row
        if old_next and lines[j] == buf[pos + 1]:
            return 0, 1  # a removed row
        return -1, -1

    def _window_match(
        self, lines: list[str], j: int, n: int, final: bool
    ) -> tuple[int, int] | None:
        """(new lines, old lines) to skip to the nearest line both sides hold (fewest lines
        skipped in all), in windows growing from WINDOW; None when the new side's window is
        cut short by the end of the block (carry on in the next). With no common line in the
        widest windows, as many lines of each side are skipped: a run of changed rows."""
        for size in (self.WINDOW, *self.WIDER):
            self._fill(size)
            window = self.buf[self.pos : self.pos + size]
            new_window = lines[j : min(n, j + size)]
            best = nearest_common(window, new_window)
            if best is not None:
                return best
            if len(new_window) < size and not final:
                return None
        skip = min(len(new_window), len(window))
        return skip, skip

    def _unmatched_new(self, first: int, lines: list[str], j: int, n: int) -> None:
        self.new_un.extend(zip(range(first + j, first + n), lines[j:n], strict=True))
        if len(self.old_un) + len(self.new_un) > self.limit:
            raise _TooManyUnmatched

    def finish(self) -> None:
        """Whatever the snapshot holds beyond the last aligned line is unmatched."""
        if self.carry is not None:
            carried_first, carried = self.carry
            self.carry = None
            self._feed(carried_first, carried, final=True)
        while True:
            self._fill()
            rest = self.buf[self.pos :]
            start = self.buf_first + self.pos
            self.old_un.extend(zip(range(start, start + len(rest)), rest, strict=True))
            self.pos = len(self.buf)
            if self.exhausted:
                return
            if len(self.old_un) + len(self.new_un) > self.limit:
                raise _TooManyUnmatched


def _aligned_diff(
    path: Path,
    layout: TableLayout,
    sink: ProblemSink,
    open_snapshot: SnapshotOpener,
    limit: int,
    file_digest: Callable[[], str] | None = None,
) -> RowDiff:
    blocks = _iter_snapshot(open_snapshot)
    aligner = _Aligner(blocks, limit)
    # No dict of every key: aligned rows equal distinct snapshot rows, whose keys are unique,
    # so a duplicate key involves an unmatched row; those are checked below against a log
    # of every key's hash (8 bytes a row).
    scan = TableScan(path, layout, sink, keys="log", file_digest=file_digest)
    try:
        for first, lines in scan.row_blocks():
            aligner.feed(first, lines)
        info = scan.result
        if not info.ok:
            return RowDiff(info, NO_CHANGES, 0, 0, 0, 0, 0, ())
        aligner.finish()
    finally:
        blocks.close()  # stops the snapshot's reader thread when we stop early
    old_columns = tuple(parse_line(aligner.header)) if aligner.header else ()
    d = _resolve(info, layout, old_columns, aligner.old_rows, aligner.old_un, aligner.new_un)
    assert scan.key_log is not None
    if _has_duplicate_keys(scan.key_log, d):
        scan.dup_suspects.update(map(key_hash, _keys_where(d, ne, REMOVE)))
        scan.report_duplicates()
        if sink.errors:
            return RowDiff(replace(info, ok=False), NO_CHANGES, 0, 0, 0, 0, d.old_rows, old_columns)
    return d


def _byte_aligned_diff(
    path: Path,
    layout: TableLayout,
    sink: ProblemSink,
    open_snapshot: SnapshotOpener,
    limit: int,
    file_digest: Callable[[], str] | None,
) -> RowDiff:
    chunks = prefetched(open_snapshot)
    aligner = ByteAligner(chunks, limit)
    old_columns = tuple(parse_line(aligner.header)) if aligner.header else ()
    key_titles = [layout.titles[k] for k in layout.key_indexes]
    if not all(t in old_columns for t in key_titles):
        chunks.close()
        raise NotAligned  # a header without the keys: the general way reports it
    scan: TableScan

    def split(raw: bytes) -> list[tuple[bool, bytes, int]]:
        return aligner.split(raw, scan.header_line)

    scan = TableScan(path, layout, sink, keys="off", known=split, file_digest=file_digest)
    new_un: list[tuple[int, str]] = []
    with _key_counter(path, tuple(old_columns.index(t) for t in key_titles)) as counter:
        try:
            try:
                for first, lines in scan.row_blocks():
                    new_un.extend(zip(range(first, first + len(lines)), lines, strict=True))
            except NotAligned as e:
                e.canonical = e.canonical and scan.canonical  # the header's form too
                raise
            info = scan.result
            if not info.ok:
                return RowDiff(info, NO_CHANGES, 0, 0, 0, 0, 0, ())
            old_rows = aligner.finish()
        finally:
            chunks.close()  # stops the snapshot's reader thread when we stop early
        d = _resolve(info, layout, old_columns, old_rows, aligner.old_un, new_un)
        repeat_keys = _keys_repeat(d, counter)
    if repeat_keys:
        scan.dup_suspects.update(map(key_hash, _keys_where(d, ne, REMOVE)))
        scan.report_duplicates()
        if sink.errors:
            return RowDiff(replace(info, ok=False), NO_CHANGES, 0, 0, 0, 0, d.old_rows, old_columns)
    return d


# Below this size the keys are counted in process: a child's start costs more than it saves.
_CHILD_COUNT_BYTES = 16 << 20


def _key_counter(path: Path, idx: tuple[int, ...]) -> KeyCounter:
    """A counter of the new table's keys (at `idx`: the file's header is the snapshot's, or
    no row aligns), on the second core for a large table."""
    return KeyCounter(path, idx, child=path.stat().st_size >= _CHILD_COUNT_BYTES)


def _resolve(
    info: TableInfo,
    layout: TableLayout,
    old_columns: tuple[str, ...],
    old_rows: int,
    old_un: list[tuple[int, str]],
    new_un: list[tuple[int, str]],
) -> RowDiff:
    """The diff from both sides' unmatched lines: equal text on both sides is a row that
    only moved (unchanged); the rest pairs by key."""
    moved = {line: lineno for lineno, line in old_un}
    fresh = [(lineno, line) for lineno, line in new_un if moved.pop(line, None) is None]
    gone = sorted((lineno, line) for line, lineno in moved.items())
    old, new = (Lines([n for n, _ in x], [t for _, t in x]) for x in (gone, fresh))
    key_titles = [layout.titles[k] for k in layout.key_indexes]
    new_key_idx = tuple(info.columns.index(t) for t in key_titles)
    return _classify(info, new_key_idx, old_columns, old_rows, old, new, key_titles)


def _keys_repeat(d: RowDiff, counter: KeyCounter) -> bool:
    """Whether an added or changed row may share its key with another row of the new table
    (the byte-aligned diff keeps no key of the rows it skipped). As `_has_duplicate_keys`,
    but the rows holding an added key are counted in one more read of the new table (see
    `keycount`), only when rows were added."""
    keys = _keys_where(d, ne, REMOVE)
    if len(set(keys)) != len(keys):
        return True
    added = _keys_where(d, eq, ADD)
    return bool(added) and not counter.held_once(added)


def _keys_where(d: RowDiff, test: Callable[[str, str], bool], op: str) -> list[tuple[str, ...]]:
    """The keys of the changes whose op passes `test(op_of_change, op)`."""
    return list(compress(d.changes.keys, map(test, d.changes.ops, repeat(op))))


def _has_duplicate_keys(key_log: array[int], d: RowDiff) -> bool:
    """Whether an added or changed row may share its key with another row of the new table.

    A changed row's key belonged to exactly one snapshot row, which is gone, so no aligned
    row can hold it; an added row's key might still be held by an unchanged row. So count
    how often the added keys' hashes occur among all keys of the new table. A hash collision
    only sends us to the exact check.
    """
    keys = _keys_where(d, ne, REMOVE)
    if len(set(keys)) != len(keys):
        return True
    added = set(map(key_hash, _keys_where(d, eq, ADD)))
    return bool(added) and sum(map(added.__contains__, key_log)) != len(added)


# From this many snapshot rows on, the hashed diff matches sorted arrays (numpy) instead of a
# set: a set of millions of hashes is probed at random (a cache miss or two per line, ~1 µs
# each at 5 million rows); below it numpy's import costs more than it saves.
_SORTED_MATCH_ROWS = 1 << 19


def _hashed_diff(
    path: Path,
    layout: TableLayout,
    sink: ProblemSink,
    open_snapshot: SnapshotOpener,
    file_digest: Callable[[], str] | None = None,
) -> RowDiff:
    # Phase 1: the snapshot's line hashes, in file order.
    order = array("q")
    old_header = ""
    for first, lines, _ in _iter_snapshot(open_snapshot):
        if first == 1:
            old_header, lines = lines[0], lines[1:]
        order.extend(map(hash, lines))
    old_columns = tuple(parse_line(old_header)) if old_header else ()
    matcher: _SetMatcher | _SortedMatcher
    matcher = _SortedMatcher(order) if len(order) >= _SORTED_MATCH_ROWS else _SetMatcher(order)
    old_rows = matcher.old_rows

    # Phase 2: validate the new table; a line found in the snapshot is unchanged (taken).
    # Duplicate keys are found below, without a dict of all keys.
    scan = TableScan(path, layout, sink, keys="off", file_digest=file_digest)
    key_titles = [layout.titles[k] for k in layout.key_indexes]
    counter: KeyCounter | None = None
    try:
        for first, lines in scan.row_blocks():
            if counter is None:  # the header is read: the keys' columns are known
                counter = _key_counter(path, tuple(scan.columns.index(t) for t in key_titles))
            matcher.feed(first, lines)
        info = scan.result
        if not info.ok:
            return RowDiff(info, NO_CHANGES, 0, 0, 0, 0, old_rows, old_columns)
        fresh = matcher.fresh
        # Phase 3: the snapshot again, for the rows not found (removed or changed): where
        # they are is known from the hashes in order; only their lines are decoded.
        gone = _lines_at(open_snapshot, matcher.gone_lines())
        # A new row's key held by another row of the table (an unchanged one, or another
        # new one): the rows holding these keys are counted (on the second core).
        new_key_idx = tuple(info.columns.index(t) for t in key_titles)
        fresh_keys = _line_keys(fresh.texts, new_key_idx)
        repeats = len(set(fresh_keys)) != len(fresh_keys) or bool(
            counter is not None and fresh_keys and not counter.held_once(fresh_keys)
        )
    finally:
        if counter is not None:
            counter.close()
    if repeats:
        scan.dup_suspects.update(map(key_hash, fresh_keys))
        scan.report_duplicates()
        if sink.errors:
            return RowDiff(replace(info, ok=False), NO_CHANGES, 0, 0, 0, 0, old_rows, old_columns)
    return _classify(info, new_key_idx, old_columns, old_rows, gone, fresh, key_titles, fresh_keys)


class _SetMatcher:
    """The snapshot's line hashes in a set: each new line found is taken out of it."""

    def __init__(self, order: array[int]) -> None:
        self.order = order
        self.old = set(order)
        self.old_rows = len(self.old)
        self.fresh = Lines([], [])  # the new lines not found (added or changed)

    def feed(self, first: int, lines: list[str]) -> None:
        flags = _not_found(self.old, list(map(hash, lines)))
        if flags is not None:
            self.fresh.numbers.extend(compress(range(first, first + len(lines)), flags))
            self.fresh.texts.extend(compress(lines, flags))

    def gone_lines(self) -> Iterator[int]:
        """Numbers of the snapshot's lines no new line took (removed or changed)."""
        # The set keeps its full size (and its removed entries) after the removals: a copy
        # of what is left is small and in cache, so the snapshot's probes stay cheap.
        left = set(self.old)
        del self.old
        return compress(count(2), map(left.__contains__, self.order))


def _not_found(old: set[int], hashes: list[int]) -> list[bool] | None:
    """Take the lines found out of `old` (unchanged); which were not found (None: all were).

    A line found once is taken: the same line again (in this block or a later one) is not
    found, so a repeated row is new and its duplicate key is reported."""
    block = set(hashes)
    if len(block) != len(hashes):  # a line (or a hash) repeats within the block
        flags = []
        for h in hashes:
            found = h in old
            old.discard(h)
            flags.append(not found)
        return flags
    missing = block - old  # usually empty, or a few lines
    old -= block
    return list(map(missing.__contains__, hashes)) if missing else None


def _unique(np: Any, values: Any) -> tuple[Any, Any]:
    """`numpy.unique(values, return_inverse=True)` by one default (introsort) argsort: ~30%
    faster for 5 million hashes than numpy's own, which sorts more than it needs to."""
    perm = np.argsort(values)
    ordered = values[perm]
    first = np.empty(len(ordered), dtype=bool)
    first[:1] = True
    np.not_equal(ordered[1:], ordered[:-1], out=first[1:])
    inverse = np.empty(len(values), dtype=np.intp)
    inverse[perm] = np.cumsum(first) - 1
    return ordered[first], inverse


class _SortedMatcher:
    """The snapshot's distinct line hashes sorted, each block of the new table matched
    against them as it is scanned, its hashes sorted first: sorting keeps every look-up
    near the last one, where a set's probes land anywhere in hundreds of megabytes. The
    lines not found are kept as they pass (the file is not read again)."""

    def __init__(self, order: array[int]) -> None:
        import numpy as np  # ~80 ms to import: only for a table this large

        self.np = np
        self.uniq, self.inv = _unique(np, np.frombuffer(order, dtype=np.int64))
        self.old_rows = len(self.uniq)
        self.taken = np.zeros(len(self.uniq), dtype=bool)
        self.fresh = Lines([], [])

    def feed(self, first: int, lines: list[str]) -> None:
        """Take the block's lines found among the snapshot's, keep the others.

        A line is taken by its first occurrence only: the same line again (in this block or
        a later one) is not found, so a repeated row is new and its duplicate key is reported
        (as `_not_found` does)."""
        np = self.np
        new = np.fromiter(map(hash, lines), dtype=np.int64, count=len(lines))
        by_hash = np.argsort(new, kind="stable")  # equal lines stay in file order
        ordered = new[by_hash]
        at = np.searchsorted(self.uniq, ordered)
        at[at == len(self.uniq)] = 0
        take = np.ones(len(ordered), dtype=bool)
        take[1:] = ordered[1:] != ordered[:-1]  # the first of equal lines in the block
        if len(self.uniq):
            take &= self.uniq[at] == ordered
            take[take] = ~self.taken[at[take]]  # not taken by an earlier block's line
        else:
            take[:] = False
        self.taken[at[take]] = True
        found = np.zeros(len(new), dtype=bool)
        found[by_hash[take]] = True
        if not found.all():
            keep = (~found).tolist()
            self.fresh.numbers.extend(compress(range(first, first + len(lines)), keep))
            self.fresh.texts.extend(compress(lines, keep))

    def gone_lines(self) -> Iterator[int]:
        return iter((self.np.flatnonzero(~self.taken[self.inv]) + 2).tolist())


class Lines(NamedTuple):
    """Some lines of a file, by column: their numbers, ascending, and their texts."""

    numbers: list[int]
    texts: list[str]


def _lines_at(opener: SnapshotOpener, numbers: Iterator[int]) -> Lines:
    """A file's lines at these ascending line numbers (the snapshot's)."""
    wanted = list(numbers)
    texts: list[str] = []
    if not wanted:
        return Lines(wanted, texts)
    at = 0  # index in `wanted` of the next line to take
    first = 1  # number of the first line of the block
    for _offset, raw, last in split_blocks(prefetched(opener)):
        end = first + raw.count(b"\n") + (1 if last and not raw.endswith(b"\n") else 0)
        start = at
        at = bisect_left(wanted, end, at)
        if at > start:
            lines = raw.decode("utf-8").split("\n")  # a whole block: faster than its lines
            texts.extend(map(lines.__getitem__, map(sub, wanted[start:at], repeat(first))))
        if at == len(wanted):
            break
        first = end
    return Lines(wanted, texts)


def _classify(
    info: TableInfo,
    new_key_idx: tuple[int, ...],
    old_columns: tuple[str, ...],
    old_rows: int,
    gone: Lines,
    fresh: Lines,
    key_titles: list[str],
    fresh_keys: list[tuple[str, ...]] | None = None,
) -> RowDiff:
    """Pair removed-or-changed old rows with added-or-changed new rows by key.

    Rows are compared cell by title, not as lines: with the columns in a new order every
    line differs, yet a row whose cells are equal title by title did not change.

    Column-wise, with no Python code per row unless the columns moved (half of a table
    changed is a million rows): only keys are split off the lines, keys are popped from a
    dict by `map`, and the changes kept as `ChangeColumns` (lines, not cells).
    `fresh_keys`: the keys of `fresh`, when the caller has them.
    """
    old_lines, old_text = gone
    old_keys = _old_keys(old_text, old_columns, key_titles)
    # Key to index in `gone`. A key held by several old rows (rows read back from BigPanda,
    # or a key changed since the snapshot): the last row may pair, the others are removed.
    leftover = dict(zip(old_keys, range(len(old_text)), strict=True))
    doubled = _shadowed(leftover, len(old_text))
    new_lines, new_text = fresh
    new_keys = _line_keys(new_text, new_key_idx) if fresh_keys is None else fresh_keys
    partner = list(map(leftover.pop, new_keys, repeat(None)))  # index in `gone`, or None
    is_add = list(map(is_, partner, repeat(None)))
    at_new = list(compress(range(len(new_text)), map(not_, is_add)))  # paired fresh rows
    at_old = cast(list[int], _at(partner, at_new))
    same_cells = _cell_comparer(old_columns, info.columns)
    if same_cells is not _never_same:  # columns re-ordered: equal by title is unchanged
        was, now = _cells_of(_at(old_text, at_old)), _cells_of(_at(new_text, at_new))
        differ = list(map(not_, map(same_cells, was, now)))
        at_new, at_old = list(compress(at_new, differ)), list(compress(at_old, differ))
    removed = [*doubled, *leftover.values()]
    added = is_add.count(True)
    n_changed, n_removed = len(at_new), len(removed)
    ops = [ADD] * added + [CHANGE] * n_changed + [REMOVE] * n_removed
    keys = [*compress(new_keys, is_add), *_at(new_keys, at_new), *_at(old_keys, removed)]
    before = [*repeat(None, added), *_at(old_text, at_old), *_at(old_text, removed)]
    after = [*compress(new_text, is_add), *_at(new_text, at_new), *repeat(None, n_removed)]
    lines = [*compress(new_lines, is_add), *_at(new_lines, at_new), *_at(old_lines, removed)]
    old_at = [*repeat(None, added), *_at(old_lines, at_old), *_at(old_lines, removed)]
    order = _key_order(ops, keys, lines)
    changes = ChangeColumns(
        _at(ops, order),
        _at(keys, order),
        _at(before, order),
        _at(after, order),
        _at(lines, order),
        _at(old_at, order),
        _cells_of,
    )
    return RowDiff(
        info,
        changes,
        added,
        n_changed,
        n_removed,
        info.rows - added - n_changed,
        old_rows,
        old_columns,
    )


def _key_order(ops: list[str], keys: list[tuple[str, ...]], lines: list[int]) -> list[int]:
    """Positions of the changes in `change_order`: by key (a single column's as strings,
    faster to compare than tuples); op and line only break ties, which a valid table's
    diff never has (each key is taken once)."""
    if keys and len(keys[0]) == 1 and len(set(map(len, keys))) == 1:
        flat: list[str] | list[tuple[str, ...]] = list(map(itemgetter(0), keys))
    else:
        flat = keys
    order = sorted(range(len(keys)), key=flat.__getitem__)
    ranked = _at(flat, order)
    if any(map(eq, ranked[:-1], ranked[1:])):
        rank = {REMOVE: 0, CHANGE: 1, ADD: 2}
        order.sort(key=lambda i: (keys[i], rank[ops[i]], lines[i]))
    return order


def _line_keys(lines: list[str], idx: tuple[int, ...]) -> list[tuple[str, ...]]:
    """Each canonical line's key cells, as a tuple; only the cells up to the last key
    column are split off (a line holding a quote is parsed whole)."""
    if not idx:
        return [()] * len(lines)
    if any(map(str.__contains__, lines, repeat('"'))):
        return _keys_of(_cells_of(lines), idx)
    if idx == (0,):
        return list(zip(map(itemgetter(0), map(str.partition, lines, repeat(","))), strict=True))
    cells = list(map(str.split, lines, repeat(","), repeat(max(idx) + 1)))
    return _keys_of(cast(list[tuple[str, ...]], cells), idx)


def _at(xs: Sequence[_T], indexes: Iterable[int]) -> list[_T]:
    """The items of `xs` at `indexes`."""
    return list(map(xs.__getitem__, indexes))


_T = TypeVar("_T")


def _cells_of(lines: list[str]) -> list[tuple[str, ...]]:
    """Each canonical line's cells (`parse_line`), in bulk: lines holding no quote are their
    cells joined by "," (the usual case: one split each, at C speed)."""
    if any(map(str.__contains__, lines, repeat('"'))):
        return [tuple(parse_line(line)) for line in lines]
    return list(map(tuple, map(str.split, lines, repeat(","))))


def _keys_of(cells: list[tuple[str, ...]], idx: tuple[int, ...]) -> list[tuple[str, ...]]:
    """Each row's key cells, as a tuple (also for one key column)."""
    if not idx:
        return [()] * len(cells)
    if len(idx) == 1:
        return list(zip(map(itemgetter(idx[0]), cells)))
    return list(map(itemgetter(*idx), cells))


def _cell_comparer(
    old_columns: tuple[str, ...], new_columns: tuple[str, ...]
) -> Callable[[tuple[str, ...], tuple[str, ...]], bool]:
    """Whether an old row's cells equal a new row's, title by title."""
    if sorted(old_columns) != sorted(new_columns) or old_columns == new_columns:
        return _never_same  # equal lines were matched already; other titles differ
    order = [old_columns.index(t) for t in new_columns]
    return lambda old, new: len(old) == len(order) and tuple(old[i] for i in order) == new


def _never_same(old: tuple[str, ...], new: tuple[str, ...]) -> bool:
    del old, new
    return False


def _old_keys(
    lines: list[str], old_columns: tuple[str, ...], key_titles: list[str]
) -> list[tuple[str, ...]]:
    """The snapshot lines' keys under the new key columns (its columns may differ after a
    replace). A key column the snapshot lacks is empty in every old row's key."""
    if all(t in old_columns for t in key_titles):
        return _line_keys(lines, tuple(old_columns.index(t) for t in key_titles))
    cells = _cells_of(lines)
    return [tuple(row[old_columns.index(t)] if t in old_columns else "" for t in key_titles)
            for row in cells]  # fmt: skip


def _shadowed(leftover: dict[tuple[str, ...], int], rows: int) -> list[int]:
    """The rows whose key a later row of the same key took in `leftover` (none, usually)."""
    if len(leftover) == rows:
        return []
    last = set(leftover.values())
    return [i for i in range(rows) if i not in last]


# The changes of a diff that found none, or stopped at the table's problems.
NO_CHANGES = ChangeColumns([], [], [], [], [], [], _cells_of)
