"""Adversarial checks of the column-wise row diff (`ChangeColumns`) and of the digest and
JSON writer that read its columns directly.

Every path of the diff (byte aligner, line aligner, hashing with a set and with sorted
arrays, block sizes down to 64 bytes) is compared with an independent model of the diff
(rows paired by key, compared title by title); the JSON written from the columns with what
`dump(row_object(...))` writes for each change; the digest read from the columns with the
true counts of the transitions; the key counter's child with the count in process.
"""

from __future__ import annotations

import collections
import json
import random
import tempfile
from pathlib import Path
from typing import Any

import plan_cases as pc
import pytest
from helpers import diffs_every_way, fast_client_options, make_repo, manifest_yaml, run_cli
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from bpsync import keycount, rowdiff, table
from bpsync.emulator import Emulator
from bpsync.plan import ADD, CHANGE, REMOVE, RowChange, RowChanges
from bpsync.render import digest as digest_mod
from bpsync.render import json as json_mod
from bpsync.render.digest import DigestBuilder, digest
from bpsync.render.json import dump, row_object
from bpsync.table import TableLayout, format_row

HEADER = ("host", "env", "owner")
ONE_KEY = TableLayout(HEADER, (0,))
TWO_KEYS = TableLayout(HEADER, (0, 1))
RANK = {REMOVE: 0, CHANGE: 1, ADD: 2}
# Values BigPanda takes (no line breaks) that stress CSV quoting, JSON escaping, the `%`
# templates, the key counter's cell separator (\x1f) and other line separators of str.
HOSTILE = st.text(
    alphabet=st.sampled_from(list('ab Z0,"\\%s{}:é€😀\t\x01\x7f\x1f\x85\u2028')),
    max_size=5,
)
FIELDS = [("host", "query_tag", None), ("env", "result_tag", None), ("owner", "result_tag", None)]


def _csv(header: tuple[str, ...], rows: list[tuple[str, ...]], end: str = "\n") -> str:
    return "".join(format_row(r) + end for r in [header, *rows])


def _model(
    old: list[tuple[str, ...]],
    new_header: tuple[str, ...],
    new: list[tuple[str, ...]],
    key_titles: tuple[str, ...],
) -> list[RowChange]:
    """The row changes by definition: rows paired by key, equal title by title unchanged;
    lines count the header as line 1 (no value holds a line break)."""
    old_at = [HEADER.index(t) for t in key_titles]
    new_at = [new_header.index(t) for t in key_titles]
    olds = {tuple(r[i] for i in old_at): (n, r) for n, r in enumerate(old, 2)}
    out: list[RowChange] = []
    for n, row in enumerate(new, 2):
        key = tuple(row[i] for i in new_at)
        hit = olds.pop(key, None)
        if hit is None:
            out.append(RowChange(ADD, key, None, row, n))
        elif dict(zip(HEADER, hit[1], strict=True)) != dict(zip(new_header, row, strict=True)):
            out.append(RowChange(CHANGE, key, hit[1], row, n, hit[0]))
    out += [RowChange(REMOVE, k, r, None, n, n) for k, (n, r) in olds.items()]
    return sorted(out, key=lambda c: (c.key, RANK[c.op], c.line))


def _all_ways(
    tmp: Path, old_text: str, new_text: str, layout: TableLayout
) -> list[tuple[Any, list[str]]]:
    snap, path = tmp / "snap.csv", tmp / "t.csv"
    snap.write_text(old_text, "utf-8")
    path.write_bytes(new_text.encode("utf-8"))
    return diffs_every_way(snap, path, layout)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    rows=st.lists(st.tuples(HOSTILE, HOSTILE, HOSTILE), min_size=0, max_size=30),
    edits=st.lists(st.tuples(st.integers(0, 99), st.integers(0, 2), HOSTILE), max_size=10),
    drop=st.sets(st.integers(0, 29), max_size=8),
    added=st.lists(st.tuples(HOSTILE, HOSTILE, HOSTILE), max_size=5),
    two_keys=st.booleans(),
    order=st.sampled_from([(0, 1, 2), (2, 0, 1), (1, 2, 0)]),
    shuffle=st.integers(0, 2),
    requote=st.booleans(),
    crlf=st.booleans(),
    block=st.sampled_from([64, 200, 4096]),
    child=st.booleans(),
)
def test_every_path_gives_the_changes_by_definition(
    monkeypatch: pytest.MonkeyPatch,
    rows: list[tuple[str, str, str]],
    edits: list[tuple[int, int, str]],
    drop: set[int],
    added: list[tuple[str, str, str]],
    two_keys: bool,
    order: tuple[int, int, int],
    shuffle: int,
    requote: bool,
    crlf: bool,
    block: int,
    child: bool,
) -> None:
    """Hostile values, empty keys, columns re-ordered, rows shuffled, cells quoted where
    canonical form would not, CRLF, small blocks, the key counter's child: every path gives
    the model's changes (keys, both sides' cells, line numbers, in key order) and counts."""
    monkeypatch.setattr(table, "BLOCK_SIZE", block)
    if child:
        monkeypatch.setattr(rowdiff, "_CHILD_COUNT_BYTES", 0)
    layout = TWO_KEYS if two_keys else ONE_KEY
    width = 2 if two_keys else 1
    seen: set[tuple[str, ...]] = set()
    old = [r for r in rows if r[:width] not in seen and not seen.add(r[:width])]
    new = list(old)
    for at, col, value in edits:
        if new and col >= width:
            i = at % len(new)
            new[i] = tuple(value if c == col else v for c, v in enumerate(new[i]))  # type: ignore[assignment]
    new = [r for i, r in enumerate(new) if i not in drop]
    for r in added:
        if r[:width] not in {x[:width] for x in new}:
            new.append(r)
    assume(new)  # a table of no rows is refused (tested elsewhere)
    if shuffle:
        random.Random(shuffle).shuffle(new)
    new_header = tuple(HEADER[i] for i in order)
    new = [tuple(r[i] for i in order) for r in new]
    lines = [format_row(r) for r in [new_header, *new]]
    if requote and len(lines) > 1:
        lines[1] = ",".join('"' + c.replace('"', '""') + '"' for c in new[0])
    end = "\r\n" if crlf else "\n"
    text = "".join(line + end for line in lines)
    key_titles = tuple(HEADER[k] for k in layout.key_indexes)
    want = _model(old, new_header, new, key_titles)
    with tempfile.TemporaryDirectory() as tmp:
        results = _all_ways(Path(tmp), _csv(HEADER, old), text, layout)
    for d, problems in results:
        assert [p for p in problems if "Error" in p or "duplicate" in p] == []
        assert d.info.ok
        assert list(d.changes) == want
        ops = collections.Counter(c.op for c in want)
        assert (d.added, d.changed, d.removed) == (ops[ADD], ops[CHANGE], ops[REMOVE])
        assert d.unchanged == len(new) - ops[ADD] - ops[CHANGE]
    assert results[0][1] == results[1][1] == results[2][1]


@pytest.mark.parametrize("block", [64, 4096])
@pytest.mark.parametrize("child", [False, True])
def test_duplicate_keys_are_reported_on_every_path(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, block: int, child: bool
) -> None:
    """A changed row whose key an unchanged row holds, and two added rows sharing a key
    (one quoted): the same errors, at the same lines, by every path."""
    monkeypatch.setattr(table, "BLOCK_SIZE", block)
    if child:
        monkeypatch.setattr(rowdiff, "_CHILD_COUNT_BYTES", 0)
    old = "".join(f"h{i:03d},e,o\n" for i in range(10))
    new = old + 'h003,"x,y",z\nh100,a,b\nh100,a,c\n'
    header = "host,env,owner\n"
    for d, problems in _all_ways(tmp_path, header + old, header + new, ONE_KEY):
        assert not d.info.ok and len(d.changes) == 0
        assert problems == [
            "t.csv:12: duplicate key host='h003' (first at line 5) — each key may appear "
            "once: merge or remove a row",
            "t.csv:14: duplicate key host='h100' (first at line 13) — each key may appear "
            "once: merge or remove a row",
        ]


@pytest.mark.parametrize("block", [64, 4096])
def test_a_repeated_line_a_table_cut_to_one_row_and_an_empty_snapshot(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, block: int
) -> None:
    """The same line again in a later block is not unchanged; a table left with one row
    removes every other, at the snapshot's lines; an empty snapshot adds every row."""
    monkeypatch.setattr(table, "BLOCK_SIZE", block)
    header = "host,env,owner\n"
    rows = [f"h{i:03d},e,o" for i in range(30)]
    old = header + "".join(r + "\n" for r in rows)
    for d, problems in _all_ways(tmp_path, old, old + rows[2] + "\n", ONE_KEY):
        assert not d.info.ok
        assert any("t.csv:32" in p and "duplicate" in p for p in problems), problems
    for d, _ in _all_ways(tmp_path, old, header + rows[29] + "\n", ONE_KEY):
        assert d.info.ok and (d.added, d.changed, d.removed, d.unchanged) == (0, 0, 29, 1)
        assert [(c.op, c.key, c.line, c.old_line) for c in d.changes] == [
            (REMOVE, (f"h{i:03d}",), i + 2, i + 2) for i in range(29)
        ]
    for d, _ in _all_ways(tmp_path, header, old, ONE_KEY):
        assert d.info.ok and (d.added, d.changed, d.removed) == (30, 0, 0)
        assert [(c.op, c.line, c.old_line) for c in d.changes] == [
            (ADD, i + 2, None) for i in range(30)
        ]


def _plan_of(d: Any, old_columns: tuple[str, ...], columns: tuple[str, ...]) -> Any:
    return pc.table(
        columns=columns,
        old_columns=old_columns,
        key_columns=("host",),
        rows_added=d.added,
        rows_changed=d.changed,
        rows_removed=d.removed,
        rows_unchanged=d.unchanged,
        row_changes=RowChanges(d.changes),
        new_rows=d.info.rows,
        old_rows=d.old_rows,
    )


def _raw(rc: RowChange, t: Any, column: str) -> tuple[str | None, str | None]:
    """A change's value of `column` on both sides (None: no such column on that side)."""
    a = rc.before[t.old_columns.index(column)] if column in t.old_columns and rc.before else None
    b = rc.after[t.columns.index(column)] if column in t.columns and rc.after else None
    return a, b


def _shown(pair: tuple[str | None, str | None]) -> tuple[str | None, str | None]:
    """A transition as the digest shows it (values past the clip cut, with their `…`)."""
    return (
        digest_mod._shown_value(digest_mod._clip(pair[0])),
        digest_mod._shown_value(digest_mod._clip(pair[1])),
    )


def _true_counts(changes: list[RowChange], t: Any) -> dict[str, collections.Counter[Any]]:
    """Per column, how many changes show each transition, counted one by one."""
    out: dict[str, collections.Counter[Any]] = collections.defaultdict(collections.Counter)
    for rc in changes:
        for c in dict.fromkeys((*t.old_columns, *t.columns)):
            pair = _raw(rc, t, c)
            if rc.op == CHANGE and c not in t.key_columns and pair[0] != pair[1]:
                out[c][_shown(pair)] += 1
    return out


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 400),
    distinct=st.sampled_from([1, 5, 150, 10_000]),
    long=st.booleans(),
    moved=st.booleans(),
    seed=st.integers(0, 1000),
)
def test_digest_of_columns_counts_true_transitions(
    n: int, distinct: int, long: bool, moved: bool, seed: int
) -> None:
    """Read from the columns (with evictions past 128 distinct transitions, values past the
    clip, quoted cells, columns moved): each column's rows are exact, a transition marked
    exact has its true count, an estimate is an upper bound off by at most its error, the
    example is the first change by key, and the samples are the first changes by key."""
    rnd = random.Random(seed)
    old = [(f"h{i:04d}", rnd.choice("pq"), f"o{i % 7}") for i in range(n)]
    pad = "L" * 201 if long else ""
    new = []
    for i, (h, e, o) in enumerate(old):
        x = rnd.random()
        if x < 0.1:
            continue
        if x < 0.7:
            o = rnd.choice([f"v{rnd.randrange(distinct)}{pad}", 'q"uo,te', "%s\\"])
        if x < 0.3:
            e = rnd.choice("pqz")
        new.append((h, e, o))
        if rnd.random() < 0.05:
            new.append((f"n{i:04d}", "p", "x"))
    new.append(("~anchor", "p", "x"))  # the table is never empty
    columns = ("owner", "host", "env") if moved else HEADER
    new = [tuple(r[HEADER.index(c)] for c in columns) for r in new]
    with tempfile.TemporaryDirectory() as tmp:
        (d, problems), *_ = _all_ways(Path(tmp), _csv(HEADER, old), _csv(columns, new), ONE_KEY)
    assert d.info.ok, problems
    t = _plan_of(d, HEADER, columns)
    assert t.row_changes.columns is not None
    changes = list(d.changes)
    got = digest(t, sample=3)
    truth = _true_counts(changes, t)
    assert {c.column: c.rows for c in got.columns} == {c: v.total() for c, v in truth.items()}
    for col in got.columns:
        first = next(
            rc for rc in changes if rc.op == CHANGE and len(set(_raw(rc, t, col.column))) == 2
        )
        assert (col.example.old, col.example.new) == _shown(_raw(first, t, col.column))
        for tr in col.top:
            true = truth[col.column][(tr.old, tr.new)]
            if tr.exact:
                assert tr.rows == true
            else:
                assert tr.rows - tr.error <= true <= tr.rows
                assert tr.rows - tr.error >= 2
    for op in (ADD, CHANGE, REMOVE):
        assert got.samples[op] == [rc for rc in changes if rc.op == op][:3]


def test_digest_of_columns_equals_digest_of_the_same_changes_one_by_one(tmp_path: Path) -> None:
    """Without eviction the column-wise digest is the row-wise one exactly (rows, top,
    more, example, samples)."""
    rnd = random.Random(7)
    old = [(f"h{i:04d}", rnd.choice("pq"), f"o{i % 9}") for i in range(300)]
    new = [(h, rnd.choice("pqz"), f"o{rnd.randrange(20)}") for h, _, _ in old[5:]]
    new.append(("zz", "a,b", 'c"d'))
    (d, _), *_ = _all_ways(tmp_path, _csv(HEADER, old), _csv(HEADER, new), ONE_KEY)
    t = _plan_of(d, HEADER, HEADER)
    by_columns = digest(t, sample=4)
    builder = DigestBuilder(_plan_of(d, HEADER, HEADER), 4)
    for rc in list(d.changes):
        builder.add(rc)
    assert by_columns == builder.result()


def test_digest_after_eviction_counts_a_late_repeat_exactly(tmp_path: Path) -> None:
    """200 distinct transitions (evicted past 128), then one transition three times: it is
    shown as exactly 3 rows (the counter held it from the first). The code at cba3f8d
    evicted one row at a time and showed it as ~4 (an estimate)."""
    old = [(f"h{i:04d}", "p", f"o{i}") for i in range(200)]
    old += [(f"h{i:04d}", "p", "z") for i in range(200, 203)]
    new = [(h, e, o + "x") for h, e, o in old]
    (d, _), *_ = _all_ways(tmp_path, _csv(HEADER, old), _csv(HEADER, new), ONE_KEY)
    (col,) = digest(_plan_of(d, HEADER, HEADER)).columns
    assert col.rows == 203 and col.more
    assert [(tr.old, tr.new, tr.rows, tr.exact) for tr in col.top] == [("z", "zx", 3, True)]


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    changes=st.lists(
        st.tuples(
            st.sampled_from([ADD, CHANGE, REMOVE]), st.lists(HOSTILE, min_size=3, max_size=3)
        ),
        min_size=1,
        max_size=12,
    ),
    batch=st.sampled_from([1, 2, 3, 4096]),
    titles=st.sampled_from([HEADER, ("h%s", 'e"\\', "o%d")]),
)
def test_json_from_columns_is_what_the_json_encoder_writes(
    monkeypatch: pytest.MonkeyPatch,
    changes: list[tuple[str, list[str]]],
    batch: int,
    titles: tuple[str, ...],
) -> None:
    """Changes held by column written as JSON (a batch plain, the next one escaped, titles
    holding `%`, quotes and backslashes) equal `dump(row_object(...))` change by change, in
    key order, and the digest written after them is the one `digest` gives."""
    monkeypatch.setattr(json_mod, "_BATCH", batch)
    anchor = format_row(("~anchor", "a", "b"))  # unchanged: the table is never empty
    old_lines, new_lines, rows = [anchor], [anchor], []
    for i, (op, cells) in enumerate(changes):
        cells[0] = f"k{i:03d}{cells[0]}"
        old = (cells[0], "old", "p%s")
        if op != ADD:
            old_lines.append(format_row(old))
        if op != REMOVE:
            new_lines.append(format_row(cells))
        rows.append((op, cells, old))
    old_text = format_row(titles) + "\n" + "".join(x + "\n" for x in old_lines)
    new_text = format_row(titles) + "\n" + "".join(x + "\n" for x in new_lines)
    layout = TableLayout(titles, (0,))
    with tempfile.TemporaryDirectory() as tmp:
        results = _all_ways(Path(tmp), old_text, new_text, layout)
    d, problems = results[-1]
    assert d.info.ok, problems
    t = pc.table(
        columns=titles,
        old_columns=titles,
        key_columns=(titles[0],),
        rows_added=d.added,
        rows_changed=d.changed,
        rows_removed=d.removed,
        row_changes=RowChanges(d.changes),
    )
    out = json_mod.render_json(pc.plan(t))
    written = json.loads(out)["tables"][0]
    assert written["row_changes"] == [json.loads(dump(row_object(t, rc))) for rc in d.changes]
    glance = json_mod.glance_object(t, digest(t))
    assert written["column_changes"] == json.loads(dump(glance["column_changes"]))


@settings(max_examples=40, deadline=None)
@given(
    rows=st.lists(st.lists(HOSTILE, min_size=3, max_size=3), min_size=1, max_size=20),
    width=st.integers(1, 3),
    pick=st.lists(st.booleans(), min_size=20, max_size=20),
    ask_once=st.booleans(),
)
def test_key_counter_child_agrees_with_the_count_in_process(
    rows: list[list[str]], width: int, pick: list[bool], ask_once: bool
) -> None:
    """Keys holding the child's cell separator (\\x1f), other line separators of str
    (\\x85, \\u2028), empty keys: the child's answer (and its early `held_once`) is the
    count in process."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "t.csv"
        path.write_text(_csv(HEADER, [tuple(r) for r in rows]), "utf-8")
        idx = tuple(range(width))
        keys = list(
            dict.fromkeys(
                tuple(r[:width]) for r, p in zip(rows, pick[: len(rows)], strict=True) if p
            )
        )
        if not keys:
            keys = [tuple(rows[0][:width])]
        want = keycount.count_keys(path, idx, keys)
        counter = keycount.KeyCounter(path, idx)
        try:
            if ask_once:
                assert counter.held_once(keys) == (want == len(keys))
            else:
                assert counter.count(keys) == want
        finally:
            counter.close()


def test_plan_json_text_and_saved_plan_agree_with_the_diff(tmp_path: Path) -> None:
    """Through the CLI, against an applied snapshot: quoted cells, `%` and backslashes, a
    value past the clip, columns moved: the JSON plan's rows are the model's, and a saved
    plan shows the same rows and digest."""
    old = [(f"h{i:03d}", "p", f"o{i % 4}") for i in range(40)]
    old[5] = ("h005", 'a,"b"', "%s\\")
    root = make_repo(
        tmp_path,
        manifests={"t": manifest_yaml("t.csv", FIELDS)},
        tables={"t.csv": _csv(HEADER, old)},
    )
    with Emulator(port=0, job_seconds=0.01, rate_limit=False) as emu:
        env = {"BIGPANDA_API_URL": emu.url, "BIGPANDA_TOKEN": "t0ken-for-tests"}
        code, _, err = run_cli(
            ["apply", "--auto-approve"], root, env, client_options=fast_client_options()
        )
        assert code == 0, err
        edits = {"h003": ("h003", "p", "L" * 250), "h006": ("h006", 'a,"b"', "é\t")}
        new = [edits.get(r[0], r) for r in old if r[0] != "h007"]
        new.append(("n1", "p", "q"))
        columns = ("owner", "host", "env")
        moved = [tuple(r[HEADER.index(c)] for c in columns) for r in new]
        (root / "tables" / "t.csv").write_text(_csv(columns, moved, "\r\n"), "utf-8")
        code, out, err = run_cli(["plan", "--no-refresh", "--format", "json"], root, env)
        assert code == 0, err
        plan = json.loads(out)["tables"][0]
        want = _model(old, columns, moved, ("host",))
        got = [(c["op"], c["key"]["host"], c["line"], c["old_line"]) for c in plan["row_changes"]]
        assert got == [(c.op, c.key[0], c.line, c.old_line) for c in want]
        assert plan["rows"] == {"added": 1, "changed": 2, "removed": 1, "unchanged": 37}
        saved = tmp_path / "plan.out"
        code, _, err = run_cli(["plan", "--no-refresh", "--out", str(saved)], root, env)
        assert code == 0, err
        code, shown, err = run_cli(["show", str(saved), "--format", "json"], root, env)
        assert code == 0, err
        again = json.loads(shown)["tables"][0]
        assert again["row_changes"] == plan["row_changes"]
        assert again["column_changes"] == plan["column_changes"]
        code, text, err = run_cli(["plan", "--no-refresh", "--max-rows", "0"], root, env)
        assert code == 0, err
        assert "~ host=h003" in text and "- host=h007" in text and "+ host=n1" in text
        assert "~ host=h006" in text


def test_row_changes_held_by_column_equal_and_hash_as_the_same_rows_held_as_objects(
    tmp_path: Path,
) -> None:
    old = [(f"h{i}", "p", "o") for i in range(6)]
    new = [(f"h{i}", "p", "x" if i % 2 else "o") for i in range(1, 8)]
    ((d, _), *_) = _all_ways(tmp_path, _csv(HEADER, old), _csv(HEADER, new), ONE_KEY)
    by_column, as_objects = RowChanges(d.changes), RowChanges(list(d.changes))
    assert by_column.columns is not None and as_objects.columns is None
    assert by_column == as_objects and len(by_column) == 6  # 3 changed, 2 added, 1 removed
    assert hash(by_column) == hash(as_objects)
    assert len({by_column, as_objects}) == 1
