"""The plan as one sticky pull-request comment (GitHub-flavoured Markdown).

What reviewers must not miss comes first: the summary table, then destructive changes and
drift as alerts, above the folded per-table details. GitHub refuses comments over 65,536
characters, so the rendering never exceeds `limit`: everything but the rows is small and
taken in order; the rows share what is left, table by table, and the comment says what it
cut and where to read everything.

Cell values come from CSVs anyone can edit in a pull request. Each is shown inside <code>,
HTML-escaped and with every other ASCII punctuation backslash-escaped, so a value cannot
end a table cell (`|`), open a code span, inject HTML, render as math (`$`), or @-mention
anyone (GitHub does not link mentions inside <code>).
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from urllib.parse import quote

from bpsync.plan import ADD, CHANGE, REMOVE, Plan, RowChange, TablePlan
from bpsync.render import (
    FULL_PLAN_HINT,
    after_cells,
    all_columns,
    before_cells,
    counts_text,
    destructive_reasons,
    enrichment_text,
    first_changes,
    key_cells,
    plural,
    row_cells,
    table_notes,
)
from bpsync.review import PLAN_MARKER, plan_marker

MARKER = PLAN_MARKER  # how `bpsync ci comment` finds the plan comment again
DEFAULT_LIMIT = 60_000
MIN_LIMIT = 2_000
# Longer values are cut in the comment; the JSON rendering has them whole (up to 32 KiB).
MAX_CELL_CHARS = 120
# A row line is never shorter than this; bounds how many candidates a budget can hold.
_MIN_ROW_CHARS = 12
# Room kept for the closing lines (truncation notice, fingerprint, closing line).
_FOOTER_ROOM = 700
# Room kept in a table's share for its "Showing X of Y" line.
_NOTE_ROOM = 200
_OP_SIGN = {ADD: "+", CHANGE: "~", REMOVE: "−"}
# Inline Markdown that could act inside a table cell: code, emphasis, links, cell ends,
# strikethrough, math, emoji shortcodes, and (via `:`) URL autolinks. Line-start syntax
# (lists, headings) cannot occur mid-cell; `<`, `>` and `&` are HTML-escaped instead.
_PUNCT_ESCAPED = frozenset("\\`*_[]|~$:")


def github_link_base(env: Mapping[str, str]) -> str | None:
    """`{server}/{repo}/blob/{sha}/` inside GitHub Actions, else None (no row links)."""
    server = env.get("GITHUB_SERVER_URL", "").rstrip("/")
    repo = env.get("GITHUB_REPOSITORY", "").strip("/")
    sha = env.get("GITHUB_SHA", "")
    if not (server and repo and sha):
        return None
    return f"{server}/{repo}/blob/{sha}/"


def render_markdown(plan: Plan, *, link_base: str | None = None, limit: int = DEFAULT_LIMIT) -> str:
    """The plan as one comment of at most `limit` characters, whatever the size of the diff."""
    if limit < MIN_LIMIT:
        raise ValueError(f"limit must be at least {MIN_LIMIT} characters")
    page = _Page(limit - _FOOTER_ROOM)
    page.add_all(_head(plan), cap=page.left // 4, what="tables in the summary")
    page.add_all(_alerts(plan), cap=page.left // 3, what="warnings")
    changed = list(plan.changed_tables)
    for i, t in enumerate(changed):
        text, shown = _details(t, page.left // (len(changed) - i), link_base)
        if not page.add(text):
            page.omitted_tables += len(changed) - i
            page.rows_total += sum(len(u.row_changes) for u in changed[i:])
            break
        page.rows_shown += shown
        page.rows_total += len(t.row_changes)
    text = "".join(page.parts) + _footer(plan, page)
    return text if len(text) <= limit else _hard_cut(text, plan, limit)


@dataclass
class _Page:
    """The comment as it grows, with what was cut to stay within the budget."""

    left: int
    parts: list[str] = field(default_factory=list)
    rows_total: int = 0
    rows_shown: int = 0
    omitted_tables: int = 0
    omitted: list[str] = field(default_factory=list)

    def add(self, text: str) -> bool:
        if len(text) > self.left:
            return False
        self.parts.append(text)
        self.left -= len(text)
        return True

    def add_all(self, pieces: Iterable[str], cap: int, what: str) -> None:
        """Add pieces in order while they fit within `cap`; say so if some were cut."""
        cap = min(cap, self.left)
        for piece in pieces:
            if len(piece) > cap:
                self.omitted.append(what)
                self.add(f"\n_… more {what} cut to fit one comment._\n\n")
                return
            self.add(piece)
            cap -= len(piece)


def _head(plan: Plan) -> Iterable[str]:
    yield f"{plan_marker(plan.environment)}\n### bpsync plan{_environment(plan)}\n\n"
    changed = plan.changed_tables
    if changed:
        yield "| table | action | + | ~ | − |\n|:--|:--|--:|--:|--:|\n"
        for t in changed:
            yield (
                f"| {_code(t.name)} | {t.action} | {t.rows_added:,} | {t.rows_changed:,} | "
                f"{t.rows_removed:,} |\n"
            )
        yield "\n"
    unchanged = len(plan.tables) - len(changed)
    if unchanged:
        yield f"{plural(unchanged, 'table')} unchanged.\n\n"


def _environment(plan: Plan) -> str:
    """The heading's suffix naming the environment (SPEC §8); nothing without one."""
    return f" for `{plan.environment}`" if plan.environment else ""


def _alerts(plan: Plan) -> Iterable[str]:
    destructive = [(t, r) for t in plan.changed_tables for r in destructive_reasons(t)]
    if destructive:
        yield "> [!WARNING]\n> **Destructive changes**: review before merging.\n"
        for t, reason in destructive:
            yield f"> - {_code(t.name)}: {_text(reason)}\n"
        yield "\n"
    drift = [(t, d) for t in plan.tables for d in t.drift]
    if drift:
        yield "> [!WARNING]\n> **Drift**: BigPanda changed outside bpsync since the last apply.\n"
        for t, d in drift:
            yield f"> - {_code(t.name)}: {_text(d)}\n"
        yield "\n"
    if plan.warnings:
        yield "> [!NOTE]\n"
        for w in plan.warnings:
            yield f"> - {_text(w)}\n"
        yield "\n"


def _details(t: TablePlan, share: int, link_base: str | None) -> tuple[str, int]:
    """One table's <details> and how many rows it shows: the rows get what the rest leaves."""
    head = "".join(_table_head(t))
    tail = "</details>\n\n"
    rows, shown = _rows(t, share - len(head) - len(tail), link_base)
    return head + rows + tail, shown


def _table_head(t: TablePlan) -> Iterable[str]:
    summary = (
        f"<code>{html.escape(t.name)}</code> — {html.escape(t.action)}: "
        f"{html.escape(counts_text(t, minus='−'))}"
    )
    yield f"<details><summary>{summary}</summary>\n\n"
    where = [_text(enrichment_text(t))]
    if t.csv:
        where.append(_code(t.csv))
    yield " · ".join(where) + "\n\n"
    if t.schema_changes:
        yield "Schema changes:\n"
        for sc in t.schema_changes:
            extra = " _(needs a new enrichment)_" if sc.structural else ""
            yield f"- {_text(sc.subject)}: {_text(sc.detail)}{extra}\n"
        yield "\n"
    for note in table_notes(t):
        yield f"> [!NOTE]\n> {_text(note)}\n\n"


def _rows(t: TablePlan, budget: int, link_base: str | None) -> tuple[str, int]:
    total = len(t.row_changes)
    if not total:
        return "", 0
    columns = all_columns(t)
    header = (
        "| op | "
        + " | ".join(_code(c) for c in columns)
        + " | line |\n"
        + "|:-:|"
        + ":--|" * len(columns)
        + "--:|\n"
    )
    budget -= len(header) + _NOTE_ROOM
    lines: list[str] = []
    for rc in first_changes(t.row_changes, max(0, budget) // _MIN_ROW_CHARS + 1):
        line = _row(t, rc, columns, link_base)
        if len(line) > budget:
            break
        lines.append(line)
        budget -= len(line)
    out = header + "".join(lines) + "\n" if lines else ""
    if len(lines) < total:
        out += (
            f"_Showing {len(lines):,} of {total:,} row changes (first by key); every "
            f"change: `{FULL_PLAN_HINT}` or the JSON artifact._\n\n"
        )
    return out, len(lines)


def _row(t: TablePlan, rc: RowChange, columns: tuple[str, ...], link_base: str | None) -> str:
    if rc.op == CHANGE:
        old, new = before_cells(t, rc) or {}, after_cells(t, rc) or {}
        keys = key_cells(t, rc)
        cells = [
            _value(keys[c]) if c in keys else _change_cell(old.get(c), new.get(c)) for c in columns
        ]
    else:
        values = row_cells(t, rc)
        cells = [_value(values[c]) if c in values else "" for c in columns]
    line = "" if rc.op == REMOVE else str(rc.line)
    if link_base and t.csv and rc.op != REMOVE:
        line = f"[{rc.line}]({link_base}{quote(t.csv, safe='/')}#L{rc.line})"
    return f"| {_OP_SIGN.get(rc.op, '?')} | " + " | ".join(cells) + f" | {line} |\n"


def _change_cell(old: str | None, new: str | None) -> str:
    """Unchanged cells are folded (left blank); changed ones read `old → new`."""
    return "" if old == new else f"{_side(old)} → {_side(new)}"


def _side(value: str | None) -> str:
    return "<i>no column</i>" if value is None else _value(value)


def _value(value: str) -> str:
    """A cell value: <code>, escaped; long values cut (the JSON rendering has them whole)."""
    if value == "":
        return "<i>empty</i>"
    cut = value[:MAX_CELL_CHARS] + "…" if len(value) > MAX_CELL_CHARS else value
    return f"<code>{_text(cut)}</code>"


def _code(text: str) -> str:
    return f"<code>{_text(text)}</code>"


def _text(text: str) -> str:
    """Text that stays text: Markdown and HTML escaped; control characters (newlines too)
    shown as visible escapes such as `\\x1b`, so one value stays on one line of one cell."""
    out = "".join(_escape_char(c) for c in text)
    return html.escape(out, quote=False)


def _escape_char(c: str) -> str:
    if c in _PUNCT_ESCAPED:
        return "\\" + c
    if c.isprintable():
        return c
    # `\\` is Markdown for one literal backslash: renders as \x1b, \u2028, …
    return f"\\\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\\\u{ord(c):04x}"


def _footer(plan: Plan, page: _Page) -> str:
    parts = []
    if page.rows_shown < page.rows_total or page.omitted_tables or page.omitted:
        cut = [f"{page.rows_shown:,} of {page.rows_total:,} row changes shown"]
        if page.omitted_tables:
            cut.append(f"{plural(page.omitted_tables, 'table')} not detailed")
        cut += [f"some {what} cut" for what in page.omitted]
        parts.append(
            f"> [!NOTE]\n> Cut to fit one comment: {'; '.join(cut)}. "
            f"Every change: `{FULL_PLAN_HINT}`, or the JSON artifact of this run.\n\n"
        )
    parts.append(f"Fingerprint: `{plan.fingerprint}`\n\n**{plan.closing_line()}**\n")
    return "".join(parts)


def _hard_cut(text: str, plan: Plan, limit: int) -> str:
    """Last resort if an estimate was wrong: cut at a line, keep the footer whole."""
    tail = (
        f"\n\n_… cut to fit one comment; every change: `{FULL_PLAN_HINT}`._\n\n"
        f"Fingerprint: `{plan.fingerprint}`\n\n**{plan.closing_line()}**\n"
    )
    head = text[: max(0, limit - len(tail))]
    return head[: head.rfind("\n") + 1] + tail
