"""Issue 17's fast paths give exactly what the general paths give.

A new table whose rows are in key order is planned without a sort and rendered as JSON
straight from its lines; every shortcut is checked here against the general path (the
eager, sorted plan and `dump(row_object(...))`) on random tables, hostile values included.
"""

from __future__ import annotations

import io
import os
import random
import tempfile
from itertools import pairwise
from pathlib import Path
from typing import Any, cast

import plan_cases as pc
import pytest
from helpers import (
    OWNERS_FIELDS,
    FieldSpec,
    fast_client_options,
    make_repo,
    manifest_yaml,
    mutate_rows,
    run_cli,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bpsync import planner, rowdiff, table
from bpsync.config import load_config
from bpsync.emulator import Emulator
from bpsync.manifest import load_manifests
from bpsync.plan import ADD, CHANGE, REMOVE, ChangeColumns, RowChange
from bpsync.render.json import RowEncoder, dump, row_object
from bpsync.state import TableState
from bpsync.table import ProblemSink, TableLayout, TableScan, format_row

# Values that stress JSON escaping, CSV quoting and the row template's `%`.
HOSTILE = st.text(
    alphabet=st.sampled_from(list('ab Z09,"\\%s%d{}:é€😀\t\x01\x7f')), min_size=0, max_size=6
)
SIMPLE = st.text(alphabet=st.sampled_from(list("abcxyz019-_. ")), min_size=1, max_size=6)
TWO_KEYS: tuple[FieldSpec, ...] = (
    ("application", "query_tag", None),
    ("owner", "query_tag", None),
    ("team", "result_tag", None),
)


@settings(max_examples=300, deadline=None)
@given(
    op=st.sampled_from([ADD, CHANGE, REMOVE]),
    cells=st.lists(HOSTILE, min_size=3, max_size=3),
    old=st.lists(HOSTILE, min_size=3, max_size=3),
    line=st.integers(1, 10**7),
    old_line=st.one_of(st.none(), st.integers(1, 10**7)),
)
def test_row_encoder_writes_what_the_json_encoder_writes(
    op: str, cells: list[str], old: list[str], line: int, old_line: int | None
) -> None:
    t = pc.table(columns=("a%s", 'b"\\', "c"), old_columns=("a%s", "c", "d"), key_columns=("a%s",))
    before = None if op == ADD else tuple(old)
    after = None if op == REMOVE else tuple(cells)
    rc = RowChange(op, (cells[0],), before, after, line, old_line)
    assert RowEncoder(t).encode(rc) == dump(row_object(t, rc))


_CHANGE = st.builds(
    lambda op, cells, old, line, old_line: RowChange(
        op,
        (cells[0],),
        None if op == ADD else tuple(old),
        None if op == REMOVE else tuple(cells),
        line,
        old_line,
    ),
    op=st.sampled_from([ADD, CHANGE, REMOVE]),
    cells=st.lists(st.one_of(SIMPLE, HOSTILE, st.just("x\ny")), min_size=3, max_size=3),
    old=st.lists(st.one_of(SIMPLE, SIMPLE, HOSTILE), min_size=3, max_size=3),
    line=st.integers(1, 10**7),
    old_line=st.one_of(st.none(), st.integers(1, 10**7)),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_CHANGE, max_size=12), st.booleans())
def test_a_batch_of_row_changes_is_written_as_each_one_alone(
    batch: list[RowChange], plain: bool
) -> None:
    """The `%` templates of a plain batch write what the cell-by-cell encoder writes: titles
    with `%` and quotes, a missing old line, every op; a hostile cell (a line break too, from
    a plan file written by hand) sends the batch back to the encoder."""
    if plain:  # mostly batches the templates take
        batch = [rc._replace(key=("k",), after=rc.after and ("k", "v", "w")) for rc in batch]
        batch = [rc._replace(before=rc.before and ("k", "w", "x")) for rc in batch]
    t = pc.table(columns=("a%s", 'b"\\', "c"), old_columns=("a%s", "c", "d"), key_columns=("a%s",))
    enc = RowEncoder(t)
    assert enc.encode_batch(batch) == ["      " + dump(row_object(t, rc)) for rc in batch]


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from([ADD, CHANGE, REMOVE]),
            st.lists(st.one_of(SIMPLE, SIMPLE, SIMPLE, HOSTILE), min_size=3, max_size=3),
            st.lists(st.one_of(SIMPLE, SIMPLE, SIMPLE, HOSTILE), min_size=3, max_size=3),
            st.integers(1, 10**7),
            st.integers(1, 10**7),
        ),
        max_size=40,
    ),
    st.integers(1, 16),
)
def test_changes_held_by_column_are_written_as_row_by_row(
    rows: list[tuple[str, list[str], list[str], int, int]], batch: int
) -> None:
    """The column-wise writer (a diff's `ChangeColumns`, written from their lines) writes
    what the row encoder writes for the same changes, ops mixed in key order, in batches of
    any size; lines holding quotes, escapes or line breaks leave a batch to the encoder."""
    t = pc.table(columns=("a%s", 'b"\\', "c"), old_columns=("a%s", "c", "d"), key_columns=("a%s",))
    rows.sort(key=lambda r: r[1][0] if r[0] != REMOVE else r[2][0])
    changes = ChangeColumns(
        [op for op, *_ in rows],
        [((new if op != REMOVE else old)[0],) for op, new, old, *_ in rows],
        [None if op == ADD else format_row(old) for op, _, old, *_ in rows],
        [None if op == REMOVE else format_row(new) for op, new, *_ in rows],
        [n for *_, n, _ in rows],
        [None if op == ADD else o for op, *_, o in rows],
        rowdiff._cells_of,
    )
    enc = RowEncoder(t)
    for start in range(0, len(rows), batch):
        at = range(start, min(start + batch, len(rows)))
        by_rows = enc.encode_batch(changes.rows(at))
        assert by_rows == ["      " + dump(row_object(t, rc)) for rc in changes.rows(at)]
        by_columns = enc.encode_columns(changes, at)
        lines = [
            x
            for side in (changes.before, changes.after)
            for x in side[at.start : at.stop]
            if x is not None
        ]
        plain = all('"' not in x and "\\" not in x and min(x) >= " " for x in lines)
        assert by_columns == (by_rows if plain else None)


def test_row_encoder_falls_back_where_a_dict_would_differ() -> None:
    t = pc.table(columns=("a", "a", "b"), key_columns=("a",))
    rc = RowChange(ADD, ("1",), None, ("1", "2", "3"), 2)
    assert RowEncoder(t).encode(rc) == dump(row_object(t, rc))


def _csv(rows: list[list[str]], crlf: bool) -> str:
    end = "\r\n" if crlf else "\n"
    return "".join(format_row(r) + end for r in [["application", "owner", "team"], *rows])


def _plan(root: Path, *argv: str) -> str:
    code, out, err = run_cli(["plan", "--no-refresh", *argv], root)
    assert code == 0, err
    return "".join(x for x in out.splitlines(True) if '"created_at"' not in x)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    keys=st.lists(SIMPLE, min_size=1, max_size=40, unique=True),
    values=st.lists(HOSTILE, min_size=80, max_size=80),
    order=st.sampled_from(["sorted", "shuffled", "reversed"]),
    crlf=st.booleans(),
    two_keys=st.booleans(),
    seed=st.integers(0, 1000),
)
def test_new_table_plan_equals_the_general_path(
    monkeypatch: pytest.MonkeyPatch,
    keys: list[str],
    values: list[str],
    order: str,
    crlf: bool,
    two_keys: bool,
    seed: int,
) -> None:
    """Lazy rows (fast path when in key order) against the eager, sorted rows: same bytes,
    in JSON and in text, whatever the order of the rows and the quoting of their values."""
    keys = sorted(keys)
    if order == "shuffled":
        random.Random(seed).shuffle(keys)
    elif order == "reversed":
        keys.reverse()
    rows = [[k, values[2 * i] or "x", values[2 * i + 1]] for i, k in enumerate(keys)]
    fields = TWO_KEYS if two_keys else OWNERS_FIELDS
    with tempfile.TemporaryDirectory() as tmp:
        root = make_repo(
            Path(tmp),
            manifests={"owners": manifest_yaml("owners.csv", fields)},
            tables={"owners.csv": _csv(rows, crlf)},
        )
        monkeypatch.setattr(planner, "MATERIALISE_ROWS", 10**9)
        eager = _plan(root, "--format", "json"), _plan(root, "--max-rows", "3")
        monkeypatch.setattr(planner, "MATERIALISE_ROWS", 0)
        lazy = _plan(root, "--format", "json"), _plan(root, "--max-rows", "3")
    assert lazy == eager


@settings(max_examples=200, deadline=None)
@given(
    rows=st.lists(st.tuples(SIMPLE, HOSTILE), min_size=1, max_size=30),
    two_keys=st.booleans(),
)
def test_scan_sees_whether_keys_ascend(rows: list[tuple[str, str]], two_keys: bool) -> None:
    """`keys_ascending` is exactly "every key greater than the one before", in plain and in
    quoted blocks."""
    layout = TableLayout(("a", "b"), (0, 1) if two_keys else (0,))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "t.csv"
        path.write_text("".join(format_row(r) + "\n" for r in [("a", "b"), *rows]), "utf-8")
        scan = TableScan(path, layout, ProblemSink(str(path)), keys="off", track_order=True)
        scan.run()
    ks = [r if two_keys else r[:1] for r in rows]
    assert scan.keys_ascending == all(x < y for x, y in pairwise(ks))


def test_first_rows_of_an_ordered_new_table_read_only_what_is_shown(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Showing the first rows of a table in key order stops reading after them."""
    n = 200_000
    csv = "application,owner,team\n" + "".join(f"app{i:06d},o,t\n" for i in range(n))
    root = make_repo(
        tmp_path,
        manifests={"owners": manifest_yaml("owners.csv")},
        tables={"owners.csv": csv},
    )
    monkeypatch.setattr(planner, "MATERIALISE_ROWS", 0)
    read: list[int] = []
    real = planner._add_blocks

    def counting(*args: object, **kw: object) -> object:
        for block in real(*args, **kw):  # type: ignore[arg-type]
            read.append(len(block[1]))
            yield block

    monkeypatch.setattr(planner, "_add_blocks", counting)
    code, out, _ = run_cli(["plan", "--no-refresh", "--max-rows", "5"], root)
    assert code == 0
    assert "app000000" in out and "app000004" in out and "app000005" not in out
    # The one scan validates; rendering reads one block, not the table again.
    assert sum(read) < n


def test_json_of_a_lazy_ordered_table_streams_in_blocks() -> None:
    """A big all-add table in key order: one write per block of rows, not per row."""
    writes: list[int] = []

    class Out(io.StringIO):
        def write(self, s: str) -> int:
            writes.append(len(s))
            return super().write(s)

    n = 20_000
    lines = [f"app{i:07d},ana,https://wiki/{i}" for i in range(n)]

    def blocks() -> object:
        return iter([(2, lines[: n // 2]), (2 + n // 2, lines[n // 2 :])])

    from bpsync.plan import RowChanges

    rc = RowChanges(lazy=lambda: iter(()), count=n, ordered=True, add_blocks=blocks)
    t = pc.table("big", action="create", rows_added=n, row_changes=rc, new_rows=n)
    from bpsync.render.json import write_json

    buf = Out()
    write_json(pc.plan(t), buf)
    assert len(writes) < 40
    assert buf.getvalue().count('\n      {"op": "add"') == n


# -- apply: one read of each table ------------------------------------------------------

TOKEN = "tok-fastpath-1d2e"


def test_apply_reads_each_table_once_across_its_two_plans(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, emu: Emulator
) -> None:
    """apply plans before the refresh and after it; the rows are read only the first time,
    and the upload still holds exactly the table."""
    csv = "application,owner,team\n" + "".join(f"app{i:03d},o{i},t\n" for i in range(50))
    root = make_repo(
        tmp_path, manifests={"owners": manifest_yaml("owners.csv")}, tables={"owners.csv": csv}
    )
    reads: list[str] = []
    real = planner._rows

    def counting(m: Any, *args: Any) -> Any:
        reads.append(m.name)
        return real(m, *args)

    monkeypatch.setattr(planner, "_rows", counting)
    env = {"BIGPANDA_API_URL": emu.url, "BIGPANDA_TOKEN": TOKEN}
    code, _, err = run_cli(
        ["apply", "--auto-approve"], root, env, client_options=fast_client_options()
    )
    assert code == 0, err
    assert reads == ["owners"]
    (eid,) = emu.store.enrichments
    assert len(emu.table_rows(eid) or []) == 50


def test_rows_memo_reads_again_when_the_csv_or_the_state_moved(tmp_path: Path) -> None:
    root = make_repo(
        tmp_path,
        manifests={"owners": manifest_yaml("owners.csv")},
        tables={"owners.csv": "application,owner,team\na,b|c,d\n"},
    )
    (m,), _ = load_manifests(load_config(root, {}))
    memo = planner.RowsMemo()
    computed: list[int] = []

    def rows(sink: ProblemSink) -> Any:
        def compute() -> Any:
            computed.append(1)
            sink.warning(2, "a pipe")
            return object()

        return memo.rows(m, None, None, sink, compute)

    first, again = ProblemSink("x"), ProblemSink("x")
    assert rows(first) is rows(again)
    assert again.problems == first.problems and again.warnings == 1  # warnings kept
    assert len(computed) == 1
    ts = TableState("owners", "e1", "v1", {})
    other, third, fourth = (cast(Any, object()) for _ in range(3))
    assert memo.rows(m, ts, "e1", ProblemSink("x"), lambda: other) is other
    assert memo.rows(m, ts, "e1", ProblemSink("x"), lambda: third) is other  # nothing moved
    os.utime(m.csv_path, ns=(1, 1))
    assert memo.rows(m, ts, "e1", ProblemSink("x"), lambda: third) is third
    # Other bytes with the same size and mtime: the SHA-256 tells, never reused.
    st = m.csv_path.stat()
    m.csv_path.write_text("application,owner,team\nb,b|c,d\n", "utf-8")
    os.utime(m.csv_path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert memo.rows(m, ts, "e1", ProblemSink("x"), lambda: fourth) is fourth


# -- the aligner keeps in sync through dense edits ---------------------------------------


def _aligned_and_hashed(
    tmp: Path, old: list[str], new: list[str], limit: int = 1_000_000
) -> tuple[Any, Any]:
    layout = TableLayout(("host", "env", "owner"), (0,))
    snap, path = tmp / "snap.csv", tmp / "t.csv"
    snap.write_text("host,env,owner\n" + "".join(r + "\n" for r in old), "utf-8")
    path.write_text("host,env,owner\n" + "".join(r + "\n" for r in new), "utf-8")
    out = []
    for align_limit in (limit, 0):  # 0: alignment gives up at once, hashing takes over
        opener = lambda: snap.open("rb")  # noqa: E731
        out.append(
            rowdiff.diff_table(path, layout, ProblemSink("t"), opener, align_limit=align_limit)
        )
    return out[0], out[1]


@pytest.mark.parametrize("fraction", [0.1, 0.5])
def test_dense_edits_stay_aligned_across_block_ends(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, fraction: float
) -> None:
    """10% and 50% of 20,000 rows touched, read in 4 KiB blocks (hundreds of block ends):
    alignment never loses sync (it used to, once a block ended on a changed row), keeps
    about as many unmatched lines as rows touched, and gives the exact (hashed) diff."""
    monkeypatch.setattr(table, "BLOCK_SIZE", 4096)
    rnd = random.Random(7)
    old = [f"host{i:06d},prod,team{i % 97}" for i in range(20_000)]
    new = mutate_rows(old, rnd, fraction)
    hashed_calls: list[int] = []
    real = rowdiff._hashed_diff

    def hashed(*args: Any) -> Any:
        hashed_calls.append(1)
        return real(*args)

    monkeypatch.setattr(rowdiff, "_hashed_diff", hashed)
    # Unmatched lines: about two per changed row, one per added or removed one.
    limit = int(2 * fraction * len(old)) + 200
    aligned, by_hash = _aligned_and_hashed(tmp_path, old, new, limit)
    assert hashed_calls == [1]  # only the limit-0 run hashed: alignment held
    assert aligned == by_hash


def test_shuffled_rows_give_up_alignment_within_the_first_lines(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A re-ordered table is seen as such after EARLY_LINES lines, not at the unmatched
    limit: the new table is not read through by a trial doomed to fail."""
    rnd = random.Random(3)
    old = [f"host{i:06d},prod,team{i % 97}" for i in range(60_000)]
    new = old[:]
    rnd.shuffle(new)
    monkeypatch.setattr(table, "BLOCK_SIZE", 64 * 1024)
    fed: list[int] = []
    real = rowdiff._Aligner.feed

    def feed(self: Any, first: int, lines: list[str]) -> None:
        fed.append(len(lines))
        real(self, first, lines)

    monkeypatch.setattr(rowdiff._Aligner, "feed", feed)
    aligned, by_hash = _aligned_and_hashed(tmp_path, old, new)
    assert aligned == by_hash and aligned.unchanged == 60_000
    assert sum(fed) < rowdiff._Aligner.EARLY_LINES + 5_000  # stopped after ~20,000 lines


def test_batched_output_passes_big_pieces_on_whole_and_keeps_the_order() -> None:
    from bpsync.cli.core import _Batched

    target = io.StringIO()
    writes: list[int] = []
    real = target.write

    def write(s: str) -> int:
        writes.append(len(s))
        return real(s)

    target.write = write  # type: ignore[method-assign]
    pieces = ["a" * 10, "B" * 100, "c" * 3, "D" * 50, "e"]
    with _Batched(target, size=40) as out:
        for p in pieces:
            out.write(p)
    assert target.getvalue() == "".join(pieces)
    assert writes[:2] == [10, 100]  # what was pending goes first, then the big piece whole


@pytest.mark.parametrize("titles", [("a", "b", "c"), ("100%", "%s", "x%%d"), ("k",)])
@pytest.mark.parametrize("keys", [(0,), (0, -1)])
def test_block_built_rows_equal_the_row_template(
    titles: tuple[str, ...], keys: tuple[int, ...]
) -> None:
    """The column-wise build of an add block writes what `template % row` writes, titles
    holding `%` included."""
    from bpsync.render import json as jr

    key_at = tuple(sorted({k % len(titles) for k in keys}))
    t = cast(Any, type("T", (), {}))()
    t.columns, t.old_columns = titles, titles
    t.key_columns = tuple(titles[k] for k in key_at)
    enc = RowEncoder(t)
    template = jr.ROW_INDENT + enc.add_template()
    parts = [x.replace("%%", "%") for x in jr._FIELD.split(template)]
    lines = [",".join(f"v{r}{c}" for c in range(len(titles))) for r in range(5)]
    built = jr._plain_rows(parts, key_at, len(titles), "\n".join(lines), len(lines), 7)
    cells = [line.split(",") for line in lines]
    expected = ",\n".join(
        template % (*(c[k] for k in key_at), *c, n) for n, c in enumerate(cells, 7)
    )
    assert built == expected
    assert jr._plain_rows(parts, key_at, len(titles), "a,b\nc", 2, 1) is None  # cells short
