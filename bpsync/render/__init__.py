"""What the three renderings of a Plan share: its vocabulary, row order, and cell pairing.

The renderers themselves live in `bpsync.render.text`, `.markdown` and `.json`; each takes a
`Plan` and never recomputes it. This module holds what must read the same in all three:
action symbols, the words for destructive changes, the order of row changes (by key), and
the pairing of cells with column titles (a `replace` may change the columns, so `before`
and `after` cells are paired by title, never by position).

Row changes may be lazy (a five-million-row create reads its CSV on demand), so helpers here
iterate them once and never hold them all unless they already are in memory.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from itertools import islice
from pathlib import Path
from typing import IO

from bpsync.plan import (
    ADD,
    CHANGE,
    CREATE,
    DEACTIVATE,
    NO_OP,
    REMOVE,
    REPLACE,
    UPDATE,
    UPDATE_IN_PLACE,
    RowChange,
    RowChanges,
    TablePlan,
)

Paint = Callable[[str, str], str]

SYMBOLS = {
    CREATE: "+",
    UPDATE: "~",
    REPLACE: "-/+",
    UPDATE_IN_PLACE: "~",
    DEACTIVATE: "-",
    NO_OP: " ",
}
OP_SYMBOLS = {ADD: "+", CHANGE: "~", REMOVE: "-"}
# Where to read every row change when a rendering shows only some of them.
FULL_PLAN_HINT = "bpsync show plan.out --format json"
UNKNOWN_BASELINE = "content of the remote table unknown (adopted); all rows will be uploaded"

_OP_RANK = {REMOVE: 0, CHANGE: 1, ADD: 2}
# Lazy row changes are sorted in runs of this many (~30 MB of RowChange objects), spilled to
# temporary files and merged, so sorting five million rows holds one run, not the table.
SORT_RUN = 100_000


def no_paint(text: str, style: str) -> str:
    """The `paint` of an uncoloured rendering."""
    del style
    return text


def change_order(rc: RowChange) -> tuple[tuple[str, ...], int, int]:
    """Rows sort by key; op and line only break ties (a replace can reuse a key)."""
    return (rc.key, _OP_RANK.get(rc.op, 3), rc.line)


def first_changes(changes: RowChanges, n: int) -> list[RowChange]:
    """The first `n` row changes in key order, in one pass and holding only `n` of them."""
    if n <= 0:
        return []
    if n >= len(changes):
        return list(sorted_changes(changes))
    if changes.ordered:
        return list(islice(changes, n))  # in order already: the first n lines, no more read
    return heapq.nsmallest(n, changes, key=change_order)


def sorted_changes(changes: RowChanges, run: int | None = None) -> Iterator[RowChange]:
    """Every row change in key order, whatever their number (external merge sort if lazy)."""
    if changes.in_memory:
        return iter(sorted(changes, key=change_order))
    if changes.ordered:
        return iter(changes)
    return _external_sort(iter(changes), run or SORT_RUN)


def _external_sort(source: Iterator[RowChange], run: int) -> Iterator[RowChange]:
    import tempfile  # this and pickle: only for more row changes than fit in memory

    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bpsync-sort-")))
        runs: list[IO[bytes]] = []
        while True:
            chunk = sorted(_take(source, run), key=change_order)
            if len(chunk) < run and not runs:
                yield from chunk  # everything fitted in one run: no disk at all
                return
            if chunk:
                runs.append(stack.enter_context(_spill(chunk, tmp / f"run{len(runs)}")))
            if len(chunk) < run:
                break
        yield from heapq.merge(*(_read_run(f) for f in runs), key=change_order)


def _take(source: Iterator[RowChange], n: int) -> list[RowChange]:
    out: list[RowChange] = []
    for rc in source:
        out.append(rc)
        if len(out) == n:
            break
    return out


def _spill(chunk: Sequence[RowChange], path: Path) -> IO[bytes]:
    import pickle  # not JSON: these files are our own, short-lived, and pickle is ~4x faster

    with path.open("wb") as f:
        pickler = pickle.Pickler(f, protocol=pickle.HIGHEST_PROTOCOL)
        for rc in chunk:
            pickler.dump((rc.op, rc.key, rc.before, rc.after, rc.line, rc.old_line))
    return path.open("rb")


def _read_run(f: IO[bytes]) -> Iterator[RowChange]:
    import pickle

    unpickler = pickle.Unpickler(f)
    while True:
        try:
            fields = unpickler.load()
        except EOFError:
            return
        yield RowChange(*fields)


# -- cells ----------------------------------------------------------------------------------


def key_cells(t: TablePlan, rc: RowChange) -> dict[str, str]:
    return dict(zip(t.key_columns, rc.key, strict=True))


def before_cells(t: TablePlan, rc: RowChange) -> dict[str, str] | None:
    return None if rc.before is None else dict(zip(t.old_columns, rc.before, strict=True))


def after_cells(t: TablePlan, rc: RowChange) -> dict[str, str] | None:
    return None if rc.after is None else dict(zip(t.columns, rc.after, strict=True))


def all_columns(t: TablePlan) -> tuple[str, ...]:
    """Key columns, then the new table's other columns, then columns only the snapshot has."""
    rest = [c for c in t.columns if c not in t.key_columns]
    gone = [c for c in t.old_columns if c not in t.columns and c not in t.key_columns]
    return (*t.key_columns, *rest, *gone)


def cell_diff(t: TablePlan, rc: RowChange) -> tuple[list[tuple[str, str | None, str | None]], int]:
    """The non-key cells a change alters as (title, old, new), and how many it leaves alone.

    None stands for a column the row does not have on that side (added or dropped column).
    """
    old = before_cells(t, rc) or {}
    new = after_cells(t, rc) or {}
    changed: list[tuple[str, str | None, str | None]] = []
    same = 0
    for title in all_columns(t):
        if title in t.key_columns:
            continue
        a, b = old.get(title), new.get(title)
        if a == b:
            same += 1
        else:
            changed.append((title, a, b))
    return changed, same


def row_cells(t: TablePlan, rc: RowChange) -> dict[str, str]:
    """The cells an added or removed row holds, key first."""
    cells = after_cells(t, rc) if rc.op == ADD else before_cells(t, rc)
    out = key_cells(t, rc)
    out.update((k, v) for k, v in (cells or {}).items() if k not in out)
    return out


# -- words ----------------------------------------------------------------------------------


def counts_text(t: TablePlan, minus: str = "-") -> str:
    return (
        f"+{t.rows_added:,} ~{t.rows_changed:,} {minus}{t.rows_removed:,} "
        f"({t.rows_unchanged:,} unchanged)"
    )


def enrichment_text(t: TablePlan) -> str:
    if t.action == CREATE or t.enrichment_id is None:
        return "new enrichment"
    if t.action == REPLACE:
        return f"enrichment {t.enrichment_id} → new enrichment"
    return f"enrichment {t.enrichment_id}"


def delete_share(t: TablePlan) -> str:
    old = (
        t.old_rows if t.old_rows is not None else t.rows_removed + t.rows_changed + t.rows_unchanged
    )
    pct = f" ({share(t.rows_removed, old)})" if old else ""
    return f"removes {t.rows_removed:,} of {old:,} rows{pct}"


def mass_delete_text(t: TablePlan) -> str:
    limit = f"over max_delete_fraction {t.max_delete_fraction:.0%}"
    if t.new_rows == 0:
        limit = "empties the table"
    return f"MASS DELETE: {delete_share(t)}, {limit}; apply refuses it without --allow-mass-delete"


def destructive_reasons(t: TablePlan) -> list[str]:
    """Why a table's change destroys something, in the words every rendering uses."""
    out: list[str] = []
    if t.mass_delete:
        out.append(mass_delete_text(t))
    elif t.rows_removed:
        out.append(f"{delete_share(t)}")
    if t.action == REPLACE:
        old = f" {t.enrichment_id}" if t.enrichment_id else ""
        out.append(
            f"replace: fields changed structurally; a new enrichment is created, the "
            f"table uploaded, and the old enrichment{old} deactivated"
        )
    if t.action == DEACTIVATE:
        eid = f" {t.enrichment_id}" if t.enrichment_id else ""
        out.append(f"manifest deleted: enrichment{eid} will be deactivated")
    if sets_inactive(t):
        out.append(
            "active: true → false: the enrichment stops enriching alerts (like a deactivate)"
        )
    return out


def sets_inactive(t: TablePlan) -> bool:
    """The manifest turns an active enrichment off (SPEC §3: flagged like a deactivate)."""
    return t.deactivates


def risks(t: TablePlan) -> list[str]:
    """Every destructive or risky thing about one table: destructive changes, then drift."""
    return destructive_reasons(t) + [f"drift: {d}" for d in t.drift]


def rows_summary(t: TablePlan) -> str:
    """`6,172 rows added (3.0% of 211,858 after), 50 removed (<0.1% of 205,736 before)`."""
    parts: list[str] = []
    for n, word, whole, side in (
        (t.rows_added, "added", t.new_rows, "after"),
        (t.rows_changed, "changed", t.old_rows, "before"),
        (t.rows_removed, "removed", t.old_rows, "before"),
    ):
        if not n:
            continue
        pct = share(n, whole)
        of = f" ({pct} of {whole:,} {side})" if pct and whole is not None else ""
        what = plural(n, "row") if not parts else f"{n:,}"
        parts.append(f"{what} {word}{of}")
    return ", ".join(parts) or "no row changes"


def share(part: int, whole: int | None) -> str:
    """`part` as a share of `whole`: `3.0%`, `<0.1%` for a tiny non-zero share, `` if unknown."""
    if not whole:
        return ""
    pct = 100 * part / whole
    if 0 < pct < 0.1:
        return "<0.1%"
    return f"{pct:.1f}%" if pct < 10 else f"{pct:.0f}%"


def count_mark(rows: int, exact: bool) -> str:
    """`×8,120`, or `×~8,120` for a count the bounded counter could only estimate."""
    return f"×{rows:,}" if exact else f"×~{rows:,}"


def op_counts_text(shown: dict[str, int], totals: dict[str, int]) -> str:
    """`120 of 6,172 added, 120 of 49,567 changed, all 50 removed`."""
    parts: list[str] = []
    for op, word in ((ADD, "added"), (CHANGE, "changed"), (REMOVE, "removed")):
        total = totals.get(op, 0)
        if not total:
            continue
        n = shown.get(op, 0)
        whole = f"all {total:,}" if total > 1 and n >= total else f"{min(n, total):,} of {total:,}"
        parts.append(f"{whole} {word}")
    return ", ".join(parts)


def op_totals(t: TablePlan) -> dict[str, int]:
    return {ADD: t.rows_added, CHANGE: t.rows_changed, REMOVE: t.rows_removed}


def table_notes(t: TablePlan) -> list[str]:
    """Notes to show with a table: the unknown baseline first, then the planner's notes."""
    out = [UNKNOWN_BASELINE] if t.baseline == "unknown" else []
    return out + [n for n in t.notes if n not in out]


def plural(n: int, word: str) -> str:
    return f"{n:,} {word}" + ("" if n == 1 else "s")
