"""The three renderings of a Plan: golden files, plus the properties goldens cannot show."""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterator
from dataclasses import replace

import plan_cases as pc
import pytest
from golden_util import assert_golden

from bpsync import render, rowdiff
from bpsync.console import Console
from bpsync.plan import ADD, CHANGE, NO_OP, REMOVE, ChangeColumns, Plan, RowChange, RowChanges
from bpsync.render import digest
from bpsync.render.json import render_json, write_json
from bpsync.render.markdown import (
    MARKER,
    SUMMARY_LIMIT,
    github_link_base,
    github_run_url,
    marker,
    render_markdown,
)
from bpsync.render.text import render_text
from bpsync.table import format_row

LINK_BASE = "https://github.com/acme/tables/blob/0123abc/"
LINKED = {"update", "hostile"}  # golden cases whose Markdown is rendered with row links


@pytest.mark.parametrize("case", sorted(pc.GOLDEN_CASES))
def test_golden(case: str, request: pytest.FixtureRequest) -> None:
    plan = pc.GOLDEN_CASES[case]()
    assert_golden(request.config, case, "plan.txt", render_text(plan))
    link_base = LINK_BASE if case in LINKED else None
    assert_golden(request.config, case, "plan.md", render_markdown(plan, link_base=link_base))
    assert_golden(request.config, case, "plan.json", render_json(plan))


# -- text -----------------------------------------------------------------------------------


def test_text_truncates_rows_fairly_and_says_how_to_see_all() -> None:
    plan = pc.update_case()  # 1 add, 2 changes, 1 removal
    text = render_text(plan, max_rows=3)
    assert (
        "… and 1 more row change (shown: 1 of 1 added, 1 of 2 changed, 1 of 1 removed, "
        "the first of each kind by key; all of them: bpsync plan --max-rows 0, or --format json)"
    ) in text
    # one of each kind, none hidden behind the first rows by key
    assert sorted(re.findall(r"^  ([+~-]) application=", text, re.M)) == ["+", "-", "~"]
    everything = render_text(plan, max_rows=0)
    assert "more row changes" not in everything
    assert len(re.findall(r"^  [+~-] application=", everything, re.M)) == 4


def test_text_shows_first_rows_by_key_of_a_huge_lazy_plan() -> None:
    text = render_text(pc.big_case(30_000, lazy=True), max_rows=3)
    rows = re.findall(r"^  [+~-] application=(\S+)", text, re.M)
    assert rows == ["app0000000", "app0000001", "app0000002"]
    assert "… and 29,997 more row changes" in text


def test_text_colour_only_through_paint() -> None:
    plan = pc.update_case()
    assert "\033[" not in render_text(plan)
    coloured = render_text(plan, paint=Console(color_out=True).paint)
    assert "\033[32m+\033[0m application=crm" in coloured
    assert "\033[" in coloured


def test_text_escapes_control_characters_of_values() -> None:
    text = render_text(pc.hostile_case())
    assert "\x1b" not in text and '"\\x1b[31mred"' in text


def test_text_drift_comes_before_the_plan() -> None:
    text = render_text(pc.drift_case())
    assert text.index("Drift") < text.index("~ service-owners (update)")


def test_text_no_changes() -> None:
    text = render_text(pc.noop_case())
    assert text.endswith("Fingerprint: " + pc.FP + "\nNo changes.\n")
    assert "2 tables unchanged." in text and "(no-op)" not in text


@pytest.mark.parametrize(
    ("case", "words"),
    [
        ("replace", ["-/+ service-owners (replace)", '(no column) → "sales"']),
        ("deactivate", ["- legacy (deactivate)", "manifest deleted"]),
        ("mass-delete", ["MASS DELETE: removes 6 of 10 rows (60%)", "--allow-mass-delete"]),
        ("adopted", ["content of the remote table unknown (adopted); all rows will be uploaded"]),
        ("update-in-place", ["~ service-owners (update-in-place)", 'map_name: "Service owners"']),
        ("create", ["+ service-owners (create) — new enrichment: +2 ~0 -0"]),
    ],
)
def test_text_words(case: str, words: list[str]) -> None:
    text = render_text(pc.GOLDEN_CASES[case]())
    for w in words:
        assert w in text


def test_text_change_folds_unchanged_cells_and_pairs_by_title() -> None:
    text = render_text(pc.replace_case())
    assert '~ application=crm  team: (no column) → "sales"  (2 unchanged cells)' in text


# -- markdown -------------------------------------------------------------------------------


@pytest.mark.parametrize("lazy", [False, True])
def test_markdown_fits_a_huge_diff_and_says_what_was_cut(lazy: bool) -> None:
    md = render_markdown(pc.big_case(200_000, lazy=lazy), link_base=LINK_BASE)
    assert len(md) <= 60_000
    assert md.startswith(MARKER + "\n### bpsync plan\n")
    shown = re.search(
        r"row changes shown: ([\d,]+) of 66,667 added, ([\d,]+) of 66,667 changed, "
        r"([\d,]+) of 66,666 removed",
        md,
    )
    assert shown, "the cut note says how many of each kind were shown"
    counts = [int(n.replace(",", "")) for n in shown.groups()]
    assert min(counts) > 50 and max(counts) - min(counts) <= 1  # a fair share of each kind
    signs = re.findall(r"^\| [^|]* \| ([+~−]) \|", md, re.M)
    assert [signs.count(s) for s in "+~−"] == counts
    assert "`bpsync plan --format json`" in md
    assert md.rstrip().endswith(
        "**Plan: 1 table to change; 66,667 rows to add, 66,667 to change, 66,666 to remove.**"
    )
    assert f"`{pc.FP}`" in md
    assert md.count("<details>") == md.count("</details>") == 1


def test_markdown_many_tables_within_a_small_limit() -> None:
    tables = [replace(pc.update_case().tables[0], name=f"table-{i:03d}") for i in range(400)]
    plan = pc.plan(*tables)
    for limit in (2_000, 5_000, 20_000, 60_000):
        md = render_markdown(plan, limit=limit)
        assert len(md) <= limit
        assert md.count("<details>") == md.count("</details>")
        assert "Cut to fit one comment" in md or "cut to fit one comment" in md
        assert pc.FP in md


def test_markdown_long_values_are_cut() -> None:
    plan = pc.plan(
        pc.table(rows_added=1, row_changes=RowChanges([pc.add("crm", "x" * 32_768, "u", 2)]))
    )
    md = render_markdown(plan)
    assert len(md) < 3_000 and "x…x" in md and "x" * 40 not in md
    assert "x" * 32_768 in render_json(plan)  # whole in JSON


def test_markdown_order_summary_then_warnings_then_details() -> None:
    md = render_markdown(pc.mass_delete_case())
    summary = md.index("| table | action | + | ~ | − |")
    warning = md.index("> [!WARNING]")
    details = md.index("<details>")
    assert summary < warning < details
    assert "MASS DELETE" in md[warning:details] and "\\-\\-allow" not in md
    drift = render_markdown(pc.drift_case())
    assert drift.index("**Drift**") < drift.index("<details>")


def test_markdown_cells_cannot_break_the_table_or_inject_html() -> None:
    md = render_markdown(pc.hostile_case())
    rows = [line for line in md.splitlines() if re.match(r"\| \S* \| [+~] \|", line)]
    assert len(rows) == 3
    for line in rows:  # line, op, 3 columns: 6 cell borders, no more
        assert len(re.findall(r"(?<!\\)\|", line)) == 6
        assert "\n" not in line and "\x1b" not in line
    assert "<script>" not in md and "&lt;script&gt;" in md
    assert "\\`rm -rf\\`" in md and "\\*\\*bold\\*\\*" in md and "\\$x\\$" in md
    assert "<code>@octocat</code>" in md  # GitHub does not mention inside <code>


def test_markdown_links_only_with_link_base() -> None:
    plan = pc.update_case()
    assert "](http" not in render_markdown(plan)
    md = render_markdown(plan, link_base=LINK_BASE)
    assert f"[42]({LINK_BASE}tables/service-owners.csv#L42)" in md
    assert f"[7]({LINK_BASE}tables/service-owners.csv#L7)" in md
    assert md.count("](") == 3  # two changes and one add; removals have no line to link
    hostile = render_markdown(pc.hostile_case(), link_base=LINK_BASE)
    assert f"({LINK_BASE}tables/my%20table%20%281%29.csv#L2)" in hostile


def test_github_link_base() -> None:
    env = {
        "GITHUB_SERVER_URL": "https://github.com/",
        "GITHUB_REPOSITORY": "acme/tables",
        "GITHUB_SHA": "0123abc",
    }
    assert github_link_base(env) == "https://github.com/acme/tables/blob/0123abc/"
    assert github_link_base({**env, "GITHUB_SHA": ""}) is None
    assert github_link_base({}) is None


def test_markdown_no_changes() -> None:
    md = render_markdown(pc.noop_case())
    assert md.startswith(MARKER) and "<details>" not in md and "| table |" not in md
    assert md.rstrip().endswith("**No changes.**")


def test_markdown_limit_too_small_is_refused() -> None:
    with pytest.raises(ValueError, match="at least"):
        render_markdown(pc.update_case(), limit=100)


# -- json -----------------------------------------------------------------------------------

CONTRACT_TABLE_KEYS = {
    "name",
    "action",
    "enrichment_id",
    "schema_changes",
    "drift",
    "rows",
    "row_changes",
}
CONTRACT_ROW_KEYS = {"op", "key", "before", "after", "line"}


@pytest.mark.parametrize("case", sorted(pc.GOLDEN_CASES))
def test_json_contract(case: str) -> None:
    plan = pc.GOLDEN_CASES[case]()
    doc = json.loads(render_json(plan))
    assert doc["format_version"] == "1" and doc["fingerprint"] == plan.fingerprint
    assert doc["summary"] == plan.summary()
    names = [t["name"] for t in doc["tables"]]
    assert names == sorted(t.name for t in plan.tables)
    for t in doc["tables"]:
        assert t.keys() >= CONTRACT_TABLE_KEYS
        assert set(t["rows"]) == {"added", "changed", "removed", "unchanged"}
        if t["action"] == NO_OP:
            assert t["row_changes"] == []
            assert (t["rows"]["added"], t["rows"]["changed"], t["rows"]["removed"]) == (0, 0, 0)
        keys = [tuple(r["key"].values()) for r in t["row_changes"]]
        assert keys == sorted(keys)
        for r in t["row_changes"]:
            assert r.keys() >= CONTRACT_ROW_KEYS
            assert (r["before"] is None) == (r["op"] == ADD)
            assert isinstance(r["line"], int)
    changed = [t for t in doc["tables"] if t["action"] != NO_OP]
    assert doc["summary"]["rows_added"] == sum(t["rows"]["added"] for t in changed)


def test_json_pairs_cells_by_title_across_a_replace() -> None:
    doc = json.loads(render_json(pc.replace_case()))
    crm = next(r for r in doc["tables"][0]["row_changes"] if r["key"] == {"application": "crm"})
    assert crm["before"] == {"application": "crm", "owner": "ana", "Runbook URL": "u"}
    assert crm["after"] == {
        "application": "crm",
        "owner": "ana",
        "Runbook URL": "u",
        "team": "sales",
    }
    assert doc["tables"][0]["schema_changes"] == [
        {"subject": 'field "team"', "detail": "added (result_tag)", "structural": True}
    ]


def test_json_is_deterministic_and_streams() -> None:
    plan = pc.update_case()
    buf = io.StringIO()
    write_json(plan, buf)
    assert buf.getvalue() == render_json(plan) == render_json(pc.update_case())


def test_json_no_op_table_never_lists_rows() -> None:
    odd = replace(pc.unchanged_table(), row_changes=RowChanges([pc.add("x", "y", "z", 2)]))
    doc = json.loads(render_json(pc.plan(odd)))
    assert doc["tables"][0]["row_changes"] == []


def test_json_huge_lazy_plan_is_sorted_by_key_through_an_external_sort(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(render, "SORT_RUN", 1_000)  # forces ten spilled runs
    n = 10_000
    lazy, eager = pc.big_case(n, lazy=True), pc.big_case(n)
    text = render_json(lazy)
    assert text == render_json(eager)
    rows = json.loads(text)["tables"][0]["row_changes"]
    assert len(rows) == n
    assert [r["key"]["application"] for r in rows] == [f"app{i:07d}" for i in range(n)]
    assert text.count('\n      {"op": ') == n  # one row change per line


def test_sorted_changes_breaks_key_ties_by_op() -> None:
    rows = [
        RowChange(ADD, ("k",), None, ("k", "a", "b"), 5),
        RowChange(CHANGE, ("a",), ("a", "1", "2"), ("a", "1", "3"), 2, 2),
    ]
    lazy = RowChanges(lazy=lambda: iter(rows), count=2)
    assert [r.key for r in render.sorted_changes(lazy, run=1)] == [("a",), ("k",)]


# -- the answer first -------------------------------------------------------------------------


def transitions_case() -> Plan:
    """5,000 changed rows: `owner` data-eng → platform in 3,000, a → b in 1,500, the rest
    each distinct; `Runbook URL` changes in 10 rows; plus 5 adds and 2 removals."""
    rows: list[RowChange] = []
    for i in range(5_000):
        app = f"app{i:05d}"
        old, new = (
            ("data-eng", "platform")
            if i < 3_000
            else ("a", "b")
            if i < 4_500
            else (
                f"o{i}",
                f"n{i}",
            )
        )
        url = "u" if i >= 10 else f"u{i}"
        rows.append(RowChange(CHANGE, (app,), (app, old, "u"), (app, new, url), i + 2, i + 2))
    rows += [pc.add(f"new{i}", "ana", "u", 6_000 + i) for i in range(5)]
    rows += [RowChange(REMOVE, (f"old{i}",), (f"old{i}", "x", "u"), None, 7, 7) for i in range(2)]
    t = pc.table(
        rows_added=5,
        rows_changed=5_000,
        rows_removed=2,
        rows_unchanged=15_000,
        row_changes=RowChanges(rows),
        new_rows=20_005,
        old_rows=20_002,
    )
    return pc.plan(t)


def test_glance_names_columns_rows_and_top_transitions_in_every_rendering() -> None:
    plan = transitions_case()
    md = render_markdown(plan)
    glance = md.index("#### At a glance")
    assert glance < md.index("<details>")
    assert (
        "- <code>owner</code> in 5,000 rows: <code>data-eng</code> → <code>platform</code> "
        "×3,000 · <code>a</code> → <code>b</code> ×1,500 · " in md
    )
    assert "- <code>Runbook URL</code> in 10 rows: " in md
    assert (
        "5 rows added (&lt;0.1% of 20,005 after), 5,000 changed (25% of 20,002 before), "
        "2 removed (&lt;0.1% of 20,002 before)" in md
    )
    text = render_text(plan)
    assert text.index("At a glance:") < text.index("~ service-owners (update) —")
    assert 'owner in 5,000 rows: "data-eng" → "platform" ×3,000, "a" → "b" ×1,500, ' in text
    doc = json.loads(render_json(plan))["tables"][0]
    assert doc["table_rows"] == {"before": 20_002, "after": 20_005}
    assert doc["risks"] == ["removes 2 of 20,002 rows (<0.1%)"]
    owner = doc["column_changes"][0]
    assert owner["column"] == "owner" and owner["rows"] == 5_000 and owner["more"] is True
    assert owner["top"][:2] == [
        {"old": "data-eng", "new": "platform", "rows": 3_000, "exact": True},
        {"old": "a", "new": "b", "rows": 1_500, "exact": True},
    ]
    assert [c["column"] for c in doc["column_changes"]] == ["owner", "Runbook URL"]


def test_transition_counter_stays_bounded_and_says_when_it_estimates() -> None:
    counter = digest._TopK(kept=8)
    for i in range(10_000):
        counter.add(("a", "b") if i % 4 == 0 else (str(i), "x"))
        assert len(counter.counts) < 16
    (top, (count, error)), *rest = counter.top(3)
    assert top == ("a", "b") and (count, error) == (2_500, 0)  # never evicted: exact
    assert rest and all(err > 0 for _, (_, err) in rest)  # late arrivals: upper bounds
    assert render.count_mark(7, exact=False) == "×~7"


def test_renderers_read_lazy_row_changes_once() -> None:
    reads = 0
    rows = list(pc.big_rows(3_000))

    def source() -> Iterator[RowChange]:
        nonlocal reads
        reads += 1
        return iter(rows)

    t = pc.table(
        rows_added=1_000,
        rows_changed=1_000,
        rows_removed=1_000,
        row_changes=RowChanges(lazy=source, count=3_000),
        new_rows=2_000,
        old_rows=2_000,
    )
    plan = pc.plan(t)
    for rendering in (render_markdown, render_json, render_text):
        reads = 0
        rendering(plan)
        assert reads == 1, rendering.__name__


def test_cut_comment_says_how_many_of_each_kind_and_where_the_rest_is() -> None:
    url = "https://github.com/acme/tables/actions/runs/42"
    md = render_markdown(
        transitions_case(), limit=20_000, run_url=url, summary_url=url, plan_file="plan.out"
    )
    shown = re.search(r"_Shown: all 5 added, ([\d,]+) of 5,000 changed, all 2 removed", md)
    assert shown and int(shown.group(1)) > 50
    assert (
        f"Every change: `bpsync show plan.out --format json`, or the JSON artifact of "
        f"[this run]({url}). A fuller sample: the [job summary]({url}) of this run." in md
    )
    summary = render_markdown(transitions_case(), limit=SUMMARY_LIMIT, unit="bytes", run_url=url)
    assert "Shown:" not in summary and "job summary](" not in summary  # everything fits


def test_github_run_url() -> None:
    env = {
        "GITHUB_SERVER_URL": "https://github.com",
        "GITHUB_REPOSITORY": "acme/tables",
        "GITHUB_RUN_ID": "42",
    }
    assert github_run_url(env) == "https://github.com/acme/tables/actions/runs/42"
    assert github_run_url({**env, "GITHUB_RUN_ID": "42/../x"}) is None
    assert github_run_url({}) is None


def test_headings_can_name_an_environment() -> None:
    md = render_markdown(pc.update_case(), environment="prod")
    assert md.startswith("<!-- bpsync:plan:prod -->\n### bpsync plan — <code>prod</code>\n")
    assert marker("x --><script>") == "<!-- bpsync:plan:x_____script_ -->"
    assert render_text(pc.update_case(), environment="prod").startswith("Environment: prod\n")


def test_active_false_is_flagged_like_a_deactivate() -> None:
    plan = pc.inactive_case()
    assert "! active: true → false: the enrichment stops enriching alerts" in render_text(plan)
    assert "**Destructive changes**" in render_markdown(plan)
    risks = json.loads(render_json(plan))["tables"][0]["risks"]
    assert risks == [
        "active: true → false: the enrichment stops enriching alerts (like a deactivate)"
    ]


def test_long_similar_values_show_the_differing_part() -> None:
    md = render_markdown(pc.wide_case())
    assert "<code>…/db-01/v1-3</code> → <code>…/db-01<b>-replica</b>/v1-3</code>" in md


@pytest.mark.parametrize(
    ("n", "words"),
    [
        (1, "Plan: 1 table to change; 1 row to add, 0 to change, 0 to remove."),
        (2, "Plan: 2 tables to change; 2 rows to add, 0 to change, 0 to remove."),
    ],
)
def test_closing_line_agrees_with_its_numbers(n: int, words: str) -> None:
    tables = [
        pc.table(f"t{i}", rows_added=1, row_changes=RowChanges([pc.add("k", "a", "b", 2)]))
        for i in range(n)
    ]
    plan = pc.plan(*tables)
    assert render_text(plan).endswith(words + "\n")
    assert render_markdown(plan).endswith(f"**{words}**\n")
    one = render_text(
        pc.plan(
            pc.table(
                rows_changed=1,
                row_changes=RowChanges(
                    [RowChange(CHANGE, ("a",), ("a", "1", "2"), ("a", "1", "3"), 2, 2)]
                ),
            )
        )
    )
    assert "(1 unchanged cell)" in one and "1 row changed" in one


def _owner_changes(owners: list[tuple[str, str]]) -> list[RowChange]:
    return [
        RowChange(
            CHANGE, (f"app{i:05d}",), (f"app{i:05d}", a, "u"), (f"app{i:05d}", b, "u"), i + 2, i + 2
        )
        for i, (a, b) in enumerate(owners)
    ]


@pytest.mark.parametrize("by_column", [False, True])
def test_after_an_eviction_only_repeated_transitions_are_shown(by_column: bool) -> None:
    """A counter that had to evict keeps some transitions seen once by chance: they are not
    shown as the column's most frequent ones (a repeated one is); with nothing evicted,
    every transition is exact and shown."""
    singles = [(f"old{i}", f"new{i}") for i in range(300)]
    for owners, shown in (
        (singles + [("ana", "bob")] * 5, [("ana", "bob", 5)]),
        (singles + [('ana, "jr"', "bob")] * 5, [('ana, "jr"', "bob", 5)]),  # quoted lines
        (singles[:3], [("old0", "new0", 1), ("old1", "new1", 1), ("old2", "new2", 1)]),
        (singles, []),
    ):
        rows = _owner_changes(owners)
        changes = RowChanges(rows)
        if by_column:  # as a diff holds them: lines, in key order
            changes = RowChanges(
                ChangeColumns(
                    [c.op for c in rows],
                    [c.key for c in rows],
                    [format_row(list(c.before or ())) for c in rows],
                    [format_row(list(c.after or ())) for c in rows],
                    [c.line for c in rows],
                    [c.old_line for c in rows],
                    rowdiff._cells_of,
                )
            )
        t = pc.table(rows_changed=len(rows), row_changes=changes, old_rows=len(rows))
        (owner,) = digest.digest(t).columns
        assert [(tr.old, tr.new, tr.rows) for tr in owner.top] == shown
        assert owner.rows == len(owners) and owner.example.old == owners[0][0]
