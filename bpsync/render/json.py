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
from collections.abc import Iterable, Mapping
from typing import Any, TextIO

from bpsync.plan import FORMAT_VERSION, NO_OP, Plan, RowChange, TablePlan
from bpsync.render import after_cells, before_cells, key_cells, risks, sorted_changes
from bpsync.render.digest import Digest, DigestBuilder

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
    first = True
    builder = None if exact else DigestBuilder(t)
    for rc in _changes(t, exact):
        if builder is not None:
            builder.add(rc)
        out.write(("\n" if first else ",\n") + ROW_INDENT + dump(row_object(t, rc)))
        first = False
    out.write("]" if first else "\n    ]")
    if builder is not None:
        for name, value in glance_object(t, builder.result()).items():
            out.write(f", {dump(name)}: {dump(value)}")
    out.write("}")


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
