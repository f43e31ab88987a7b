"""The keyed row diff: exact, order- and quoting-insensitive, and a true partition of keys."""

from __future__ import annotations

import gzip
import io
import random
from contextlib import nullcontext
from pathlib import Path

from helpers import diffs_every_way, sorted_matching
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bpsync import rowdiff
from bpsync.plan import ADD, CHANGE, REMOVE
from bpsync.rowdiff import RowDiff, diff_table
from bpsync.table import ProblemSink, TableLayout, format_row

TITLES = ("host", "env", "owner")
LAYOUT = TableLayout(TITLES, (0, 1))  # a two-column key

values = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n"),
    max_size=6,
)
rows_st = st.dictionaries(st.tuples(values, values), values, min_size=1, max_size=25)


def _csv(rows: dict[tuple[str, str], str], order: list[tuple[str, str]] | None = None) -> str:
    keys = order if order is not None else list(rows)
    lines = [format_row(TITLES)] + [format_row((k[0], k[1], rows[k])) for k in keys]
    return "\n".join(lines) + "\n"


def _diff(tmp: Path, old: dict[tuple[str, str], str], new_text: str) -> RowDiff:
    """The diff by alignment, checked equal to the diff by hashing (the fallback)."""
    snapshot = gzip.compress(_csv(old).encode())
    path = tmp / "t.csv"
    path.write_bytes(new_text.encode())
    results = []
    # 0: alignment gives up at once, hashing takes over (with a set, then sorted arrays)
    for limit, sorted_arrays in ((1_000_000, False), (0, False), (0, True)):
        sink = ProblemSink("t.csv")
        with sorted_matching() if sorted_arrays else nullcontext():
            results.append(
                diff_table(
                    path,
                    LAYOUT,
                    sink,
                    lambda: gzip.GzipFile(fileobj=io.BytesIO(snapshot)),
                    align_limit=limit,
                )
            )
        assert sink.errors == 0, sink.finish()
    aligned, hashed, by_arrays = results
    assert aligned == hashed == by_arrays
    return aligned


settings_ = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@settings_
@given(rows_st)
def test_diff_of_a_table_with_itself_is_empty(tmp_path: Path, a: dict) -> None:
    d = _diff(tmp_path, a, _csv(a))
    assert d.changes == ()
    assert (d.added, d.changed, d.removed, d.unchanged) == (0, 0, 0, len(a))


@settings_
@given(rows_st, st.randoms(use_true_random=False))
def test_shuffled_and_requoted_rows_are_unchanged(
    tmp_path: Path, a: dict, rnd: random.Random
) -> None:
    order = list(a)
    rnd.shuffle(order)
    # Quote every cell: a different file, the same table.
    lines = [",".join(f'"{c}"' for c in TITLES)]
    lines += [",".join('"' + c.replace('"', '""') + '"' for c in (k[0], k[1], a[k])) for k in order]
    d = _diff(tmp_path, a, "\r\n".join(lines) + "\r\n")
    assert d.changes == ()
    assert d.unchanged == len(a)


@settings_
@given(rows_st, rows_st)
def test_keys_are_partitioned_and_the_diff_turns_a_into_b(tmp_path: Path, a: dict, b: dict) -> None:
    d = _diff(tmp_path, a, _csv(b))
    by_op: dict[str, set[tuple[str, ...]]] = {ADD: set(), CHANGE: set(), REMOVE: set()}
    for c in d.changes:
        assert c.key not in by_op[c.op], "a key appears twice"
        by_op[c.op].add(c.key)
    unchanged = {k for k in set(a) & set(b) if a[k] == b[k]}
    assert by_op[ADD] == set(b) - set(a)
    assert by_op[REMOVE] == set(a) - set(b)
    assert by_op[CHANGE] == {k for k in set(a) & set(b) if a[k] != b[k]}
    assert d.unchanged == len(unchanged)
    assert (d.added, d.changed, d.removed) == tuple(len(by_op[o]) for o in (ADD, CHANGE, REMOVE))
    # Applying the changes to a gives b.
    result = dict(a)
    for c in d.changes:
        if c.op == REMOVE:
            del result[c.key]
        else:
            assert c.after is not None
            result[c.key] = c.after[2]
    assert result == b


def test_changed_row_carries_before_after_and_both_line_numbers(tmp_path: Path) -> None:
    a = {("web1", "prod"): "ana", ("web2", "prod"): "bob", ("db1", "prod"): "eve"}
    b = {("web2", "prod"): "bob", ("web1", "prod"): "carl", ("new", "qa"): "dan"}
    d = _diff(tmp_path, a, _csv(b))
    ops = {c.key: c for c in d.changes}
    change = ops[("web1", "prod")]
    assert change.op == CHANGE
    assert change.before == ("web1", "prod", "ana") and change.after == ("web1", "prod", "carl")
    assert change.line == 3 and change.old_line == 2  # new CSV line, snapshot line
    assert ops[("db1", "prod")].op == REMOVE and ops[("db1", "prod")].line == 4
    assert ops[("new", "qa")].op == ADD and ops[("new", "qa")].line == 4
    assert [c.key for c in d.changes] == sorted(c.key for c in d.changes)


def test_duplicate_key_with_an_unchanged_row_is_an_error(tmp_path: Path) -> None:
    a = {("web1", "prod"): "ana", ("web2", "prod"): "bob"}
    text = _csv(a) + format_row(("web1", "prod", "other")) + "\n"
    snapshot = gzip.compress(_csv(a).encode())
    path = tmp_path / "t.csv"
    path.write_text(text)
    for limit in (1_000_000, 0):
        sink = ProblemSink("t.csv")
        d = diff_table(
            path,
            LAYOUT,
            sink,
            lambda: gzip.GzipFile(fileobj=io.BytesIO(snapshot)),
            align_limit=limit,
        )
        assert not d.info.ok
        messages = [str(p) for p in sink.finish()]
        assert any("t.csv:4" in m and "duplicate key" in m and "line 2" in m for m in messages)


def test_duplicate_identical_row_is_an_error(tmp_path: Path) -> None:
    a = {("web1", "prod"): "ana"}
    text = _csv(a) + format_row(("web1", "prod", "ana")) + "\n"
    snapshot = gzip.compress(_csv(a).encode())
    path = tmp_path / "t.csv"
    path.write_text(text)
    for limit in (1_000_000, 0):
        sink = ProblemSink("t.csv")
        d = diff_table(
            path,
            LAYOUT,
            sink,
            lambda: gzip.GzipFile(fileobj=io.BytesIO(snapshot)),
            align_limit=limit,
        )
        assert not d.info.ok
        assert any("duplicate row" in str(p) and "t.csv:3" in str(p) for p in sink.finish())


def test_alignment_across_blocks_agrees_with_hashing_and_brute_force(tmp_path: Path) -> None:
    import csv
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from gen_table import write_mutation, write_table

    old_path, new_path = tmp_path / "old.csv", tmp_path / "new.csv"
    write_table(old_path, 4_000_000, seed=3)  # ~4 blocks of 1 MiB
    write_mutation(old_path, new_path, seed=4)
    snapshot = gzip.compress(old_path.read_bytes())
    layout = TableLayout(("host", "cmdb_ci", "environment", "support_group", "runbook_url"), (0,))
    diffs = []
    for limit in (1_000_000, 0):
        sink = ProblemSink("new.csv")
        diffs.append(
            diff_table(
                new_path,
                layout,
                sink,
                lambda: gzip.GzipFile(fileobj=io.BytesIO(snapshot)),
                align_limit=limit,
            )
        )
        assert sink.errors == 0
    assert diffs[0] == diffs[1]
    with old_path.open(newline="") as f:
        old = {r[0]: (i, r) for i, r in enumerate(list(csv.reader(f))[1:], 2)}
    with new_path.open(newline="") as f:
        new = {r[0]: (i, r) for i, r in enumerate(list(csv.reader(f))[1:], 2)}
    d = diffs[0]
    assert {c.key[0] for c in d.changes if c.op == ADD} == new.keys() - old.keys()
    assert {c.key[0] for c in d.changes if c.op == REMOVE} == old.keys() - new.keys()
    changed = {k for k in old.keys() & new.keys() if old[k][1] != new[k][1]}
    assert {c.key[0] for c in d.changes if c.op == CHANGE} == changed
    for c in d.changes:
        if c.op == CHANGE:
            assert (c.old_line, c.line) == (old[c.key[0]][0], new[c.key[0]][0])
        elif c.op == REMOVE:
            assert c.line == old[c.key[0]][0]
        else:
            assert c.line == new[c.key[0]][0]


def test_new_column_order_compares_cells_by_title(tmp_path: Path) -> None:
    # Issue 13, defect 6: `k,v` then `v,k` with the same rows is no changed row (csv-diff and
    # daff agree); only rows whose cells differ by title are changes.
    a = {("web1", "prod"): "ana", ("web2", "prod"): "bob", ("db1", "prod"): "eve"}
    reordered = ["owner,host,env", "ana,web1,prod", "carl,web2,prod", "eve,db1,prod"]
    d = _diff(tmp_path, a, "\n".join(reordered) + "\n")
    assert (d.added, d.changed, d.removed, d.unchanged) == (0, 1, 0, 2)
    (change,) = d.changes
    assert change.key == ("web2", "prod")
    assert change.before == ("web2", "prod", "bob") and change.after == ("carl", "web2", "prod")
    same = ["env,owner,host", "prod,ana,web1", "prod,bob,web2", "prod,eve,db1"]
    d = _diff(tmp_path, a, "\n".join(same) + "\n")
    assert (d.added, d.changed, d.removed, d.unchanged, d.changes) == (0, 0, 0, 3, ())


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(-(2**63), 2**63 - 1) | st.integers(0, 5), max_size=60))
def test_unique_of_the_sorted_matcher_is_numpys(values: list[int]) -> None:
    import numpy as np

    a = np.array(values, dtype=np.int64)
    uniq, inverse = rowdiff._unique(np, a)
    want, want_inverse = np.unique(a, return_inverse=True)
    assert uniq.tolist() == want.tolist()
    assert inverse.tolist() == want_inverse.reshape(-1).tolist()


def _diff_to_layout(tmp: Path, old: str, new: str, layout: TableLayout) -> list[RowDiff]:
    """`new` (under `layout`, whose key the snapshot `old` may not have) against `old`,
    every way; the ways agree."""
    (tmp / "snap.csv").write_text(old)
    (tmp / "t.csv").write_text(new)
    results = diffs_every_way(tmp / "snap.csv", tmp / "t.csv", layout)
    for d, problems in results:
        assert problems == [] and d == results[0][0]
    return [d for d, _ in results]


def test_a_key_repeating_among_old_rows_removes_the_rows_it_does_not_pair(
    tmp_path: Path,
) -> None:
    # The key changed since the snapshot (host -> env): two old rows share env=prod. Each old
    # row is changed or removed, none is lost (before: 0 changed and 0 removed of 3 rows).
    old = "host,env,owner\nh1,prod,ana\nh2,prod,bob\nh3,dev,cy\n"
    new = "env,owner\nprod,ana\ndev,cy\n"
    d = _diff_to_layout(tmp_path, old, new, TableLayout(("env", "owner"), (0,)))[0]
    assert (d.added, d.changed, d.removed, d.unchanged) == (0, 2, 1, 0)
    assert d.changed + d.removed == d.old_rows == 3
    removed = [c for c in d.changes if c.op == REMOVE]
    assert [(c.key, c.before) for c in removed] == [(("prod",), ("h1", "prod", "ana"))]
    assert [c.key for c in d.changes] == [("dev",), ("prod",), ("prod",)]


def test_a_key_column_the_snapshot_lacks_is_empty_in_its_rows_keys(tmp_path: Path) -> None:
    # The key widened to columns the snapshot does not have: an old row's key holds its own
    # cells, "" for the new columns (not the old row's first cells under the new titles, and
    # no crash when the snapshot has fewer columns than the key).
    old = "host,owner\nh1,ana\nh2,bob\n"
    new = "host,zone,region,owner\nh1,,,ana\nh2,eu,west,bob\n"
    layout = TableLayout(("host", "zone", "region", "owner"), (0, 1, 2))
    d = _diff_to_layout(tmp_path, old, new, layout)[0]
    assert [(c.op, c.key) for c in d.changes] == [
        (CHANGE, ("h1", "", "")),
        (REMOVE, ("h2", "", "")),
        (ADD, ("h2", "eu", "west")),
    ]
    assert (d.added, d.changed, d.removed) == (1, 1, 1)
    assert d.changes[1].before == ("h2", "bob")
