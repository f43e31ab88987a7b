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

import operator
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from itertools import islice

from bpsync.plan import ADD, CHANGE, REMOVE, RowChange, TablePlan
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


class _TopK:
    """Space-saving counts with batched eviction: amortised O(1) per value, bounded size.

    Counts never under-estimate; a transition first seen after an eviction starts at the
    largest evicted count (its possible earlier occurrences), recorded as its error.
    """

    def __init__(self, kept: int = TOP_KEPT) -> None:
        self.kept = kept
        self.counts: dict[tuple[str | None, str | None], list[int]] = {}
        self.floor = 0
        self.evicted = False

    def add(self, key: tuple[str | None, str | None]) -> None:
        entry = self.counts.get(key)
        if entry is not None:
            entry[0] += 1
            return
        self.counts[key] = [self.floor + 1, self.floor]
        if len(self.counts) >= 2 * self.kept:
            self._evict()

    def _evict(self) -> None:
        ranked = sorted(self.counts.items(), key=lambda kv: -kv[1][0])
        self.floor = max(self.floor, ranked[self.kept][1][0])
        self.counts = dict(ranked[: self.kept])
        self.evicted = True

    def top(self, n: int) -> list[tuple[tuple[str | None, str | None], list[int]]]:
        return sorted(self.counts.items(), key=lambda kv: (-kv[1][0], _sort_key(kv[0])))[:n]


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


class _Sampler:
    """The first `n` row changes of one op by key, held in at most ~2n slots; once full,
    a row past the n-th kept one is dropped with one comparison."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.rows: list[RowChange] = []
        self.cutoff: tuple[tuple[str, ...], int] | None = None

    def add(self, rc: RowChange) -> None:
        if self.cutoff is not None and (rc.key, rc.line) >= self.cutoff:
            return
        self.rows.append(rc)
        if len(self.rows) >= 2 * self.n + 64:
            self.rows.sort(key=_ORDER)
            del self.rows[self.n :]
            last = self.rows[-1]
            self.cutoff = (last.key, last.line)

    def first(self) -> list[RowChange]:
        self.rows.sort(key=_ORDER)
        return self.rows[: self.n]


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
        sampler = self.samplers.get(rc.op)
        if sampler is not None:
            sampler.add(rc)
        if rc.op != CHANGE or rc.before is None or rc.after is None:
            return
        before, after = rc.before, rc.after
        for i, (_, o, n) in enumerate(self.slots):
            a = None if o is None else before[o]
            b = None if n is None else after[n]
            if a != b:
                self.rows[i] += 1
                pair = (_clip(a), _clip(b))
                self.tops[i].add(pair)
                if self.examples[i] is None:
                    self.examples[i] = pair

    def feed(self, changes: Iterable[RowChange]) -> Digest:
        for rc in changes:
            self.add(rc)
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
        top = tuple(tr for tr in ranked if tr.exact or tr.rows - tr.error >= 2)
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
    if t.row_changes.ordered and not builder.need_cells and not t.rows_removed:
        # Only adds, in key order: the samples are the first rows; no need to read on.
        return builder.feed(islice(t.row_changes, sample))
    return builder.feed(t.row_changes)
