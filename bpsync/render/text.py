"""The terminal rendering of a Plan, laid out like `terraform plan`.

Drift comes first because it can make the rest of the plan wrong. Every string that reached
the plan from a file or from BigPanda is shown with non-printable characters escaped, so a
value cannot move the cursor or recolour the terminal.
"""

from __future__ import annotations

from collections.abc import Iterable

from bpsync.plan import (
    ADD,
    CHANGE,
    CREATE,
    DEACTIVATE,
    NO_OP,
    REMOVE,
    REPLACE,
    Plan,
    RowChange,
    TablePlan,
)
from bpsync.render import (
    OP_SYMBOLS,
    SYMBOLS,
    Paint,
    cell_diff,
    change_order,
    count_mark,
    counts_text,
    destructive_reasons,
    enrichment_text,
    key_cells,
    mass_delete_text,
    no_paint,
    op_counts_text,
    op_totals,
    plural,
    row_cells,
    rows_summary,
    sorted_changes,
    table_notes,
)
from bpsync.render.digest import Digest, digest

_ACTION_STYLE = {CREATE: "green", REPLACE: "red", DEACTIVATE: "red"}
_OP_STYLE = {ADD: "green", CHANGE: "yellow"}


# At a glance: columns listed per table, and the length values are cut at there.
_GLANCE_COLUMNS = 10
_GLANCE_VALUE = 40


def render_text(
    plan: Plan, *, paint: Paint = no_paint, max_rows: int = 20, environment: str | None = None
) -> str:
    """The plan for a terminal; `max_rows` row lines per table (0 = all of them), taken in
    turn from each kind of change (`-`, `~`, `+`) so none is hidden."""
    return "\n".join(_lines(plan, paint, max_rows, environment)) + "\n"


def _lines(plan: Plan, paint: Paint, max_rows: int, environment: str | None) -> Iterable[str]:
    if environment is not None:
        yield paint(f"Environment: {clean(environment)}", "bold")
        yield ""
    yield from _drift(plan, paint)
    for warning in plan.warnings:
        yield paint("Warning:", "yellow bold") + " " + clean(warning)
    if plan.warnings:
        yield ""
    changed = plan.changed_tables
    digests = [digest(t, max_rows) for t in changed]
    if changed:
        yield paint("At a glance:", "bold")
        for t, d in zip(changed, digests, strict=True):
            yield from _glance(t, d, paint)
        yield ""
    for t, d in zip(changed, digests, strict=True):
        yield from _table(t, d, paint, max_rows)
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


def _glance(t: TablePlan, d: Digest, paint: Paint) -> Iterable[str]:
    """One table's answer: rows and their shares, changed columns, what is destructive."""
    symbol = paint(SYMBOLS[t.action], _ACTION_STYLE.get(t.action, "yellow"))
    yield f"  {symbol} {paint(clean(t.name), 'bold')} ({t.action}): {rows_summary(t)}"
    columns = d.columns[:_GLANCE_COLUMNS]
    for c in columns:
        head = f"      {clean(c.column)} in {plural(c.rows, 'row')}: "
        if not c.top:
            ex = c.example
            yield head + f"no change repeats often; e.g. {_short(ex.old)} → {_short(ex.new)}"
            continue
        tops = [
            f"{_short(tr.old)} → {_short(tr.new)} {count_mark(tr.rows, tr.exact)}" for tr in c.top
        ]
        more = ", …" if c.more else ""
        yield head + ", ".join(tops) + more
    if len(d.columns) > len(columns):
        yield f"      and {plural(len(d.columns) - len(columns), 'more column')} changed"
    for reason in destructive_reasons(t):
        style = "red bold" if reason == mass_delete_text(t) else "red"
        yield "      " + paint("! " + clean(reason), style)


def _short(value: str | None) -> str:
    if value is not None and len(value) > _GLANCE_VALUE:
        value = value[: _GLANCE_VALUE - 1] + "…"
    return _side(value)


def _table(t: TablePlan, d: Digest, paint: Paint, max_rows: int) -> Iterable[str]:
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
    yield from _rows(t, d, paint, max_rows)


def _rows(t: TablePlan, d: Digest, paint: Paint, max_rows: int) -> Iterable[str]:
    if t.action == NO_OP:
        return
    if max_rows == 0:
        for rc in sorted_changes(t.row_changes):
            yield "  " + row_line(t, rc, paint)
        return
    chosen = _take_turns(d, max_rows)
    for rc in chosen:
        yield "  " + row_line(t, rc, paint)
    total = len(t.row_changes)
    if total > len(chosen):
        shown = {op: sum(1 for rc in chosen if rc.op == op) for op in _OPS_TAKE}
        yield (
            f"  … and {plural(total - len(chosen), 'more row change')} (shown: "
            f"{op_counts_text(shown, op_totals(t))}, the first of each kind by key; "
            "all of them: bpsync plan --max-rows 0, or --format json)"
        )


_OPS_TAKE = (REMOVE, CHANGE, ADD)


def _take_turns(d: Digest, n: int) -> list[RowChange]:
    """Up to `n` row changes, one of each op in turn, in key order."""
    queues = [list(reversed(d.samples.get(op, []))) for op in _OPS_TAKE]
    chosen: list[RowChange] = []
    while len(chosen) < n and any(queues):
        for q in queues:
            if q and len(chosen) < n:
                chosen.append(q.pop())
    return sorted(chosen, key=change_order)


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
