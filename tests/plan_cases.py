"""Plan values built by hand, one per situation the renderers must handle (no planner)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

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
    Inputs,
    Plan,
    RowChange,
    RowChanges,
    SchemaChange,
    TablePlan,
)

COLUMNS = ("application", "owner", "Runbook URL")
FP = "sha256:" + "ab" * 32
EID = "5f1a2b3c4d5e6f708192a3b4"


def schema(columns: tuple[str, ...] = COLUMNS, **extra: Any) -> dict[str, Any]:
    fields = [
        {"title": c, "type": "query_tag" if i == 0 else "result_tag"} for i, c in enumerate(columns)
    ]
    return {
        "map_name": "Service owners",
        "description": None,
        "active": True,
        "when": None,
        "fields": fields,
        **extra,
    }


def table(name: str = "service-owners", **kw: Any) -> TablePlan:
    """A TablePlan with sensible defaults for an update; keywords override any field."""
    base = TablePlan(
        name=name,
        action=UPDATE,
        enrichment_id=EID,
        manifest=f"tables/{name}.yaml",
        csv=f"tables/{name}.csv",
        columns=COLUMNS,
        old_columns=COLUMNS,
        key_columns=("application",),
        schema=schema(),
        old_schema=schema(),
        schema_changes=(),
        drift=(),
        notes=(),
        rows_added=0,
        rows_changed=0,
        rows_removed=0,
        rows_unchanged=0,
        row_changes=RowChanges(),
        baseline="snapshot",
        new_sha256="1" * 64,
        new_rows=0,
        old_sha256="2" * 64,
        old_rows=0,
        max_delete_fraction=0.5,
        mass_delete=False,
        upload=True,
    )
    return replace(base, **kw)


def plan(*tables: TablePlan, **kw: Any) -> Plan:
    inputs = Inputs(
        manifests={f"tables/{t.name}.yaml": "3" * 64 for t in tables},
        tables={f"tables/{t.name}.csv": "4" * 64 for t in tables},
        state="5" * 64,
    )
    base = Plan(
        fingerprint=FP,
        tables=tables,
        inputs=inputs,
        api_version="v1",
        refreshed=False,
        created_at="2024-05-01T12:00:00Z",
    )
    return replace(base, **kw)


def add(app: str, owner: str, url: str, line: int) -> RowChange:
    return RowChange(ADD, (app,), None, (app, owner, url), line)


def unchanged_table(name: str = "runbooks") -> TablePlan:
    return table(name, action=NO_OP, rows_unchanged=12, upload=False, new_rows=12, old_rows=12)


def create_case() -> Plan:
    rows = (add("billing", "bob", "https://wiki/billing", 3), add("crm", "ana", "", 2))
    t = table(
        action=CREATE,
        enrichment_id=None,
        old_schema=None,
        old_columns=(),
        baseline="none",
        rows_added=2,
        row_changes=RowChanges(rows),
        new_rows=2,
        old_sha256=None,
        old_rows=None,
    )
    return plan(t)


def update_case() -> Plan:
    rows = (
        add("crm", "ana", "https://wiki/crm", 42),
        RowChange(
            CHANGE,
            ("billing",),
            ("billing", "bob", "https://wiki/b"),
            ("billing", "ana", "https://wiki/b"),
            7,
            8,
        ),
        RowChange(CHANGE, ("auth",), ("auth", "x", "u1"), ("auth", "y", "u2"), 3, 3),
        RowChange(REMOVE, ("legacy",), ("legacy", "zed", "https://wiki/legacy"), None, 20, 20),
    )
    t = table(
        rows_added=1,
        rows_changed=2,
        rows_removed=1,
        rows_unchanged=40,
        row_changes=RowChanges(rows),
        new_rows=43,
        old_rows=43,
        notes=("values holding | are split into lists by BigPanda",),
    )
    return plan(t, unchanged_table())


def replace_case() -> Plan:
    new_cols = (*COLUMNS, "team")
    rows = (
        RowChange(CHANGE, ("crm",), ("crm", "ana", "u"), ("crm", "ana", "u", "sales"), 2, 2),
        RowChange(CHANGE, ("billing",), ("billing", "bob", "u"), ("billing", "bo", "u", ""), 3, 3),
    )
    t = table(
        action=REPLACE,
        columns=new_cols,
        schema=schema(new_cols),
        schema_changes=(SchemaChange('field "team"', "added (result_tag)", True),),
        rows_changed=2,
        row_changes=RowChanges(rows),
        new_rows=2,
        old_rows=2,
    )
    return plan(t)


def in_place_case() -> Plan:
    t = table(
        action=UPDATE_IN_PLACE,
        upload=False,
        rows_unchanged=40,
        schema=schema(map_name="Owners"),
        schema_changes=(SchemaChange("map_name", '"Service owners" → "Owners"', False),),
    )
    return plan(t)


def deactivate_case() -> Plan:
    t = table(
        "legacy",
        action=DEACTIVATE,
        manifest=None,
        csv=None,
        schema=None,
        upload=False,
        rows_unchanged=9,
        max_delete_fraction=1.0,
        notes=(
            "manifest deleted: the enrichment is deactivated (its rows stay in BigPanda, unused)",
        ),
    )
    return plan(t, unchanged_table())


def noop_case() -> Plan:
    return plan(unchanged_table("a"), unchanged_table("b"))


def mass_delete_case() -> Plan:
    rows = tuple(
        RowChange(REMOVE, (f"app{i}",), (f"app{i}", "o", "u"), None, i + 2, i + 2) for i in range(6)
    )
    t = table(
        rows_removed=6,
        rows_unchanged=4,
        row_changes=RowChanges(rows),
        new_rows=4,
        old_rows=10,
        mass_delete=True,
    )
    return plan(t)


def drift_case() -> Plan:
    t = table(
        drift=(
            f"enrichment {EID} moved from version 3 to 5 since the last apply "
            "(changed outside bpsync)",
        ),
        rows_added=1,
        rows_unchanged=3,
        row_changes=RowChanges((add("crm", "ana", "u", 5),)),
        new_rows=4,
        old_rows=3,
    )
    return plan(
        t,
        unchanged_table(),
        refreshed=True,
        warnings=("2 values hold | and will be split into lists",),
    )


def adopted_case() -> Plan:
    rows = (add("crm", "ana", "u", 2),)
    t = table(
        baseline="unknown",
        rows_added=1,
        row_changes=RowChanges(rows),
        new_rows=1,
        old_sha256=None,
        old_rows=None,
        old_schema=schema(),
    )
    return plan(t)


def hostile_case() -> Plan:
    """Values that try to break a Markdown table, open code, inject HTML, or ping people."""
    rows = (
        add("a|b", "`rm -rf`", "<script>alert(1)</script>", 2),
        RowChange(
            CHANGE,
            ("c",),
            ("c", "@octocat", "$x$"),
            ("c", "**bold** [l](http://x)", "\x1b[31mred"),
            3,
            3,
        ),
        # Values that try to close the <details>, fake the sticky-comment marker, or open HTML.
        add("e</details>", "<!-- bpsync:plan -->", "</td></tr></table><img src=x>", 4),
    )
    t = table(
        rows_added=2,
        rows_changed=1,
        row_changes=RowChanges(rows),
        new_rows=3,
        old_rows=1,
        csv="tables/my table (1).csv",
    )
    return plan(t)


WIDE_COLUMNS = ("host", *(f"attribute_{i:02d}" for i in range(1, 12)))


def wide_case() -> Plan:
    """Twelve columns, long URLs and long similar values: too wide for one column each."""
    base = "https://wiki.example.com/runbooks/platform/storage/"

    def cells(host: str, tail: str) -> tuple[str, ...]:
        return (host, *(f"{base}{host}/{tail}-{i}" for i in range(1, 12)))

    old = cells("db-01", "v1")
    new = (*old[:3], old[3].replace("/db-01/", "/db-01-replica/"), *old[4:])
    rows = (
        RowChange(CHANGE, ("db-01",), old, new, 3, 3),
        RowChange(ADD, ("db-02",), None, cells("db-02", "v1"), 4),
        RowChange(REMOVE, ("db-00",), cells("db-00", "v0"), None, 2, 2),
    )
    t = table(
        "storage-hosts",
        columns=WIDE_COLUMNS,
        old_columns=WIDE_COLUMNS,
        key_columns=("host",),
        schema=schema(WIDE_COLUMNS),
        old_schema=schema(WIDE_COLUMNS),
        rows_added=1,
        rows_changed=1,
        rows_removed=1,
        rows_unchanged=97,
        row_changes=RowChanges(rows),
        new_rows=99,
        old_rows=99,
    )
    return plan(t)


def inactive_case() -> Plan:
    """An update-in-place that turns the enrichment off: destructive like a deactivate."""
    t = table(
        action=UPDATE_IN_PLACE,
        upload=False,
        rows_unchanged=40,
        new_rows=40,
        old_rows=40,
        schema=schema(active=False),
        schema_changes=(SchemaChange("active", "true → false", False),),
    )
    return plan(t)


GOLDEN_CASES: dict[str, Callable[[], Plan]] = {
    "create": create_case,
    "update": update_case,
    "replace": replace_case,
    "update-in-place": in_place_case,
    "deactivate": deactivate_case,
    "no-op": noop_case,
    "mass-delete": mass_delete_case,
    "drift": drift_case,
    "adopted": adopted_case,
    "hostile": hostile_case,
    "wide": wide_case,
    "inactive": inactive_case,
}


def big_rows(n: int) -> Iterator[RowChange]:
    """n row changes in reverse key order (so sorting is exercised), a third of each op."""
    for i in range(n - 1, -1, -1):
        app = f"app{i:07d}"
        if i % 3 == 0:
            yield RowChange(ADD, (app,), None, (app, "ana", f"https://wiki/{app}"), i + 2)
        elif i % 3 == 1:
            yield RowChange(CHANGE, (app,), (app, "bob", "u"), (app, "ana", "u"), i + 2, i + 2)
        else:
            yield RowChange(REMOVE, (app,), (app, "bob", "u"), None, i + 2, i + 2)


def big_case(n: int = 200_000, *, lazy: bool = False) -> Plan:
    changes = RowChanges(lazy=lambda: big_rows(n), count=n) if lazy else RowChanges(big_rows(n))
    added = len(range(0, n, 3))
    changed = len(range(1, n, 3))
    t = table(
        "big",
        rows_added=added,
        rows_changed=changed,
        rows_removed=n - added - changed,
        rows_unchanged=10,
        row_changes=changes,
        new_rows=added + changed + 10,
        old_rows=n - added + 10,
    )
    return plan(t)
