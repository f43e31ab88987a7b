"""The machine rendering of a Plan: SPEC §2's `--format json`, format_version "1".

Contract keys (their meaning is frozen for format_version "1"):
  format_version, fingerprint, summary {tables_changed, rows_added, rows_changed,
  rows_removed}, tables[] sorted by name, each with name, action, enrichment_id,
  schema_changes, drift, rows {added, changed, removed, unchanged}, row_changes[] sorted by
  key, each {op, key, before, after, line}.

`schema_changes` holds objects `{"subject", "detail", "structural"}`, e.g.
`{"subject": "field \\"owner\\"", "detail": "override_existing false → true",
"structural": false}` (structural: BigPanda needs a new enrichment, so the table is replaced).

Added keys: top level api_version, refreshed, created_at, warnings; per table manifest, csv,
baseline, destructive, mass_delete, max_delete_fraction, notes, upload, key_columns, columns,
old_columns; per row change old_line (line in the snapshot, or null).

The answer at a glance, per table, after its row_changes (gathered while they are written):
  table_rows {before, after}: rows of the snapshot and of the new table (null if unknown);
  risks: every destructive or risky change in words (removals, mass delete, replace,
    deactivate, `active: false`, drift);
  column_changes[]: each column some change alters, most rows first:
    {column, rows, top: [{old, new, rows, exact}], more, example: {old, new}}. `old`/`new`
    null mean the row has no such column on that side; values longer than 200 characters
    end in `…` here (whole in row_changes). `rows` of a transition is exact when `exact`,
    else an upper bound (the counter is bounded); `top` holds only transitions known to
    repeat (or exact); `more`: other transitions exist; `example`: the first change seen.
A saved plan (`exact`) leaves these out: it is loaded, not read.

The document is written piece by piece, one row change per line, so five million row
changes never become one string or one dict, and the output stays diffable.
"""

from __future__ import annotations

import io
import json
import operator
import re
from collections.abc import Iterable, Iterator, Mapping
from itertools import compress, islice, repeat
from json.encoder import encode_basestring
from operator import itemgetter
from typing import Any, TextIO, cast

from bpsync.plan import (
    ADD,
    CHANGE,
    FORMAT_VERSION,
    NO_OP,
    REMOVE,
    ChangeColumns,
    Plan,
    RowChange,
    TablePlan,
)
from bpsync.render import after_cells, before_cells, key_cells, risks, sorted_changes
from bpsync.render.digest import Digest, DigestBuilder
from bpsync.table import RowBlock, parse_line

ROW_INDENT = "      "


def render_json(plan: Plan) -> str:
    """The whole document as one string (use `write_json` for large plans)."""
    buf = io.StringIO()
    write_json(plan, buf)
    return buf.getvalue()


def write_json(plan: Plan, out: TextIO) -> None:
    """Stream the JSON rendering to `out`; the same plan always gives the same bytes."""
    write_document(plan, out)


def write_document(
    plan: Plan, out: TextIO, *, head: Mapping[str, Any] | None = None, exact: bool = False
) -> None:
    """The rendering, with `head` members first (a saved plan's own section).

    `exact` keeps the plan's table and row order and every row change of every table, for
    a saved plan that must load back equal; the rendering proper sorts rows by key and leaves a
    no-op table's row_changes empty, as the contract says.
    """
    out.write("{\n")
    members = dict(head or {})
    members.update(header(plan))
    for name, value in members.items():
        out.write(f"  {dump(name)}: {dump(value)},\n")
    out.write('  "tables": [')
    tables = plan.tables if exact else sorted(plan.tables, key=lambda t: t.name)
    for i, t in enumerate(tables):
        out.write("\n    " if i == 0 else ",\n    ")
        _write_table(t, out, exact)
    out.write("\n  ]\n}\n" if tables else "]\n}\n")


def header(plan: Plan) -> dict[str, Any]:
    return {
        "format_version": FORMAT_VERSION,
        "fingerprint": plan.fingerprint,
        "environment": plan.environment,
        "summary": plan.summary(),
        "api_version": plan.api_version,
        "refreshed": plan.refreshed,
        "created_at": plan.created_at,
        "warnings": list(plan.warnings),
    }


def table_object(t: TablePlan) -> dict[str, Any]:
    """Every key of one table but its row changes."""
    return {
        "name": t.name,
        "action": t.action,
        "enrichment_id": t.enrichment_id,
        "schema_changes": [
            {"subject": s.subject, "detail": s.detail, "structural": s.structural}
            for s in t.schema_changes
        ],
        "drift": list(t.drift),
        "rows": t.counts(),
        "manifest": t.manifest,
        "csv": t.csv,
        "baseline": t.baseline,
        "row_drift": dict(t.row_drift) if t.row_drift is not None else None,
        "destructive": t.destructive,
        "mass_delete": t.mass_delete,
        "max_delete_fraction": t.max_delete_fraction,
        "notes": list(t.notes),
        "upload": t.upload,
        "key_columns": list(t.key_columns),
        "columns": list(t.columns),
        "old_columns": list(t.old_columns),
    }


def row_object(t: TablePlan, rc: RowChange) -> dict[str, Any]:
    return {
        "op": rc.op,
        "key": key_cells(t, rc),
        "before": before_cells(t, rc),
        "after": after_cells(t, rc),
        "line": rc.line,
        "old_line": rc.old_line,
    }


def _write_table(t: TablePlan, out: TextIO, exact: bool) -> None:
    opening = dump(table_object(t))
    out.write(opening[:-1] + ', "row_changes": [')
    builder = None if exact else DigestBuilder(t)
    blocks = t.row_changes.add_blocks
    if not exact and t.action != NO_OP and blocks is not None and t.row_changes.ordered:
        # Every row an `add`, in key order (a new table): nothing for the digest to count.
        wrote = _write_add_blocks(t, out, blocks())
    elif t.row_changes.columns is not None and (exact or t.action != NO_OP):
        # Held by column (a diff's), in key order: counted and written column by column.
        if builder is not None:
            builder.add_columns(t.row_changes.columns)
        wrote = _write_columns(t, out, t.row_changes.columns)
    else:
        wrote = _write_rows(t, out, _changes(t, exact), builder)
    out.write("\n    ]" if wrote else "]")
    if builder is not None:
        for name, value in glance_object(t, builder.result()).items():
            out.write(f", {dump(name)}: {dump(value)}")
    out.write("}")


# Rows are encoded in batches of this many and written as one string.
_BATCH = 4096


def _write_rows(
    t: TablePlan, out: TextIO, changes: Iterable[RowChange], builder: DigestBuilder | None
) -> bool:
    """Write `changes` one per line; whether there was any."""
    encoder = RowEncoder(t)
    wrote = False
    it = iter(changes)
    while batch := list(islice(it, _BATCH)):
        if builder is not None:
            builder.add_batch(batch)
        out.write(("\n" if not wrote else ",\n") + ",\n".join(encoder.encode_batch(batch)))
        wrote = True
    return wrote


def _write_columns(t: TablePlan, out: TextIO, changes: ChangeColumns) -> bool:
    """Write changes held by column (`ChangeColumns`, in key order), a batch at a time; a
    batch `RowEncoder.encode_columns` cannot take as lines is written row by row."""
    encoder = RowEncoder(t)
    wrote = False
    for start in range(0, len(changes), _BATCH):
        at = range(start, min(start + _BATCH, len(changes)))
        rows = encoder.encode_columns(changes, at)
        if rows is None:
            rows = encoder.encode_batch(changes.rows(at))
        out.write(("\n" if not wrote else ",\n") + ",\n".join(rows))
        wrote = True
    return wrote


def _write_add_blocks(t: TablePlan, out: TextIO, blocks: Iterator[RowBlock]) -> bool:
    """The rows of an all-add table, straight from its canonical lines, a block at a time.

    A block with nothing JSON escapes (no quote, backslash or control character, so no
    quoted CSV value either) becomes its rows by `%` formatting each line's cells into a
    template of the row object; any other block goes through `RowEncoder`, cell by cell.
    """
    enc = RowEncoder(t)
    template = ROW_INDENT + enc.add_template()
    # The template's constant text between its fields, for `_plain_rows`.
    parts = [x.replace("%%", "%") for x in _FIELD.split(template)]
    keys = tuple(t.columns.index(c) for c in t.key_columns)
    key_of = itemgetter(*keys) if len(keys) > 1 else None
    wrote = False
    for first, lines in blocks:
        if not lines:
            continue
        text = "\n".join(lines)
        if _plain_json(text) and len(t.columns) > 0:
            joined = _plain_rows(parts, keys, len(t.columns), text, len(lines), first)
            if joined is not None:
                out.write(("\n" if not wrote else ",\n") + joined)
                wrote = True
                continue
            cells = map(str.split, lines, repeat(","))
            if key_of is None:
                k = keys[0]
                rows = [template % (c[k], *c, n) for n, c in enumerate(cells, first)]
            else:
                rows = [template % (*key_of(c), *c, n) for n, c in enumerate(cells, first)]
        else:
            rows = [ROW_INDENT + enc.encode(enc.add_change(line, n)) for n, line in
                    enumerate(lines, first)]  # fmt: skip
        out.write(("\n" if not wrote else ",\n") + ",\n".join(rows))
        wrote = True
    return wrote


_FIELD = re.compile(r"(?<!%)%[sd]")  # a field of the add template (`%%` is a literal %)


def _plain_rows(
    parts: list[str], keys: tuple[int, ...], width: int, text: str, n: int, first: int
) -> str | None:
    """The rows of `n` plain lines (`text`, joined by newlines) as the add template writes
    them, joined by ",\\n", built column by column with slice assignments: no work per row in
    Python. None when the cells do not come out as `width` per line."""
    cells = text.replace("\n", ",").split(",")
    if len(cells) != n * width:
        return None
    fields = [cells[k::width] for k in keys]
    fields += [cells[c::width] for c in range(width)]
    fields.append(list(map(str, range(first, first + n))))
    stride = 2 * len(fields) + 1
    out = [""] * (n * stride)
    for i, field in enumerate(fields):
        out[2 * i : n * stride : stride] = [parts[i]] * n
        out[2 * i + 1 : n * stride : stride] = field
    out[stride - 1 : n * stride : stride] = [parts[-1] + ",\n"] * n
    return "".join(out)[:-2]


# What json escapes in a str with ensure_ascii=False; a `\n` only separates the lines here.
_ESCAPED = (*(chr(c) for c in range(32) if c != 10), '"', "\\")


def _plain_json(text: str) -> bool:
    """Whether json leaves `text` as it is: one `in` (memchr) per escaped character is ten
    times faster than a regular expression's character class over a block."""
    return not any(map(text.__contains__, _ESCAPED))


_str = encode_basestring  # the C encoder json.dumps itself uses (ensure_ascii=False)


class RowEncoder:
    """One row change as `dump(row_object(t, rc))` writes it, without the dicts.

    Falls back to `dump(row_object(...))` where the two could differ: repeated column
    titles (a dict keeps the last) or cells not matching the columns (zip raises).
    """

    def __init__(self, t: TablePlan) -> None:
        self.t = t
        self.keys = [_str(c) + ": " for c in t.key_columns]
        self.old = [_str(c) + ": " for c in t.old_columns]
        self.new = [_str(c) + ": " for c in t.columns]
        self.safe = all(
            len(set(cols)) == len(cols) for cols in (t.key_columns, t.old_columns, t.columns)
        )
        self.key_at = tuple(t.columns.index(c) for c in t.key_columns) if self.safe else ()
        # Per op: the row object with `%s` for each cell and `%d` for the lines, and how
        # many cells `before` and `after` must hold for it (see encode_batch).
        self.templates = {op: self._template(op) for op in (ADD, CHANGE, REMOVE)}

    def encode_batch(self, batch: list[RowChange]) -> list[str]:
        """Each change as `ROW_INDENT + encode(rc)`. When json leaves every cell of the
        batch as it is (one check of their joined text), by `%` formatting each change's
        cells into its op's template instead of encoding cell by cell (a third less time)."""
        if self.safe and self._fits(batch):
            cells: list[str] = []
            for rc in batch:
                cells.extend(rc.key)
                cells.extend(rc.before or ())
                cells.extend(rc.after or ())
            joined = "".join(cells)
            # _ESCAPED leaves "\n" out (the add blocks check lines joined by it): a cell may
            # not hold one here.
            if _plain_json(joined) and "\n" not in joined:
                shapes = self.templates
                return [
                    shapes[rc.op][0]
                    % (*rc.key, *(rc.before or ()), *(rc.after or ()), rc.line, *_lines(rc))
                    for rc in batch
                ]
        return [ROW_INDENT + self.encode(rc) for rc in batch]

    def encode_columns(self, changes: ChangeColumns, at: range) -> list[str] | None:
        """`encode_batch` of the changes at `at`, straight from their lines: each op's rows
        by `%` formatting its template over the cells' columns (`zip`, in C: no Python
        frame per row), then the ops merged back in key order. None when a line is not
        plain (json would escape something, or a quote makes it CSV-quoted) or has not the
        columns' number of cells: then `encode_batch` does it."""
        if not self.safe:
            return None
        ops = changes.ops[at.start : at.stop]
        groups: list[Iterator[str]] = []
        for op in (ADD, CHANGE, REMOVE):
            pos = list(compress(range(len(ops)), map(operator.eq, ops, repeat(op))))
            fields = self._op_fields(changes, op, [at.start + p for p in pos])
            if fields is None:
                return None
            groups.append(map(self.templates[op][0].__mod__, zip(*fields, strict=True)))
        rank = {ADD: 0, CHANGE: 1, REMOVE: 2}
        return list(map(next, map(groups.__getitem__, map(rank.__getitem__, ops))))

    def _op_fields(self, changes: ChangeColumns, op: str, at: list[int]) -> list[list[Any]] | None:
        """The fields of one op's template, column by column, for the changes at `at`."""
        if not at:
            return [[]]
        keys = list(map(changes.keys.__getitem__, at))
        if set(map(len, keys)) != {len(self.keys)}:
            return None
        fields: list[list[Any]] = [list(map(itemgetter(i), keys)) for i in range(len(self.keys))]
        for side, width, present in (
            (changes.before, len(self.old), op != ADD),
            (changes.after, len(self.new), op != REMOVE),
        ):
            if not present:
                continue
            lines = list(map(side.__getitem__, at))
            if None in lines or not width:
                return None
            text = ",".join(cast(list[str], lines))
            if not _plain_json(text) or "\n" in text:
                return None
            if set(map(str.count, cast(list[str], lines), repeat(","))) != {width - 1}:
                return None
            cells = text.split(",")
            fields += [cells[c::width] for c in range(width)]
        if not _plain_json("".join(fields[0] if len(self.keys) == 1 else map("".join, keys))):
            return None
        numbers = list(map(changes.lines.__getitem__, at))
        old = list(map(changes.old_lines.__getitem__, at))
        if set(map(type, numbers)) != {int} or (
            set(map(type, old)) != ({type(None)} if op == ADD else {int})
        ):
            return None  # as `_fits`: the template's lines are ints, an add's old line null
        return [*fields, numbers, *([old] if op != ADD else [])]

    def _fits(self, batch: list[RowChange]) -> bool:
        """Whether every change has the cells, and the lines, its op's template holds."""
        shapes, n_keys = self.templates, len(self.keys)
        for rc in batch:
            shape = shapes.get(rc.op)
            if (
                shape is None
                or len(rc.key) != n_keys
                or (-1 if rc.before is None else len(rc.before)) != shape[1]
                or (-1 if rc.after is None else len(rc.after)) != shape[2]
                or (rc.old_line is None) != (rc.op == ADD)
                or type(rc.line) is not int
                or (rc.old_line is not None and type(rc.old_line) is not int)
            ):
                return False
        return True

    def _template(self, op: str) -> tuple[str, int, int]:
        """(the row object with `%s` per cell and `%d` per line, cells of before, of after;
        -1 for null)."""

        def fields(prefixes: list[str]) -> str:
            return "{" + ", ".join(p.replace("%", "%%") + '"%s"' for p in prefixes) + "}"

        before = "null" if op == ADD else fields(self.old)
        after = "null" if op == REMOVE else fields(self.new)
        old_line = "null" if op == ADD else "%d"
        text = (
            f'{{"op": {_str(op)}, "key": {fields(self.keys)}, "before": {before}, '
            f'"after": {after}, "line": %d, "old_line": {old_line}}}'
        )
        widths = (-1 if op == ADD else len(self.old), -1 if op == REMOVE else len(self.new))
        return ROW_INDENT.replace("%", "%%") + text, *widths

    def encode(self, rc: RowChange) -> str:
        if not self.safe or len(rc.key) != len(self.keys):
            return dump(row_object(self.t, rc))
        before = after = "null"
        if rc.before is not None:
            if len(rc.before) != len(self.old):
                return dump(row_object(self.t, rc))
            before = _object(self.old, rc.before)
        if rc.after is not None:
            if len(rc.after) != len(self.new):
                return dump(row_object(self.t, rc))
            after = _object(self.new, rc.after)
        old_line = "null" if rc.old_line is None else str(int(rc.old_line))
        return (
            f'{{"op": {_str(rc.op)}, "key": {_object(self.keys, rc.key)}, "before": {before}, '
            f'"after": {after}, "line": {int(rc.line)}, "old_line": {old_line}}}'
        )

    def add_change(self, line: str, n: int) -> RowChange:
        cells = tuple(parse_line(line))
        return RowChange(ADD, tuple(cells[k] for k in self.key_at), None, cells, n)

    def add_template(self) -> str:
        """The row object of an `add` with `%s` for each key cell, then each cell, and `%d`
        for the line; only for cells json leaves as they are."""

        def fields(prefixes: list[str]) -> str:
            return ", ".join(p.replace("%", "%%") + '"%s"' for p in prefixes)

        return (
            f'{{"op": "{ADD}", "key": {{{fields(self.keys)}}}, "before": null, '
            f'"after": {{{fields(self.new)}}}, "line": %d, "old_line": null}}'
        )


def _lines(rc: RowChange) -> tuple[int, ...]:
    """The old line, when the change has one (all but an `add`)."""
    return () if rc.old_line is None else (rc.old_line,)


def _object(prefixes: list[str], cells: Iterable[str]) -> str:
    return "{" + ", ".join(map(operator.add, prefixes, map(_str, cells))) + "}"


def glance_object(t: TablePlan, d: Digest) -> dict[str, Any]:
    """The table's answer at a glance, as data (plain integers, full words)."""
    return {
        "table_rows": {"before": t.old_rows, "after": t.new_rows},
        "risks": risks(t),
        "column_changes": [
            {
                "column": c.column,
                "rows": c.rows,
                "top": [
                    {"old": tr.old, "new": tr.new, "rows": tr.rows, "exact": tr.exact}
                    for tr in c.top
                ],
                "more": c.more,
                "example": {"old": c.example.old, "new": c.example.new},
            }
            for c in d.columns
        ],
    }


def _changes(t: TablePlan, exact: bool) -> Iterable[RowChange]:
    if exact:
        return t.row_changes
    if t.action == NO_OP:
        return ()
    return sorted_changes(t.row_changes)


# One encoder for every value: json.dumps would build a new one per row change.
_ENCODER = json.JSONEncoder(ensure_ascii=False, allow_nan=False)


def dump(value: Any) -> str:
    """One JSON value on one line: fixed separators, NaN refused, UTF-8 left readable."""
    return _ENCODER.encode(value)
