"""The terminal rendering of a Plan, laid out like `terraform plan`.

Drift comes first because it can make the rest of the plan wrong. Every string that reached
the plan from a file or from BigPanda is shown with non-printable characters escaped, so a
value cannot move the cursor or recolour the terminal.
"""

from __future__ import annotations

from collections.abc import Iterable

from bpsync.plan import ADD, CHANGE, CREATE, DEACTIVATE, REPLACE, Plan, RowChange, TablePlan
from bpsync.render import (
    OP_SYMBOLS,
    SYMBOLS,
    Paint,
    cell_diff,
    counts_text,
    destructive_reasons,
    enrichment_text,
    first_changes,
    key_cells,
    mass_delete_text,
    no_paint,
    plural,
    row_cells,
    sorted_changes,
    table_notes,
)

_ACTION_STYLE = {CREATE: "green", REPLACE: "red", DEACTIVATE: "red"}
_OP_STYLE = {ADD: "green", CHANGE: "yellow"}


def render_text(plan: Plan, *, paint: Paint = no_paint, max_rows: int = 20) -> str:
    """The plan for a terminal; `max_rows` row lines per table (0 = all of them)."""
    return "\n".join(_lines(plan, paint, max_rows)) + "\n"


def _lines(plan: Plan, paint: Paint, max_rows: int) -> Iterable[str]:
    if plan.environment:  # SPEC §8: say where this plan applies before anything else
        yield paint(f"Environment: {plan.environment} at {plan.endpoint}", "bold")
        yield ""
    yield from _drift(plan, paint)
    for warning in plan.warnings:
        yield paint("Warning:", "yellow bold") + " " + clean(warning)
    if plan.warnings:
        yield ""
    for t in plan.changed_tables:
        yield from _table(t, paint, max_rows)
        yield ""
    unchanged = len(plan.tables) - len(plan.changed_tables)
    if unchanged:
        yield paint(f"{plural(unchanged, 'table')} unchanged.", "dim")
        yield ""
    yield f"Fingerprint: {plan.fingerprint}"
    yield paint(plan.closing_line(), "bold")


def _drift(plan: Plan, paint: Paint) -> Iterable[str]:
    drifted = [t for t in plan.tables if t.drift]
    if not drifted:
        return
    yield paint("Drift: BigPanda changed outside bpsync since the last apply", "yellow bold")
    for t in drifted:
        for d in t.drift:
            yield "  " + paint("!", "yellow") + f" {clean(t.name)}: {clean(d)}"
    yield ""


def _table(t: TablePlan, paint: Paint, max_rows: int) -> Iterable[str]:
    symbol = paint(SYMBOLS[t.action], _ACTION_STYLE.get(t.action, "yellow"))
    yield (
        f"{symbol} {paint(clean(t.name), 'bold')} ({t.action}) — "
        f"{clean(enrichment_text(t))}: {counts_text(t)}"
    )
    for sc in t.schema_changes:
        extra = " (needs a new enrichment)" if sc.structural else ""
        yield f"    {clean(str(sc))}{extra}"
    for note in table_notes(t):
        yield f"    note: {clean(note)}"
    for reason in destructive_reasons(t):
        style = "red bold" if reason == mass_delete_text(t) else "red"
        yield "    " + paint("! " + clean(reason), style)
    yield from _rows(t, paint, max_rows)


def _rows(t: TablePlan, paint: Paint, max_rows: int) -> Iterable[str]:
    total = len(t.row_changes)
    shown = (
        sorted_changes(t.row_changes)
        if max_rows == 0
        else iter(first_changes(t.row_changes, max_rows))
    )
    for rc in shown:
        yield "  " + row_line(t, rc, paint)
    if max_rows and total > max_rows:
        yield (
            f"  … and {total - max_rows:,} more row changes "
            "(bpsync plan --max-rows 0, or --format json)"
        )


def row_line(t: TablePlan, rc: RowChange, paint: Paint = no_paint) -> str:
    """One row change: `+ k=v  a=b`, `- …`, or `~ k=v  a: "old" → "new"  (N unchanged cells)`."""
    symbol = paint(OP_SYMBOLS.get(rc.op, "?"), _OP_STYLE.get(rc.op, "red"))
    if rc.op != CHANGE:
        return (
            symbol + " " + "  ".join(f"{clean(k)}={quote(v)}" for k, v in row_cells(t, rc).items())
        )
    changed, same = cell_diff(t, rc)
    parts = [f"{clean(k)}={quote(v)}" for k, v in key_cells(t, rc).items()]
    parts += [f"{clean(title)}: {_side(old)} → {_side(new)}" for title, old, new in changed]
    if same:
        parts.append(paint(f"({plural(same, 'unchanged cell')})", "dim"))
    return symbol + " " + "  ".join(parts)


def _side(value: str | None) -> str:
    return "(no column)" if value is None else quote(value, always=True)


def quote(value: str, *, always: bool = False) -> str:
    """A cell value, quoted when it is empty or could be misread (spaces, `=`, controls)."""
    if (
        not always
        and value
        and all(c.isprintable() and not c.isspace() and c not in '"=' for c in value)
    ):
        return value
    return '"' + clean(value.replace("\\", "\\\\").replace('"', '\\"')) + '"'


def clean(text: str) -> str:
    """Text safe for a terminal: every non-printable character shown as an escape."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else _escape(c) for c in text)


def _escape(c: str) -> str:
    n = ord(c)
    return f"\\x{n:02x}" if n < 0x100 else f"\\u{n:04x}" if n < 0x10000 else f"\\U{n:08x}"
