"""The plan as one sticky pull-request comment (GitHub-flavoured Markdown).

The answer comes first: the summary table, destructive changes and drift as alerts, then per
table which columns changed in how many rows and their most frequent transitions, above the
folded per-table details. GitHub refuses comments over 65,536 characters, so the rendering
never exceeds `limit`: everything but the rows is small and taken in order; the rows share
what is left, table by table, as a fair sample of each kind (`+`, `~`, `−`: the first of each
by key, taken in turn), and the comment says exactly what it showed and where to read all.
The job summary gets the same rendering with a larger budget counted in bytes.

Width: GitHub's comment column is about 780 px, ~110 characters of <code> (~7 px each) with
a table cell's padding costing ~4 of them. No row table is wider than `COMMENT_WIDTH`: its
columns' longest unbreakable runs plus padding. Values are shortened to fit, with an
ellipsis (the JSON rendering has them whole); a table with too many columns for that shows
each row's cells in one column instead. The line column comes first, so it never scrolls
off screen.

Cell values come from CSVs anyone can edit in a pull request. Each is shown inside <code>,
HTML-escaped and with every other ASCII punctuation backslash-escaped, so a value cannot
end a table cell (`|`), open a code span, inject HTML, render as math (`$`), or @-mention
anyone (GitHub does not link mentions inside <code>).
"""

from __future__ import annotations

import html
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from urllib.parse import quote

from bpsync.plan import ADD, CHANGE, REMOVE, Plan, RowChange, TablePlan
from bpsync.render import (
    after_cells,
    all_columns,
    before_cells,
    change_order,
    count_mark,
    counts_text,
    destructive_reasons,
    enrichment_text,
    key_cells,
    op_counts_text,
    op_totals,
    plural,
    row_cells,
    rows_summary,
    table_notes,
)
from bpsync.render.digest import ColumnChange, Digest, digest
from bpsync.review import PLAN_MARKER

MARKER = PLAN_MARKER  # how `bpsync ci comment` finds the plan comment again
DEFAULT_LIMIT = 60_000
MIN_LIMIT = 2_000
# GitHub's job summary takes at most 1 MiB per step; keep room for a failure note.
SUMMARY_LIMIT = 1_000_000
# The widest a row table may be, in characters, and what one cell's padding costs.
COMMENT_WIDTH = 110
CELL_PAD = 4
_LINE_WIDTH = 7  # digits of a line number (up to ten million rows)
# Below this many characters per value, a table shows each row's cells in one column.
_MIN_FULL_CELL = 14
# Full layout: a key column's widest; a title's own need; the rows measured for widths.
_KEY_CELL = 40
_TITLE_NEED = 16
_NARROWEST = 9  # `no column`, `empty`
_NEED_ROWS = 100
# Values in the one-column layout and in the at-a-glance list are cut at this length.
_COMPACT_CELL = 36
_GLANCE_VALUE = 30
# Context kept around the differing part of two long, similar values.
_CONTEXT = 6
# At a glance: columns listed per table; cells listed per row in the one-column layout.
_GLANCE_COLUMNS = 10
_COMPACT_ENTRIES = 8
# A row line is never shorter than this; bounds how many candidates a budget can hold.
_MIN_ROW_CHARS = 24
# Room kept for the closing lines (truncation notice, fingerprint, closing line).
_FOOTER_ROOM = 1_000
# Room kept in a table's share for its "Shown" line.
_NOTE_ROOM = 300
_OP_SIGN = {ADD: "+", CHANGE: "~", REMOVE: "−"}
_OP_TAKE = (REMOVE, CHANGE, ADD)  # turn order when sampling: destructive first
# Inline Markdown that could act inside a table cell: code, emphasis, links, cell ends,
# strikethrough, math, emoji shortcodes, and (via `:`) URL autolinks. Line-start syntax
# (lists, headings) cannot occur mid-cell; `<`, `>` and `&` are HTML-escaped instead.
_PUNCT_ESCAPED = frozenset("\\`*_[]|~$:")

Size = Callable[[str], int]


def utf8_size(text: str) -> int:
    return len(text.encode("utf-8"))


def github_link_base(env: Mapping[str, str]) -> str | None:
    """`{server}/{repo}/blob/{sha}/` inside GitHub Actions, else None (no row links)."""
    server = env.get("GITHUB_SERVER_URL", "").rstrip("/")
    repo = env.get("GITHUB_REPOSITORY", "").strip("/")
    sha = env.get("GITHUB_SHA", "")
    if not (server and repo and sha):
        return None
    return f"{server}/{repo}/blob/{sha}/"


def github_run_url(env: Mapping[str, str]) -> str | None:
    """`{server}/{repo}/actions/runs/{id}` inside GitHub Actions (its job summary and
    artifacts live there), else None."""
    server = env.get("GITHUB_SERVER_URL", "").rstrip("/")
    repo = env.get("GITHUB_REPOSITORY", "").strip("/")
    run = env.get("GITHUB_RUN_ID", "")
    if not (server and repo and run.isdigit()):
        return None
    return f"{server}/{repo}/actions/runs/{run}"


def marker(environment: str | None = None) -> str:
    """The sticky comment's marker; one comment per environment (SPEC §8)."""
    return MARKER if environment is None else f"<!-- bpsync:plan:{_attr(environment)} -->"


@dataclass(frozen=True)
class Where:
    """Where the reader can see more: the run (artifact, job summary) and the plan file."""

    run_url: str | None = None  # the Actions run holding the JSON artifact
    summary_url: str | None = None  # where a fuller sample is (the job summary)
    plan_file: str | None = None  # the saved plan, for `bpsync show`

    def every_change(self) -> str:
        command = (
            f"`bpsync show {self.plan_file} --format json`"
            if self.plan_file
            else "`bpsync plan --format json`"
        )
        if self.run_url:
            return f"{command}, or the JSON artifact of [this run]({self.run_url})"
        return command


def render_markdown(
    plan: Plan,
    *,
    link_base: str | None = None,
    limit: int = DEFAULT_LIMIT,
    unit: str = "chars",
    run_url: str | None = None,
    summary_url: str | None = None,
    plan_file: str | None = None,
    environment: str | None = None,
) -> str:
    """The plan in at most `limit` characters (`unit="bytes"`: UTF-8 bytes, for the job
    summary), whatever the size of the diff. `summary_url` says where a fuller sample is."""
    if limit < MIN_LIMIT:
        raise ValueError(f"limit must be at least {MIN_LIMIT} characters")
    size: Size = utf8_size if unit == "bytes" else len
    where = Where(run_url, summary_url, plan_file)
    page = _Page(limit - _FOOTER_ROOM, size)
    changed = list(plan.changed_tables)
    sample = max(1, limit // _MIN_ROW_CHARS + 1)
    digests = [digest(t, sample) for t in changed]
    page.add_all(_head(plan, environment), cap=page.left // 4, what="tables in the summary")
    page.add_all(_alerts(plan), cap=page.left // 3, what="warnings")
    page.add_all(_glance(changed, digests), cap=page.left // 3, what="columns at a glance")
    for i, (t, d) in enumerate(zip(changed, digests, strict=True)):
        text, shown = _details(t, d, page.left // (len(changed) - i), link_base, where, size)
        if not page.add(text):
            page.omitted_tables += len(changed) - i
            for u in changed[i:]:
                page.count(op_totals(u), {})
            break
        page.count(op_totals(t), shown)
    text = "".join(page.parts) + _footer(plan, page, where, unit)
    return text if size(text) <= limit else _hard_cut(text, plan, limit, size, where)


@dataclass
class _Page:
    """The comment as it grows, with what was cut to stay within the budget."""

    left: int
    size: Size
    parts: list[str] = field(default_factory=list)
    totals: dict[str, int] = field(default_factory=dict)
    shown: dict[str, int] = field(default_factory=dict)
    omitted_tables: int = 0
    omitted: list[str] = field(default_factory=list)

    def add(self, text: str) -> bool:
        n = self.size(text)
        if n > self.left:
            return False
        self.parts.append(text)
        self.left -= n
        return True

    def add_all(self, pieces: Iterable[str], cap: int, what: str) -> None:
        """Add pieces in order while they fit within `cap`; say so if some were cut."""
        cap = min(cap, self.left)
        for piece in pieces:
            n = self.size(piece)
            if n > cap:
                self.omitted.append(what)
                self.add(f"\n_… more {what} cut to fit._\n\n")
                return
            self.add(piece)
            cap -= n

    def count(self, totals: Mapping[str, int], shown: Mapping[str, int]) -> None:
        for op, n in totals.items():
            self.totals[op] = self.totals.get(op, 0) + n
            self.shown[op] = self.shown.get(op, 0) + shown.get(op, 0)

    @property
    def cut(self) -> bool:
        rows_cut = any(self.shown.get(op, 0) < n for op, n in self.totals.items())
        return rows_cut or bool(self.omitted_tables or self.omitted)


def _head(plan: Plan, environment: str | None) -> Iterable[str]:
    env = f" — <code>{_text(environment)}</code>" if environment else ""
    yield f"{marker(environment)}\n### bpsync plan{env}\n\n"
    changed = plan.changed_tables
    if changed:
        yield "| table | action | + | ~ | − |\n|:--|:--|--:|--:|--:|\n"
        for t in changed:
            yield (
                f"| {_code(_middle_cut(t.name, 40))} | {t.action} | {t.rows_added:,} | "
                f"{t.rows_changed:,} | {t.rows_removed:,} |\n"
            )
        yield "\n"
    unchanged = len(plan.tables) - len(changed)
    if unchanged:
        yield f"{plural(unchanged, 'table')} unchanged.\n\n"


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


def _glance(changed: list[TablePlan], digests: list[Digest]) -> Iterable[str]:
    """Per changed table: its rows' shares, then each changed column and its top transitions."""
    with_rows = [(t, d) for t, d in zip(changed, digests, strict=True) if t.row_changes]
    if not with_rows:
        return
    yield "#### At a glance\n\n"
    for t, d in with_rows:
        yield f"{_code(t.name)} ({t.action}): {_text(rows_summary(t))}\n\n"
        columns = d.columns[:_GLANCE_COLUMNS]
        for c in columns:
            yield f"- {_glance_column(c)}\n"
        more = len(d.columns) - len(columns)
        if more:
            yield f"- and {plural(more, 'more column')} changed\n"
        if columns:
            yield "\n"


def _glance_column(c: ColumnChange) -> str:
    head = f"{_code(c.column)} in {plural(c.rows, 'row')}: "
    if not c.top:
        old, new = _pair(c.example.old, c.example.new, _GLANCE_VALUE)
        return head + f"no change repeats often; e.g. {old} → {new}"
    parts = []
    for tr in c.top:
        old, new = _pair(tr.old, tr.new, _GLANCE_VALUE)
        parts.append(f"{old} → {new} {count_mark(tr.rows, tr.exact)}")
    more = " · …" if c.more else ""
    return head + " · ".join(parts) + more


def _details(
    t: TablePlan, d: Digest, share: int, link_base: str | None, where: Where, size: Size
) -> tuple[str, dict[str, int]]:
    """One table's <details> and how many rows of each op it shows."""
    head = "".join(_table_head(t))
    tail = "</details>\n\n"
    rows, shown = _rows(t, d, share - size(head) - size(tail), link_base, where, size)
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


def _rows(
    t: TablePlan, d: Digest, budget: int, link_base: str | None, where: Where, size: Size
) -> tuple[str, dict[str, int]]:
    if not t.row_changes:
        return "", {}
    layout = _Layout.of(t, d)
    header = layout.header()
    budget -= size(header) + _NOTE_ROOM
    chosen = _take_turns(d, lambda rc: layout.row(t, rc, link_base), budget, size)
    shown = {op: sum(1 for rc, _ in chosen if rc.op == op) for op in _OP_TAKE}
    chosen.sort(key=lambda pair: change_order(pair[0]))
    out = header + "".join(line for _, line in chosen) + "\n" if chosen else ""
    totals = op_totals(t)
    if any(shown[op] < n for op, n in totals.items()):
        out += (
            f"_Shown: {op_counts_text(shown, totals)} (the first of each kind by key). "
            f"Every change: {where.every_change()}._\n\n"
        )
    return out, shown


def _take_turns(
    d: Digest, render_row: Callable[[RowChange], str], budget: int, size: Size
) -> list[tuple[RowChange, str]]:
    """Row lines taken in turn from each op's sample while they fit, so no kind is hidden."""
    queues = {op: iter(d.samples.get(op, ())) for op in _OP_TAKE}
    active = [op for op in _OP_TAKE if d.shown(op)]
    chosen: list[tuple[RowChange, str]] = []
    while active:
        for op in list(active):
            rc = next(queues[op], None)
            line = "" if rc is None else render_row(rc)
            n = size(line)
            if rc is None or n > budget:
                active.remove(op)
                continue
            chosen.append((rc, line))
            budget -= n
    return chosen


@dataclass(frozen=True)
class _Layout:
    """One column per table column when they fit `COMMENT_WIDTH`, else one for all cells."""

    columns: tuple[str, ...]
    full: bool
    cap: int  # the one-column layout's cut
    caps: tuple[int, ...] = ()  # per column, in the full layout

    @staticmethod
    def of(t: TablePlan, d: Digest) -> _Layout:
        """Key columns get what they need first (they say which row it is), up to
        `_KEY_CELL`; the other columns share the rest, the narrow ones taking only their
        need (measured on the first rows of each kind of the sample)."""
        columns = all_columns(t)
        needs = _needs(t, d, columns)
        avail = COMMENT_WIDTH - (_LINE_WIDTH + CELL_PAD) - (1 + CELL_PAD)
        avail -= CELL_PAD * len(columns)
        keys = set(t.key_columns)
        key_caps = {c: min(needs[c], _KEY_CELL) for c in columns if c in keys}
        others = [needs[c] for c in columns if c not in keys]
        fill = _water_fill(others, avail - sum(key_caps.values()))
        if fill >= min(_MIN_FULL_CELL, max(others, default=0)):
            caps = tuple(key_caps.get(c, min(needs[c], fill)) for c in columns)
            return _Layout(columns, True, _COMPACT_CELL, caps)
        return _Layout(columns, False, _COMPACT_CELL)

    def header(self) -> str:
        if self.full:
            pairs = zip(self.columns, self.caps, strict=True)
            titles = [_code(_middle_cut(c, cap)) for c, cap in pairs]
            return (
                "| line | op | " + " | ".join(titles) + " |\n"
                "|--:|:-:|" + ":--|" * len(self.columns) + "\n"
            )
        return "| line | op | cells |\n|--:|:-:|:--|\n"

    def row(self, t: TablePlan, rc: RowChange, link_base: str | None) -> str:
        line = "" if rc.op == REMOVE else str(rc.line)
        if link_base and t.csv and rc.op != REMOVE:
            line = f"[{rc.line}]({link_base}{quote(t.csv, safe='/')}#L{rc.line})"
        cells = self._full_cells(t, rc) if self.full else [self._one_cell(t, rc)]
        return f"| {line} | {_OP_SIGN.get(rc.op, '?')} | " + " | ".join(cells) + " |\n"

    def _full_cells(self, t: TablePlan, rc: RowChange) -> list[str]:
        columns = zip(self.columns, self.caps, strict=True)
        if rc.op != CHANGE:
            values = row_cells(t, rc)
            return [_value(values[c], cap) if c in values else "" for c, cap in columns]
        old, new = before_cells(t, rc) or {}, after_cells(t, rc) or {}
        keys = key_cells(t, rc)
        return [
            _value(keys[c], cap) if c in keys else _change_cell(old.get(c), new.get(c), cap)
            for c, cap in columns
        ]

    def _one_cell(self, t: TablePlan, rc: RowChange) -> str:
        """`key: value` for the key, then the cells: all of an added or removed row, only
        the changed ones (`old → new`) of a changed row."""
        keys = key_cells(t, rc)
        entries = [f"{self._title(k)}: {_value(v, self.cap)}" for k, v in keys.items()]
        if rc.op == CHANGE:
            old, new = before_cells(t, rc) or {}, after_cells(t, rc) or {}
            rest = [
                f"{self._title(c)}: {_change_cell(old.get(c), new.get(c), self.cap)}"
                for c in self.columns
                if c not in keys and old.get(c) != new.get(c)
            ]
        else:
            values = row_cells(t, rc)
            rest = [
                f"{self._title(c)}: {_value(values[c], self.cap)}"
                for c in self.columns
                if c not in keys and c in values
            ]
        more = len(rest) - _COMPACT_ENTRIES
        if more > 0:
            rest = [*rest[:_COMPACT_ENTRIES], f"<i>and {plural(more, 'more cell')}</i>"]
        # The key on its own line, then the cells run on and wrap (a tall row hides others).
        return " · ".join(entries) + ("<br>" + " · ".join(rest) if rest else "")

    def _title(self, title: str) -> str:
        return f"<b>{_text(_middle_cut(title, self.cap))}</b>"


def _needs(t: TablePlan, d: Digest, columns: tuple[str, ...]) -> dict[str, int]:
    """How wide each column would like to be: its title (up to `_TITLE_NEED`) and the
    longest value among the first `_NEED_ROWS` row changes of each kind."""
    needs = {c: max(_NARROWEST, min(len(c), _TITLE_NEED)) for c in columns}
    for op in _OP_TAKE:
        for rc in d.samples.get(op, ())[:_NEED_ROWS]:
            for cells in (before_cells(t, rc), after_cells(t, rc)):
                for c, v in (cells or {}).items():
                    if c in needs:
                        needs[c] = max(needs[c], len(_visible(v)))
    return needs


def _water_fill(needs: list[int], avail: int) -> int:
    """The largest cut `c` with sum(min(need, c)) <= avail (all needs if they fit)."""
    left = len(needs)
    for need in sorted(needs):
        if need * left > avail:
            return max(0, avail // left)
        avail -= need
        left -= 1
    return max(needs, default=0)


def _change_cell(old: str | None, new: str | None, cap: int) -> str:
    """Unchanged cells are folded (left blank); changed ones read `old → new`."""
    if old == new:
        return ""
    a, b = _pair(old, new, cap)
    return f"{a} → {b}"


def _pair(old: str | None, new: str | None, cap: int) -> tuple[str, str]:
    """Both sides of a change; when long and similar, the differing part marked in bold
    within a little context, so the difference stands out."""
    if old is None or new is None:
        return _side(old, cap), _side(new, cap)
    old, new = _visible(old), _visible(new)
    if len(old) <= cap and len(new) <= cap:
        return _value(old, cap), _value(new, cap)
    p = _common_prefix(old, new)
    s = _common_prefix(old[p:][::-1], new[p:][::-1])
    if p + s < 2 * _CONTEXT:  # not similar: nothing worth marking
        return _value(old, cap), _value(new, cap)
    return _marked(old, p, len(old) - s, cap), _marked(new, p, len(new) - s, cap)


def _common_prefix(a: str, b: str) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def _marked(value: str, start: int, end: int, cap: int) -> str:
    """`…context<b>differing part</b>context…` in at most `cap` visible characters."""
    before = value[max(0, start - _CONTEXT) : start]
    after = value[end : end + _CONTEXT]
    lead = "…" if start > _CONTEXT else ""
    trail = "…" if end + _CONTEXT < len(value) else ""
    room = max(1, cap - len(lead) - len(before) - len(after) - len(trail))
    mid = value[start:end]
    if len(mid) > room:
        mid = mid[: room - 1] + "…"
    marked = f"<b>{_text(mid)}</b>" if mid else ""
    return f"<code>{lead}{_text(before)}{marked}{_text(after)}{trail}</code>"


def _side(value: str | None, cap: int) -> str:
    return "<i>no column</i>" if value is None else _value(value, cap)


def _value(value: str, cap: int) -> str:
    """A cell value: <code>, escaped; long values lose their middle, since both ends tell
    values apart (a URL's host and its last segment); the JSON rendering has them whole."""
    if value == "":
        return "<i>empty</i>"
    return f"<code>{_text(_middle_cut(_visible(value), cap))}</code>"


def _middle_cut(text: str, cap: int) -> str:
    """Names and titles keep both ends (they tell tables and columns apart)."""
    if len(text) <= cap:
        return text
    head = (cap - 1) // 2
    return text[:head] + "…" + text[len(text) - (cap - 1 - head) :]


def _code(text: str) -> str:
    return f"<code>{_text(text)}</code>"


def _attr(text: str) -> str:
    """Text inside an HTML comment: nothing that could end it or start another."""
    return "".join(c if c.isascii() and (c.isalnum() or c == "_") else "_" for c in text)


def _text(text: str) -> str:
    """Text that stays text: Markdown and HTML escaped; control characters (newlines too)
    shown as visible escapes such as `\\x1b`, so one value stays on one line of one cell."""
    out = "".join("\\" + c if c in _PUNCT_ESCAPED else c for c in _visible(text))
    return html.escape(out, quote=False)


def _visible(text: str) -> str:
    """What a reader sees: each non-printable character as an escape (`\\x1b`, `\\u2028`).
    Idempotent, so values are cut to a width on what they will show."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else _escape(c) for c in text)


def _escape(c: str) -> str:
    n = ord(c)
    return f"\\x{n:02x}" if n < 0x100 else f"\\u{n:04x}" if n < 0x10000 else f"\\U{n:08x}"


def _footer(plan: Plan, page: _Page, where: Where, unit: str) -> str:
    parts = []
    if page.cut:
        fit = "one comment" if unit == "chars" else "the job summary"
        cut = []
        shown = op_counts_text(page.shown, page.totals)
        if shown:
            cut.append(f"row changes shown: {shown}")
        if page.omitted_tables:
            cut.append(f"{plural(page.omitted_tables, 'table')} not detailed")
        cut += [f"some {what} cut" for what in page.omitted]
        fuller = (
            f" A fuller sample: the [job summary]({where.summary_url}) of this run."
            if where.summary_url
            else ""
        )
        parts.append(
            f"> [!NOTE]\n> Cut to fit {fit}: {'; '.join(cut)}. "
            f"Every change: {where.every_change()}.{fuller}\n\n"
        )
    parts.append(f"Fingerprint: `{plan.fingerprint}`\n\n**{plan.closing_line()}**\n")
    return "".join(parts)


def _hard_cut(text: str, plan: Plan, limit: int, size: Size, where: Where) -> str:
    """Last resort if an estimate was wrong: cut at a line, close what was open, keep the
    footer whole."""
    tail = (
        f"\n\n_… cut to fit; every change: {where.every_change()}._\n\n"
        f"Fingerprint: `{plan.fingerprint}`\n\n**{plan.closing_line()}**\n"
    )
    room = limit - size(tail) - 64
    head = text[:room]
    while size(head) > room:
        head = head[: len(head) - (size(head) - room)]
    head = head[: head.rfind("\n") + 1]
    opened = head.count("<details>") - head.count("</details>")
    return head + "\n</details>\n" * max(0, opened) + tail
