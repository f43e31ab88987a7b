"""The PR comment as GitHub renders it: cmark-gfm, GitHub's own engine, then checks on HTML.

GitHub renders a comment with cmark-gfm (extensions table, strikethrough, autolink,
tagfilter), raw HTML allowed, then sanitises it. The checks here read the HTML cmark-gfm
gives with raw HTML allowed (the strictest case: nothing sanitised away), so a value that
became markup would show up as an element:

- the tables are tables (every `|` row of the source is a row of an HTML table, with its
  cells where the header says: the line column a number or empty, the op column an op);
- every <details> is closed, in order; the marker is the only HTML comment;
- no cell value becomes an element: only the tags the renderer writes appear, and the
  hostile values (`</details>`, `<script>`, `<!-- bpsync:plan -->`) read as text;
- the fingerprint line and the closing line survive any cut;
- width: no table is wider than `COMMENT_WIDTH` characters, measured as GitHub lays a table
  out: each column is at least as wide as its longest unbreakable run of text, plus padding.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from html.parser import HTMLParser

import plan_cases as pc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bpsync.plan import Plan, RowChange, RowChanges
from bpsync.render.markdown import CELL_PAD, COMMENT_WIDTH, MARKER, render_markdown

cmarkgfm = pytest.importorskip("cmarkgfm")
from cmarkgfm.cmark import Options  # noqa: E402

LINK_BASE = "https://github.com/acme/tables/blob/0123abc/"
# Every element the renderer writes itself; anything else came from a value.
OWN_TAGS = {
    "h3",
    "h4",
    "p",
    "ul",
    "li",
    "blockquote",
    "table",
    "thead",
    "tbody",
    "tr",
    "th",
    "td",
    "details",
    "summary",
    "code",
    "b",
    "i",
    "em",
    "strong",
    "br",
    "a",
}
OPS = {"+", "~", "−"}


def to_html(md: str) -> str:
    html: str = cmarkgfm.github_flavored_markdown_to_html(md, options=Options.CMARK_OPT_UNSAFE)
    return html


@dataclass
class Table:
    header: list[str] = field(default_factory=list)
    rows: list[list[str]] = field(default_factory=list)


class _Reader(HTMLParser):
    """Elements, comments, text and tables of one rendered comment."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[str] = []
        self.comments: list[str] = []
        self.details_depth = 0
        self.details_balanced = True
        self.tables: list[Table] = []
        self.text: list[str] = []
        self._cell: list[str] | None = None
        self._row: list[str] | None = None
        self._in_head = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        if tag == "details":
            self.details_depth += 1
        elif tag == "table":
            self.tables.append(Table())
        elif tag == "thead":
            self._in_head = True
        elif tag == "tr":
            self._row = []
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "br" and self._cell is not None:
            self._cell.append(" ")  # a line break: a cell may wrap there

    def handle_endtag(self, tag: str) -> None:
        if tag == "details":
            self.details_depth -= 1
            self.details_balanced &= self.details_depth >= 0
        elif tag == "thead":
            self._in_head = False
        elif tag in ("td", "th") and self._cell is not None and self._row is not None:
            self._row.append("".join(self._cell))
            self._cell = None
        elif tag == "tr" and self._row is not None:
            table = self.tables[-1]
            if self._in_head:
                table.header = self._row
            else:
                table.rows.append(self._row)
            self._row = None

    def handle_comment(self, data: str) -> None:
        self.comments.append(data)

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if self._cell is not None:
            self._cell.append(data)


def read(md: str) -> _Reader:
    reader = _Reader()
    reader.feed(to_html(md))
    reader.close()
    return reader


def min_width(table: Table) -> int:
    """The narrowest GitHub can lay the table out: per column its longest unbreakable run."""
    widths = [0] * len(table.header)
    for row in (table.header, *table.rows):
        for i, cell in enumerate(row):
            longest = max((len(w) for w in cell.split()), default=0)
            widths[i] = max(widths[i], longest)
    return sum(w + CELL_PAD for w in widths)


def check_comment(md: str, plan: Plan) -> _Reader:
    """Every property a rendered comment must have, whatever the plan."""
    doc = read(md)
    assert doc.details_balanced and doc.details_depth == 0, "every <details> closed, in order"
    assert doc.comments == [MARKER[4:-3]], "the marker is the only HTML comment"
    foreign = set(doc.tags) - OWN_TAGS
    assert not foreign, f"elements from values: {foreign}"
    text = "".join(doc.text)
    assert f"Fingerprint: {plan.fingerprint}" in text
    assert plan.closing_line() in text
    source_rows = [line for line in md.splitlines() if line.startswith("|")]
    delimiters = [line for line in source_rows if re.fullmatch(r"\|(:?-+:?\|)+", line)]
    html_rows = sum(len(t.rows) + 1 for t in doc.tables)
    assert html_rows == len(source_rows) - len(delimiters), "every | line is a table row"
    for t in doc.tables:
        assert all(len(r) == len(t.header) for r in t.rows)
        if t.header[:2] == ["line", "op"]:  # a row table: its cells where the header says
            for r in t.rows:
                assert re.fullmatch(r"\d*", r[0]) and r[1] in OPS, r
        width = min_width(t)
        assert width <= COMMENT_WIDTH, f"table {t.header} is {width} characters wide"
    return doc


@pytest.mark.parametrize("case", sorted(pc.GOLDEN_CASES))
@pytest.mark.parametrize("link_base", [None, LINK_BASE])
def test_every_golden_case_renders_as_intended(case: str, link_base: str | None) -> None:
    plan = pc.GOLDEN_CASES[case]()
    check_comment(render_markdown(plan, link_base=link_base), plan)


def test_hostile_values_stay_text() -> None:
    plan = pc.hostile_case()
    doc = check_comment(render_markdown(plan, link_base=LINK_BASE), plan)
    text = "".join(doc.text)
    for value in (
        "</details>",
        "<!-- bpsync:plan -->",
        "<script>alert(1)</script>",
        "`rm -rf`",
        "**bold** [l](http://x)",
        "@octocat",
        "$x$",
        "a|b",
    ):
        assert value in text, value
    assert doc.tags.count("details") == 1
    links = re.findall(r'href="([^"]+)"', to_html(render_markdown(plan, link_base=LINK_BASE)))
    assert links and all(u.startswith(LINK_BASE) for u in links), "no link from a value"


@pytest.mark.parametrize("limit", [2_000, 10_000, 60_000])
@pytest.mark.parametrize("lazy", [False, True])
def test_cut_comments_keep_their_shape(limit: int, lazy: bool) -> None:
    plan = pc.big_case(30_000, lazy=lazy)
    md = render_markdown(plan, link_base=LINK_BASE, limit=limit)
    assert len(md) <= limit
    doc = check_comment(md, plan)
    text = "".join(doc.text)
    assert "Cut to fit one comment" in text or "cut to fit" in text
    rows = [r for t in doc.tables if t.header[:2] == ["line", "op"] for r in t.rows]
    if limit >= 10_000:  # the smallest limit holds the summary and the alerts only
        assert {r[1] for r in rows} == OPS, "a sample of every kind of change"


def test_many_tables_cut_keep_their_shape() -> None:
    tables = [replace(pc.hostile_case().tables[0], name=f"table-{i:03d}") for i in range(300)]
    plan = pc.plan(*tables)
    for limit in (2_000, 20_000, 60_000):
        check_comment(render_markdown(plan, limit=limit), plan)


def test_job_summary_budget_counts_bytes() -> None:
    wide = "ü" * 30  # two bytes each in UTF-8
    rows = [pc.add(f"app{i:05d}", wide, wide, i + 2) for i in range(5_000)]
    t = pc.table(rows_added=len(rows), row_changes=RowChanges(rows), new_rows=len(rows))
    plan = pc.plan(t)
    md = render_markdown(plan, limit=100_000, unit="bytes")
    assert 90_000 < len(md.encode()) <= 100_000
    check_comment(md, plan)
    assert "Cut to fit the job summary" in md


_NASTY = st.sampled_from(
    [
        "</details>",
        "<details>",
        "<!-- bpsync:plan -->",
        "-->",
        "<script>",
        "</td></tr>",
        "|",
        "\\|",
        "`",
        "**",
        "~~",
        "[x](http://e.com)",
        "http://e.com",
        "<b>",
        "&amp;",
        "&#60;",
        "\n",
        "\r",
        "\x1b",
        "\u2028",
        "$",
        ":smile:",
        "@team",
        "    ",
        "#",
        "- ",
        "> ",
    ]
)
_VALUE = st.lists(st.one_of(_NASTY, st.text(max_size=8)), max_size=6).map("".join)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.tuples(_VALUE, _VALUE, _VALUE), min_size=1, max_size=6, unique_by=lambda r: r[0])
)
def test_any_values_stay_text(values: list[tuple[str, str, str]]) -> None:
    rows: list[RowChange] = []
    for i, (key, a, b) in enumerate(values):
        if i % 2:
            rows.append(RowChange("change", (key,), (key, a, b), (key, b, a + "!"), i + 2, i + 2))
        else:
            rows.append(pc.add(key, a, b, i + 2))
    adds = sum(1 for r in rows if r.op == "add")
    t = pc.table(
        rows_added=adds,
        rows_changed=len(rows) - adds,
        row_changes=RowChanges(rows),
        new_rows=len(rows),
        old_rows=len(rows) - adds,
    )
    plan = pc.plan(t)
    check_comment(render_markdown(plan, link_base=LINK_BASE), plan)


def test_last_resort_cut_closes_what_it_opened_and_keeps_the_footer() -> None:
    from bpsync.render import markdown

    plan = pc.update_case()
    full = render_markdown(plan)
    opened = full[: full.index("</details>")] + "ü" * 5_000  # a cut inside <details>
    where = markdown.Where(plan_file="plan.out")
    cut = markdown._hard_cut(opened, plan, 3_000, markdown.utf8_size, where)
    assert len(cut.encode()) <= 3_000
    check_comment(cut, plan)
