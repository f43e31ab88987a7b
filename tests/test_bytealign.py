"""The byte-aligned row diff (the in-order fast path against an applied snapshot) gives what
the line aligner and the hashing diff give: the same rows, counts, line numbers, problems and
canonical SHA-256, on random edits, hostile values and every block size."""

from __future__ import annotations

import hashlib
import random
import tempfile
from pathlib import Path
from typing import Any

import pytest
from helpers import (
    diffs_every_way,
    fast_client_options,
    make_repo,
    manifest_yaml,
    mutate_rows,
    run_cli,
    sorted_matching,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bpsync import bytealign, keycount, rowdiff, table
from bpsync.emulator import Emulator
from bpsync.plan import ADD
from bpsync.table import ProblemSink, TableLayout, TableScan, format_row

LAYOUT = TableLayout(("host", "env", "owner"), (0,))
TWO_KEYS = TableLayout(("host", "env", "owner"), (0, 1))
HEADER = "host,env,owner\n"
VALUE = st.text(alphabet=st.sampled_from(list('ab0,"| é')), min_size=1, max_size=4)


def _diffs(
    tmp: Path, old: str, new: str | bytes, layout: TableLayout = LAYOUT
) -> list[tuple[Any, list[str]]]:
    """(diff, problems) by the byte path, the line aligner and hashing, in that order.
    Hashing is run both ways (a set, and sorted arrays as for a large table), which must
    agree."""
    snap, path = tmp / "snap.csv", tmp / "t.csv"
    snap.write_text(old, "utf-8")
    path.write_bytes(new.encode("utf-8") if isinstance(new, str) else new)
    return diffs_every_way(snap, path, layout)


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    n=st.integers(1, 400),
    fraction=st.sampled_from([0.0, 0.02, 0.05, 0.3, 0.9]),
    block=st.sampled_from([64, 200, 256, 4096]),
    shuffle=st.booleans(),
    seed=st.integers(0, 10_000),
)
def test_byte_path_equals_line_path_and_hashing_on_random_edits(
    monkeypatch: pytest.MonkeyPatch, n: int, fraction: float, block: int, shuffle: bool, seed: int
) -> None:
    """All three ways (bytes, lines, hashes) agree on in-place edits and re-orderings."""
    monkeypatch.setattr(table, "BLOCK_SIZE", block)
    rnd = random.Random(seed)
    old = [f"h{i:04d},e{rnd.randrange(3)},o" for i in range(n)]
    new = mutate_rows(old, rnd, fraction)
    if shuffle:
        rnd.shuffle(new)
    with tempfile.TemporaryDirectory() as tmp:
        text = HEADER + "".join(r + "\n" for r in new)
        (by_bytes, p1), (by_lines, p2), (by_hash, p3) = _diffs(
            Path(tmp), HEADER + "".join(r + "\n" for r in old), text
        )
    assert by_bytes == by_lines == by_hash
    assert p1 == p2 == p3
    assert by_bytes.info.canonical_sha256 == hashlib.sha256(text.encode()).hexdigest()


@settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    rows=st.dictionaries(VALUE, st.tuples(VALUE, VALUE), min_size=1, max_size=40),
    edits=st.lists(st.tuples(st.integers(0, 39), VALUE), max_size=8),
    requote=st.booleans(),
    crlf=st.booleans(),
    no_final_newline=st.booleans(),
    block=st.sampled_from([64, 4096]),
)
def test_byte_path_on_hostile_values_and_other_spellings(
    monkeypatch: pytest.MonkeyPatch,
    rows: dict[str, tuple[str, str]],
    edits: list[tuple[int, str]],
    requote: bool,
    crlf: bool,
    no_final_newline: bool,
    block: int,
) -> None:
    """Quotes, commas and pipes in values; a value quoted where canonical form would not;
    CRLF endings; no final newline: lines that are not byte-equal are checked like any."""
    monkeypatch.setattr(table, "BLOCK_SIZE", block)
    old_rows = [(k, *v) for k, v in sorted(rows.items())]
    new_rows = list(old_rows)
    for i, value in edits:
        if new_rows:
            k = new_rows[i % len(new_rows)]
            new_rows[i % len(new_rows)] = (k[0], k[1], value)
    lines = [format_row(r) for r in new_rows]
    if requote and lines:
        lines[0] = ",".join(f'"{c}"' for c in (c.replace('"', '""') for c in new_rows[0]))
    end = "\r\n" if crlf else "\n"
    new = HEADER.replace("\n", end) + "".join(line + end for line in lines)
    if no_final_newline:
        new = new[: -len(end)]
    old = HEADER + "".join(format_row(r) + "\n" for r in old_rows)
    with tempfile.TemporaryDirectory() as tmp:
        (by_bytes, p1), (by_lines, p2), (by_hash, p3) = _diffs(Path(tmp), old, new)
    assert by_bytes == by_lines == by_hash
    assert p1 == p2 == p3  # pipe warnings in unchanged rows included


def test_a_large_densely_changed_table_is_hashed_not_aligned_line_by_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Half the rows changed in place: the bytes do not align, and for a table past the size
    limit (here 0) the hashed diff takes over at once, with the line aligner's diff."""
    old = [f"host{i:05d},prod,team{i % 7}" for i in range(30_000)]
    new = mutate_rows(old, random.Random(9), 0.5)
    (expected, _), *_ = _diffs(
        tmp_path, HEADER + "".join(r + "\n" for r in old), HEADER + "".join(r + "\n" for r in new)
    )
    monkeypatch.setattr(rowdiff, "_HASH_DENSE_BYTES", 0)
    took: list[str] = []
    for name in ("_aligned_diff", "_hashed_diff"):
        real = getattr(rowdiff, name)

        def spy(*args: Any, real: Any = real, name: str = name) -> Any:
            took.append(name)
            return real(*args)

        monkeypatch.setattr(rowdiff, name, spy)
    snap = tmp_path / "snap.csv"
    sink = ProblemSink("t.csv")
    d = rowdiff.diff_table(tmp_path / "t.csv", LAYOUT, sink, lambda: snap.open("rb"), trusted=True)
    assert took == ["_hashed_diff"]
    assert d == expected


def test_in_order_edits_take_the_byte_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Nothing falls back to the line aligner, and only the lines that differ (~2%) and the
    header are parsed and checked."""
    old = [f"host{i:05d},prod,team{i % 7}" for i in range(30_000)]
    new = mutate_rows(old, random.Random(5), 0.02)
    (expected, _), *_ = _diffs(
        tmp_path, HEADER + "".join(r + "\n" for r in old), HEADER + "".join(r + "\n" for r in new)
    )

    def line_path(*args: Any) -> Any:
        raise AssertionError("fell back to the line aligner")

    monkeypatch.setattr(rowdiff, "_aligned_diff", line_path)
    monkeypatch.setattr(rowdiff, "_hashed_diff", line_path)
    scanned: list[int] = []
    real_block = TableScan._block

    def block(self: TableScan, raw: bytes, text: str) -> Any:
        scanned.append(text.count("\n"))
        return real_block(self, raw, text)

    monkeypatch.setattr(TableScan, "_block", block)
    snap = tmp_path / "snap.csv"
    d = rowdiff.diff_table(
        tmp_path / "t.csv", LAYOUT, ProblemSink("t.csv"), lambda: snap.open("rb"), trusted=True
    )
    assert d == expected and d.changed > 100
    assert sum(scanned) < len(new) // 40


def test_byte_path_checks_only_differing_lines_yet_reports_their_problems(
    tmp_path: Path,
) -> None:
    """A bad row among unchanged ones is reported at its line, as the line path does."""
    old = [f"host{i:04d},prod,o" for i in range(2_000)]
    new = list(old)
    new[1_500] = "host1500,prod"  # a cell short
    new[700] = "host0700,pr|od,o"  # a pipe: a warning
    results = _diffs(
        tmp_path, HEADER + "".join(r + "\n" for r in old), HEADER + "".join(r + "\n" for r in new)
    )
    (d, problems), *others = results
    assert not d.info.ok
    assert any("t.csv:1502" in p and "2 cells" in p for p in problems)
    assert any("t.csv:702" in p and "'|'" in p for p in problems)
    assert all(problems == p for _, p in others)


@pytest.mark.parametrize("child", [False, True])
def test_duplicate_key_with_an_unchanged_row_is_found_by_the_byte_path(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, child: bool
) -> None:
    if child:  # the keys counted in a child process, as for a table of 16 MB or more
        monkeypatch.setattr(rowdiff, "_CHILD_COUNT_BYTES", 0)
    old = [f"host{i:04d},prod,o" for i in range(5_000)]
    new = [*old[:4_000], "host0100,dev,x", *old[4_000:]]  # added row, key of line 102
    (d, problems), (_, p2), (_, p3) = _diffs(
        tmp_path, HEADER + "".join(r + "\n" for r in old), HEADER + "".join(r + "\n" for r in new)
    )
    assert not d.info.ok and problems == p2 == p3
    assert any("t.csv:4002" in p and "duplicate key" in p and "line 102" in p for p in problems)


def test_key_counter_child_agrees_with_the_count_in_process(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    rows = [f'"h,{i}",e{i % 3},o' if i % 17 == 0 else f"h{i},e{i % 3},o" for i in range(3_000)]
    path.write_text(HEADER + "".join(r + "\r\n" for r in rows), "utf-8")
    rows += ["h\x1fs,e1,o", ",e2,o"]  # a key holding the child's cell separator; an empty key
    path.write_text(HEADER + "".join(r + "\r\n" for r in rows), "utf-8")
    keys = [("h5",), ("h,17",), ("nope",), ("h5",)]
    for idx, ks, rows_holding in (
        ((0,), keys, 2),
        ((0,), [("h\x1fs",), ("",), ("h6",)], 3),  # sent as JSON, then as lines
        ((0,), [("",), ("h6",)], 2),
        ((0,), [], 0),
        ((0, 1), [("h5", "e2"), ("h,17", "e2"), ("h5", "e0")], 2),
        ((0, 1), [("h\x1fs", "e1"), ("", "e2"), ("h6", "e0")], 3),
        ((0, 1), [("", "e2"), ("h6", "e0")], 2),
    ):
        assert keycount.count_keys(path, idx, ks) == rows_holding, (idx, ks)
        with keycount.KeyCounter(path, idx) as counter:
            assert counter.count(ks) == rows_holding, (idx, ks)
    assert keycount.count_keys(path, (0,), keys) == 2  # a row counts once, however asked
    with keycount.KeyCounter(path, (0,)) as counter:
        assert counter.held_once([("h5",), ("h,17",)])  # no key repeats: nothing is sent
    twice = tmp_path / "twice.csv"
    twice.write_text(HEADER + "a,1,o\nb,2,o\na,3,o\n", "utf-8")
    for child in (True, False):
        for ks, once in (([("a",)], False), ([("b",)], True), ([("b",), ("a",)], False)):
            with keycount.KeyCounter(twice, (0,), child=child) as counter:
                assert counter.held_once(ks) is once, (child, ks)


def test_key_counter_falls_back_when_the_child_fails(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    path = tmp_path / "t.csv"
    path.write_text(HEADER + "a,b,c\nd,e,f\n", "utf-8")
    monkeypatch.setattr(keycount.sys, "executable", str(tmp_path / "no-such-python"))
    with keycount.KeyCounter(path, (0,)) as counter:
        assert counter.count([("a",), ("x",)]) == 1
    monkeypatch.setattr(keycount.sys, "executable", "/bin/false")
    with keycount.KeyCounter(path, (0,)) as counter:
        assert counter.count([("a",), ("d",)]) == 2


@pytest.mark.parametrize("late", [False, True])
def test_deferred_digest_equals_hashing_every_block(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, late: bool
) -> None:
    """With the file's digest at hand, a canonical table is not hashed again; one that turns
    non-canonical late hashes its canonical prefix then: the same SHA-256 either way."""
    monkeypatch.setattr(table, "BLOCK_SIZE", 256)
    rows = [f"h{i:04d},e,o" for i in range(500)]
    if late:
        rows[450] = '"h0450",e,o'  # needlessly quoted: canonical form differs
    path = tmp_path / "t.csv"
    path.write_text(HEADER + "".join(r + "\n" for r in rows), "utf-8")
    eager = TableScan(path, LAYOUT, ProblemSink("t")).run()
    asked: list[int] = []

    def file_digest() -> str:
        asked.append(1)
        return table.sha256_file(path)

    deferred = TableScan(path, LAYOUT, ProblemSink("t"), file_digest=file_digest).run()
    assert deferred == eager
    assert asked == ([] if late else [1])


def test_changing_the_key_columns_still_finds_duplicates_among_unchanged_rows(
    tmp_path: Path, emu: Emulator
) -> None:
    """Defect: keys (host, env) unique when applied; with `env` no longer a key, two rows
    share a host. The aligned diff took unchanged rows' keys as unique (they were, under the
    old key), so the plan passed and apply would have uploaded duplicate keys."""
    fields = [
        ("host", "query_tag", None),
        ("env", "query_tag", None),
        ("owner", "result_tag", None),
    ]
    csv = HEADER + "web1,prod,a\nweb1,dev,b\nweb2,prod,c\n"
    root = make_repo(
        tmp_path, manifests={"t": manifest_yaml("t.csv", fields)}, tables={"t.csv": csv}
    )
    env = {"BIGPANDA_API_URL": emu.url, "BIGPANDA_TOKEN": "t0ken-for-tests"}
    code, out, err = run_cli(
        ["apply", "--auto-approve"], root, env, client_options=fast_client_options()
    )
    assert code == 0, err
    narrowed = [fields[0], ("env", "result_tag", None), fields[2]]
    (root / "tables" / "t.yaml").write_text(manifest_yaml("t.csv", narrowed), "utf-8")
    code, out, err = run_cli(["plan", "--no-refresh"], root, env)
    assert code != 0, out
    assert "duplicate key host='web1'" in err and "t.csv:3" in err


def test_dense_edits_go_to_the_line_aligner_early(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Half the rows touched: each difference costs more on bytes than on lists of lines, so
    the byte path hands over after its first EARLY_LINES lines, not at the end."""
    old = [f"host{i:05d},prod,team{i % 7}" for i in range(60_000)]
    new = mutate_rows(old, random.Random(9), 0.5)
    split_lines: list[int] = []
    real_split = bytealign.ByteAligner.split

    def split(self: bytealign.ByteAligner, raw: bytes, header: str) -> Any:
        split_lines.append(raw.count(b"\n"))
        return real_split(self, raw, header)

    monkeypatch.setattr(bytealign.ByteAligner, "split", split)
    monkeypatch.setattr(table, "BLOCK_SIZE", 64 * 1024)
    (by_bytes, _), (by_lines, _), (by_hash, _) = _diffs(
        tmp_path, HEADER + "".join(r + "\n" for r in old), HEADER + "".join(r + "\n" for r in new)
    )
    assert by_bytes == by_lines == by_hash
    assert sum(split_lines) < bytealign.ByteAligner.EARLY_LINES + 5_000


@pytest.mark.parametrize("block", [16, 64, 1 << 20])
@pytest.mark.parametrize("final_newline", [True, False])
def test_lines_at_takes_the_lines_asked_for_across_blocks(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, block: int, final_newline: bool
) -> None:
    """The hashed diff's second snapshot read: lines by number, from any block."""
    monkeypatch.setattr(table, "BLOCK_SIZE", block)
    lines = [f"line{i:03d},é" for i in range(1, 101)]
    snap = tmp_path / "s.csv"
    snap.write_text("\n".join(lines) + ("\n" if final_newline else ""), "utf-8")
    wanted = [1, 2, 17, 50, 99, 100]
    got = rowdiff._lines_at(lambda: snap.open("rb"), iter(wanted))
    assert got == rowdiff.Lines(wanted, [lines[n - 1] for n in wanted])


@pytest.mark.parametrize("block", [32, 1 << 20])
def test_a_repeated_row_is_a_duplicate_on_every_path(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, block: int
) -> None:
    """The same line twice (in one block, or in two): the second is not an unchanged row."""
    monkeypatch.setattr(table, "BLOCK_SIZE", block)
    old = [f"h{i:03d},e,o" for i in range(40)]
    new = [*old, old[3]]
    results = _diffs(
        tmp_path, HEADER + "".join(r + "\n" for r in old), HEADER + "".join(r + "\n" for r in new)
    )
    for d, problems in results:
        assert not d.info.ok
        assert any("t.csv:42" in p and "duplicate row (same as line 5)" in p for p in problems)


@pytest.mark.parametrize("crlf", [False, True])
def test_shuffled_rows_go_from_the_byte_path_straight_to_hashing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, crlf: bool
) -> None:
    """Canonical lines that do not align as bytes would not align as lines either: no second
    trial by the line aligner. (CRLF lines, not canonical, still get it.)"""
    old = [f"host{i:05d},prod,team{i % 7}" for i in range(60_000)]
    new = list(old)
    random.Random(2).shuffle(new)
    end = "\r\n" if crlf else "\n"
    old_text, new_text = (
        HEADER + "".join(r + "\n" for r in old),
        HEADER + "".join(r + end for r in new),
    )
    (expected, _), *_ = _diffs(tmp_path, old_text, new_text)
    calls: list[int] = []
    real = rowdiff._aligned_diff

    def line_path(*args: Any) -> Any:
        calls.append(1)
        return real(*args)

    monkeypatch.setattr(rowdiff, "_aligned_diff", line_path)
    snap = tmp_path / "snap.csv"
    d = rowdiff.diff_table(
        tmp_path / "t.csv", LAYOUT, ProblemSink("t.csv"), lambda: snap.open("rb"), trusted=True
    )
    assert d == expected and d.unchanged == 60_000
    assert calls == ([1] if crlf else [])


def test_a_key_change_check_reports_each_warning_once(tmp_path: Path) -> None:
    """With the key columns changed every key is checked by a scan of its own before the
    diff; the warnings both find (a pipe) are reported once, not once by each."""
    old = [f"h{i:03d},e,o" for i in range(30)]
    new = [*old[:5], "h005,e|x,o", *old[6:]]
    snap, path = tmp_path / "snap.csv", tmp_path / "t.csv"
    snap.write_text(HEADER + "".join(r + "\n" for r in old), "utf-8")
    path.write_text(HEADER + "".join(r + "\n" for r in new), "utf-8")
    sink = ProblemSink("t.csv")
    d = rowdiff.diff_table(
        path, LAYOUT, sink, lambda: snap.open("rb"), trusted=True, old_keys_unique=False
    )
    assert d.info.ok and d.changed == 1
    assert [p.line for p in sink.finish() if "'|'" in p.message] == [7]


@pytest.mark.parametrize("crlf", [False, True])
def test_a_sorted_matching_plan_keeps_the_rows_it_scanned(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, crlf: bool
) -> None:
    """The rows not found are kept as the scan passes them, not read again afterwards: a
    table rewritten after its scan cannot put other lines than the ones matched and
    validated into the plan."""
    old = [f"h{i:03d},e,o" for i in range(50)]
    new = [*old[1:], "h999,e,o"]
    end = "\r\n" if crlf else "\n"
    snap, path = tmp_path / "snap.csv", tmp_path / "t.csv"
    snap.write_text(HEADER + "".join(r + "\n" for r in old))
    path.write_bytes((HEADER + "".join(r + "\n" for r in new)).replace("\n", end).encode())
    real = rowdiff._lines_at

    def rewritten(*args: Any) -> Any:  # the snapshot read again, after the scan
        path.write_text(HEADER + "h999,only-two-cells\n")
        return real(*args)

    monkeypatch.setattr(rowdiff, "_lines_at", rewritten)
    with sorted_matching():
        d = rowdiff.diff_table(
            path, LAYOUT, ProblemSink("t.csv"), lambda: snap.open("rb"), align_limit=0
        )
    assert d.info.ok and (d.added, d.removed, d.unchanged) == (1, 1, 49)
    assert [(c.op, c.key, c.after) for c in d.changes if c.op == ADD] == [
        (ADD, ("h999",), ("h999", "e", "o"))
    ]
