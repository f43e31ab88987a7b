"""The answer before the rows: what a table's change amounts to, gathered in one pass.

A reviewer of a large change must learn first which columns changed in how many rows, and
the most frequent transitions (`support_group: 49,567 rows — data-eng → platform ×8,120`).
The renderers get that, and a sample of each kind of row change, from one pass over the row
changes they would read anyway; nothing re-reads a table.

Memory stays bounded whatever the number of rows: per column an exact count of changed rows
and a space-saving summary (Metwally, Agrawal, El Abbadi 2005) of at most `2 * TOP_KEPT`
transitions; per op the first `sample` row changes by key.
"""

from __future__ import annotations

import heapq
import operator
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from itertools import chain, compress, count, filterfalse, islice, repeat
from typing import cast

from bpsync.plan import ADD, CHANGE, REMOVE, Cells, ChangeColumns, RowChange, TablePlan
from bpsync.render import all_columns

OPS = (ADD, CHANGE, REMOVE)
# Transitions each column's counter keeps after an eviction; twice this many between them.
TOP_KEPT = 64
# How many transitions of a column the renderings show, and how many columns in full.
TOP_SHOWN = 3
# A transition's values are compared on this many characters plus a digest of the rest, so
# a counter never holds more than ~2 * TOP_KEPT * 2 * CLIP characters per column.
CLIP = 200
NO_COLUMN = None


@dataclass(frozen=True)
class Transition:
    """`old → new` in `rows` rows; when not `exact`, `rows` is an upper bound off by at most
    `error` (the counter evicted rarer transitions to stay bounded)."""

    old: str | None  # None: the row has no such column on that side
    new: str | None
    rows: int
    error: int

    @property
    def exact(self) -> bool:
        return self.error == 0


@dataclass(frozen=True)
class ColumnChange:
    column: str
    rows: int  # exact: changes that alter this column
    top: tuple[Transition, ...]  # most frequent first; only those known to be frequent
    more: bool  # other transitions exist beyond `top`
    example: Transition  # the first change seen, for a column whose changes all differ


@dataclass(frozen=True)
class Digest:
    """One table's change at a glance, and the row changes shown as its sample."""

    columns: tuple[ColumnChange, ...]  # most rows first
    samples: dict[str, list[RowChange]] = field(default_factory=dict)  # op -> first by key

    def shown(self, op: str) -> int:
        return len(self.samples.get(op, ()))


Pair = tuple[str | None, str | None]


class _TopK:
    """Space-saving counts with batched eviction: amortised O(1) per value, bounded size.

    Counts never under-estimate; a transition first seen after an eviction starts at the
    largest evicted count (its possible earlier occurrences), recorded as its error.
    """

    def __init__(self, kept: int = TOP_KEPT) -> None:
        self.kept = kept
        self.counts: dict[Pair, int] = {}
        self.errors: dict[Pair, int] = {}
        self.floor = 0
        self.evicted = False

    def add(self, key: Pair) -> None:
        self.add_counts({key: 1})

    def add_counts(self, counts: Mapping[Pair, int]) -> None:
        """`add` each key its count times, evicting (if due) once at the end: the same
        counts as one `add` at a time while nothing is evicted, upper bounds all the same
        after (an item first seen here counts from the floor, as `add` counts it). In C but
        for the keys already held: a batch of distinct transitions costs no Python per key."""
        have, floor = self.counts, self.floor
        held = list(filter(have.__contains__, counts))
        new = list(filterfalse(have.__contains__, counts))  # in the batch's order: ties rank so
        for key in held:
            have[key] += counts[key]
        have.update(zip(new, [n + floor for n in map(counts.__getitem__, new)], strict=True))
        self.errors.update(dict.fromkeys(new, floor))
        if len(have) >= 2 * self.kept:
            self._evict()

    def _evict(self) -> None:
        ranked = sorted(self.counts.items(), key=operator.itemgetter(1), reverse=True)  # stable
        self.floor = max(self.floor, ranked[self.kept][1])
        self.counts = dict(ranked[: self.kept])
        self.errors = {key: self.errors[key] for key in self.counts}
        self.evicted = True

    def top(self, n: int) -> list[tuple[Pair, tuple[int, int]]]:
        ranked = sorted(self.counts.items(), key=lambda kv: (-kv[1], _sort_key(kv[0])))[:n]
        return [(key, (rows, self.errors[key])) for key, rows in ranked]


def _sort_key(key: tuple[str | None, str | None]) -> tuple[str, str]:
    return (key[0] or "", key[1] or "")


def _clip(value: str | None) -> str | None:
    """A bounded stand-in for a value: distinct values stay distinct (digest of the rest)."""
    if value is None or len(value) <= CLIP:
        return value
    return value[:CLIP] + "…" + format(zlib.crc32(value.encode()), "08x")


def _shown_value(value: str | None) -> str | None:
    """Drop the digest `_clip` appended: renderings show the clipped value with its `…`."""
    if value is None or len(value) <= CLIP:
        return value
    return value[: CLIP + 1]


# Within one op, key then line orders row changes as `change_order` does (op is fixed).
_ORDER = operator.attrgetter("key", "line")
_OP, _BEFORE, _AFTER = (operator.attrgetter(f) for f in ("op", "before", "after"))
# Row changes counted at a time by `DigestBuilder.feed`.
_BATCH = 8192


Column = Callable[[int], list[str | None]]


def _cell_column(cells: list[Cells | None]) -> Column:
    """The cells at an index of each row's cells."""
    return lambda at: list(map(operator.itemgetter(at), cast(list[Cells], cells)))


def _line_column(changes: ChangeColumns, lines: list[str], width: int) -> Column:
    """The cells at an index of each line: split all at once when no line is quoted and each
    has `width` cells (one `split` for the batch, each column a slice), else line by line."""
    text = ",".join(lines)
    if '"' not in text and set(map(str.count, lines, repeat(","))) == {width - 1}:
        flat: list[str | None] = list(text.split(","))
        return lambda at: flat[at::width]
    return _cell_column(changes.cells(list(lines)))


def _where(ops: list[str], op: str) -> Iterator[int]:
    """Positions of the changes of one op."""
    return compress(count(), map(operator.eq, ops, repeat(op)))


def _clipped(values: Iterable[str | None], strings: bool) -> list[str | None]:
    """`_clip` of each value (one pass in C to learn that none needs it, as a rule)."""
    out = list(values)
    if strings and max(map(len, cast(list[str], out)), default=0) > CLIP:
        return list(map(_clip, out))
    return out


class _Sampler:
    """The first `n` row changes of one op by key, kept as the `n` smallest of what was
    added so far (heapq, in C): memory for `n` rows, work per batch, not per row."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.rows: list[RowChange] = []

    def add(self, rows: Iterable[RowChange]) -> None:
        self.rows = heapq.nsmallest(self.n, chain(self.rows, rows), key=_ORDER)

    def first(self) -> list[RowChange]:
        return self.rows


class DigestBuilder:
    """Fed every row change of one table once (in any order); `result()` gives the Digest."""

    def __init__(self, t: TablePlan, sample: int = 0) -> None:
        self.t = t
        self.samplers = {op: _Sampler(sample) for op in OPS} if sample > 0 else {}
        self.need_cells = t.rows_changed > 0
        # Each column as (title, index in before, index in after), key columns left out.
        old_at = {c: i for i, c in enumerate(t.old_columns)}
        new_at = {c: i for i, c in enumerate(t.columns)}
        self.slots = [
            (c, old_at.get(c), new_at.get(c)) for c in all_columns(t) if c not in t.key_columns
        ]
        self.rows = [0] * len(self.slots)
        self.tops = [_TopK() for _ in self.slots]
        self.examples: list[tuple[str | None, str | None] | None] = [None] * len(self.slots)

    def add(self, rc: RowChange) -> None:
        self.add_batch([rc])

    def add_batch(self, batch: list[RowChange]) -> None:
        """Count a batch of row changes column by column: a pass in C per column, and
        Python code per distinct transition, not per row."""
        ops = list(map(_OP, batch))
        for op, sampler in self.samplers.items():
            sampler.add(compress(batch, map(operator.eq, ops, repeat(op))))
        if CHANGE not in ops:
            return
        changes = list(compress(batch, map(operator.eq, ops, repeat(CHANGE))))
        befores, afters = list(map(_BEFORE, changes)), list(map(_AFTER, changes))
        if None in befores or None in afters:  # not a change of cells: nothing to count
            whole = [b is not None and a is not None for b, a in zip(befores, afters, strict=True)]
            befores, afters = list(compress(befores, whole)), list(compress(afters, whole))
        self._count_cells(len(befores), _cell_column(befores), _cell_column(afters))

    def add_columns(self, changes: ChangeColumns) -> None:
        """Count changes held by column (in key order): only the changed rows' lines are
        split (a batch's lines at once, when plain), only the samples become RowChanges."""
        for op, sampler in self.samplers.items():
            sampler.add(changes.rows(list(islice(_where(changes.ops, op), sampler.n))))
        changed = list(_where(changes.ops, CHANGE))
        widths = (len(self.t.old_columns), len(self.t.columns))
        for i in range(0, len(changed), _BATCH):
            at = changed[i : i + _BATCH]
            sides = [
                _line_column(changes, cast(list[str], list(map(side.__getitem__, at))), width)
                for side, width in ((changes.before, widths[0]), (changes.after, widths[1]))
            ]
            self._count_cells(len(at), *sides)

    def _count_cells(self, rows: int, old_column: Column, new_column: Column) -> None:
        """Count the columns `rows` changed rows alter, one pass in C per column; a side's
        column of cells by its index comes from `old_column` / `new_column`."""
        nones: list[str | None] = [None] * rows
        for i, (_, o, n) in enumerate(self.slots):
            olds = nones if o is None else old_column(o)
            news = nones if n is None else new_column(n)
            differ = list(map(operator.ne, olds, news))
            changed = differ.count(True)
            if not changed:
                continue
            self.rows[i] += changed
            olds_, news_ = (_clipped(compress(xs, differ), at is not None)
                            for xs, at in ((olds, o), (news, n)))  # fmt: skip
            pairs = list(zip(olds_, news_, strict=True))
            if self.examples[i] is None:
                self.examples[i] = pairs[0]
            self.tops[i].add_counts(Counter(pairs))

    def feed(self, changes: Iterable[RowChange]) -> Digest:
        it = iter(changes)
        while batch := list(islice(it, _BATCH)):
            self.add_batch(batch)
        return self.result()

    def result(self) -> Digest:
        columns = [self._column(i) for i in range(len(self.slots)) if self.rows[i]]
        columns.sort(key=lambda c: -c.rows)  # stable: ties keep the table's column order
        samples = {op: s.first() for op, s in self.samplers.items()}
        return Digest(tuple(columns), samples)

    def _column(self, i: int) -> ColumnChange:
        counter = self.tops[i]
        ranked = [
            Transition(_shown_value(k[0]), _shown_value(k[1]), c[0], c[1])
            for k, c in counter.top(TOP_SHOWN)
        ]
        # An estimate says little unless it is sure to repeat: at least 2 beyond its error.
        # Once the counter has evicted, a transition seen once says nothing either (exact
        # or not: which single ones a batch kept is chance), so only repeats are shown.
        top = tuple(
            tr for tr in ranked if (tr.exact and not counter.evicted) or tr.rows - tr.error >= 2
        )
        example = self.examples[i] or (None, None)
        return ColumnChange(
            column=self.slots[i][0],
            rows=self.rows[i],
            top=top,
            more=counter.evicted or len(counter.counts) > len(top),
            example=Transition(_shown_value(example[0]), _shown_value(example[1]), 1, 0),
        )


def digest(t: TablePlan, sample: int = 0) -> Digest:
    """The digest of one table, reading its row changes once (not at all if nothing to learn)."""
    builder = DigestBuilder(t, sample)
    if sample <= 0 and not builder.need_cells:
        return builder.result()
    if t.row_changes.columns is not None:
        builder.add_columns(t.row_changes.columns)
        return builder.result()
    if t.row_changes.ordered and not builder.need_cells and not t.rows_removed:
        # Only adds, in key order: the samples are the first rows; no need to read on.
        return builder.feed(islice(t.row_changes, sample))
    return builder.feed(t.row_changes)
