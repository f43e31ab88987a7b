"""Adversarial inputs for the byte-aligned row diff: whatever the new table holds (valid or
not), `diff_table(trusted=True)` gives what the line aligner and the hashing diff give: the
same rows, counts, line numbers, table facts and problems."""

from __future__ import annotations

import hashlib
import random
from pathlib import Path
from typing import Any

import pytest
from helpers import diffs_every_way
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bpsync import rowdiff, table
from bpsync.table import ProblemSink, TableLayout, TableScan, format_row

TITLES = ("host", "env", "owner")
LAYOUT = TableLayout(TITLES, (0,))
MULTI = TableLayout(TITLES, (0, 2))
HEADER = "host,env,owner\n"

Result = tuple[Any, list[str]]


def _run(
    tmp: Path,
    old: str | bytes,
    new: str | bytes,
    layout: TableLayout = LAYOUT,
    digest: bool = False,
) -> list[Result]:
    """(diff, problems) by the byte path, the line aligner and hashing, in that order."""
    snap, path = tmp / "snap.csv", tmp / "t.csv"
    snap.write_bytes(old.encode("utf-8") if isinstance(old, str) else old)
    path.write_bytes(new.encode("utf-8") if isinstance(new, str) else new)
    file_digest = (lambda: table.sha256_file(path)) if digest else None
    return diffs_every_way(snap, path, layout, file_digest)


def _same(results: list[Result]) -> Result:
    """All three paths agree: problems always; the whole diff when the table is valid.

    (On an invalid table the line aligner and the byte path give no snapshot facts while
    hashing gives the snapshot's row count and columns, as before the byte path: only the
    table's facts are compared then.)"""
    (by_bytes, p1), (by_lines, p2), (by_hash, p3) = results
    assert p1 == p2, "byte path vs line aligner: problems"
    assert p2 == p3, "line aligner vs hashing: problems"
    assert by_bytes.info == by_lines.info == by_hash.info
    assert by_bytes == by_lines
    if by_lines.info.ok:
        assert by_lines == by_hash
    return results[0]


def _check(tmp: Path, old: str | bytes, new: str | bytes, layout: TableLayout = LAYOUT) -> Result:
    plain = _same(_run(tmp, old, new, layout))
    digested = _same(_run(tmp, old, new, layout, digest=True))
    assert plain == digested
    return plain


def _table(rows: list[str], header: str = HEADER) -> str:
    return header + "".join(r + "\n" for r in rows)


ROWS = [f"h{i:03d},e{i % 3},o{i % 5}" for i in range(60)]
OLD = _table(ROWS)


@pytest.fixture(params=[16, 37, 64, 256, 4096])
def block(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> int:
    size: int = request.param
    monkeypatch.setattr(table, "BLOCK_SIZE", size)
    return size


# -- targeted cases ----------------------------------------------------------------------


def _edit(i: int, line: str) -> list[str]:
    rows = list(ROWS)
    rows[i] = line
    return rows


CASES: dict[str, str | bytes] = {
    "equal": OLD,
    "last line changed": _table(_edit(59, "h059,e2,changed")),
    "first line changed": _table(_edit(0, "h000,e0,changed")),
    "last line removed": _table(ROWS[:-1]),
    "line added at the end": _table([*ROWS, "h999,e,o"]),
    "line added at the start": _table(["h999,e,o", *ROWS]),
    "missing final newline": OLD[:-1],
    "missing final newline, last line changed": _table(_edit(59, "h059,e2,x"))[:-1],
    "only a header": HEADER,
    "header without newline": HEADER[:-1],
    "empty values": _table(_edit(10, "h010,,")),
    "empty key": _table(_edit(10, ",e1,o0")),
    "blank line": _table(_edit(10, "")),
    "CRLF on one line": OLD.replace("h010,e1,o0\n", "h010,e1,o0\r\n"),
    "CRLF on the header only": OLD.replace(HEADER, HEADER.replace("\n", "\r\n")),
    "CRLF on the last line": OLD[:-1] + "\r\n",
    "CRLF everywhere": OLD.replace("\n", "\r\n"),
    "a lone CR": OLD.replace("h010,e1,o0\n", "h010,e1\r,o0\n"),
    "BOM": b"\xef\xbb\xbf" + OLD.encode(),
    "UTF-16 BOM": b"\xff\xfe" + OLD.encode(),
    "invalid UTF-8 in a changed line": OLD.encode().replace(b"h020,e2,o0", b"h020,e2,o\xff"),
    "invalid UTF-8 in the last line": OLD.encode().replace(b"h059,e2,o4", b"h059,e2,\xff4"),
    "invalid UTF-8 after a pipe in an equal line": _table(_edit(3, "h003,e|0,o3"))
    .encode()
    .replace(b"h020,e2,o0", b"h020,e2,o\xc3"),
    "invalid UTF-8 after an error": _table(_edit(3, "h003,e0"))
    .encode()
    .replace(b"h020,e2,o0", b"h020,e2,o\xc3"),
    "prefix of the snapshot's line": _table(_edit(30, "h030,e0,o")),
    "snapshot's line is a prefix": _table(_edit(30, "h030,e0,o00")),
    "a cell short": _table(_edit(30, "h030,e0")),
    "a cell more": _table(_edit(30, "h030,e0,o0,x")),
    "duplicate line, next to it": _table([*ROWS[:31], ROWS[30], *ROWS[31:]]),
    "duplicate line, far": _table([*ROWS, ROWS[2]]),
    "duplicate line, before": _table([ROWS[50], *ROWS]),
    "duplicate key, far": _table([*ROWS, "h002,x,y"]),
    "duplicate key, before": _table(["h050,x,y", *ROWS]),
    "duplicate key, changed": _table([*_edit(5, "h006,e,o"), "h777,a,b"]),
    "key moved": _table(_edit(5, "h006,e0,o1")),
    "pipe in a changed line": _table(_edit(7, "h007,a|b,o")),
    "quoted value, canonical": _table(_edit(7, 'h007,"a,b",o')),
    "quoted value, needlessly": _table(_edit(7, '"h007",e1,o2')),
    "quoted line break": _table(_edit(7, 'h007,"a\nb",o')),
    "quoted line break over a whole line": _table(_edit(7, 'h007,"e1\nh008,e2,o3",o')),
    "unterminated quote": _table(_edit(7, 'h007,"e1,o2')),
    "unterminated quote at the end": _table(_edit(59, 'h059,"e2,o4')),
    "other column order": _table(
        [",".join((r.split(",")[1], r.split(",")[0], r.split(",")[2])) for r in ROWS],
        "env,host,owner\n",
    ),
    "header needlessly quoted": _table(ROWS, '"host",env,owner\n'),
    "header with another column": _table([r + ",x" for r in ROWS], "host,env,owner,extra\n"),
    "header missing a column": _table([r.rsplit(",", 1)[0] for r in ROWS], "host,env\n"),
    "header broken": _table(ROWS, 'host,"env,owner\n'),
    "many consecutive changed lines": _table(
        [*ROWS[:10], *(r + "x" for r in ROWS[10:50]), *ROWS[50:]]
    ),
    "alternating added and removed": _table(
        [r if i % 2 else f"n{i:03d},a,b" for i, r in enumerate(ROWS)]
    ),
    "every other line removed": _table(ROWS[::2]),
    "reversed": _table(ROWS[::-1]),
    "swapped neighbours": _table([*ROWS[:20], ROWS[21], ROWS[20], *ROWS[22:]]),
    "long changed line": _table(_edit(25, "h025,e1," + "x" * 5000)),
    "long added line": _table([*ROWS[:25], "n,e," + "y" * 5000, *ROWS[25:]]),
}


@pytest.mark.parametrize("name", list(CASES))
def test_targeted_inputs(block: int, tmp_path: Path, name: str) -> None:
    _check(tmp_path, OLD, CASES[name])


LONG_ROWS = [f"h{i:03d},e{i % 3}," + "v" * (300 + i * 7) for i in range(30)]
LONG_OLD = _table(LONG_ROWS)


@pytest.mark.parametrize(
    "new",
    [
        LONG_OLD,
        _table([*LONG_ROWS[:-1], LONG_ROWS[-1] + "w"]),
        _table([*LONG_ROWS[:10], LONG_ROWS[10][:-1] + "w", *LONG_ROWS[11:]]),
        _table([*LONG_ROWS[:10], LONG_ROWS[10][:150], *LONG_ROWS[11:]]),
        _table([*LONG_ROWS[:10], *LONG_ROWS[12:]]),
        _table(LONG_ROWS[:15]),
        _table([*LONG_ROWS, "x,y,z"]),
        LONG_OLD[:-1],
    ],
)
def test_lines_longer_than_a_block(block: int, tmp_path: Path, new: str) -> None:
    _check(tmp_path, LONG_OLD, new)


def test_snapshot_ends_before_the_table_and_after(block: int, tmp_path: Path) -> None:
    _check(tmp_path, _table(ROWS[:5]), OLD)
    _check(tmp_path, OLD, _table(ROWS[:5]))
    _check(tmp_path, _table(ROWS[:1]), _table([*ROWS[:1], "zz,y,x"]))


def test_snapshot_of_another_header(block: int, tmp_path: Path) -> None:
    """Columns applied in another order: no row can be byte-equal."""
    old = _table([",".join(reversed(r.split(","))) for r in ROWS], "owner,env,host\n")
    _check(tmp_path, old, OLD)
    _check(tmp_path, old, _table(_edit(3, "h003,x,y")))


def test_snapshot_header_without_the_key(block: int, tmp_path: Path) -> None:
    old = _table([f"e{i},o" for i in range(60)], "env,owner\n")
    _check(tmp_path, old, OLD)


def test_header_equal_to_the_snapshot_but_not_the_manifest(block: int, tmp_path: Path) -> None:
    """The table still has the columns applied; the manifest gained one: an error, and the
    rows are counted against the header as written on every path."""
    layout = TableLayout((*TITLES, "extra"), (0,))
    (d, problems) = _check(tmp_path, OLD, _table(_edit(4, "h004,x,y")), layout)
    assert not d.info.ok and any("'extra'" in p for p in problems)
    (d, problems) = _check(tmp_path, OLD, OLD, layout)
    assert not d.info.ok


def test_multi_key_layouts(block: int, tmp_path: Path) -> None:
    old = _table([f"h{i // 2:03d},e{i % 3},o{i % 2}" for i in range(60)])
    rows = old.splitlines()[1:]
    for new in (
        old,
        _table([*rows, "h000,zz,o0"]),  # duplicate (host, owner) with an unchanged row
        _table([*rows, "h000,zz,o9"]),  # a new key
        _table([rows[0].replace("e0", "e9"), *rows[1:]]),  # changed
        _table([*rows[:10], *rows[12:], rows[11], rows[10]]),  # moved
    ):
        _check(tmp_path, old, new, MULTI)


def test_pipes_in_equal_stretches_warn_alike(block: int, tmp_path: Path) -> None:
    rows = [f"h{i:03d},a|{i},o" if i % 4 == 0 else f"h{i:03d},e,o" for i in range(40)]
    old = _table(rows)
    _, problems = _check(tmp_path, old, old)
    assert sum("'|'" in p for p in problems) == 10  # the warnings' cap
    _check(tmp_path, old, _table([*rows[:9], "h009,x|y,o", *rows[10:]]))
    _check(tmp_path, old, _table([*rows[:8], "h008,x,o", *rows[9:]]))


def test_quoted_values_in_equal_stretches(block: int, tmp_path: Path) -> None:
    rows = [f'h{i:03d},"a,{i}",o' if i % 3 == 0 else f"h{i:03d},e,o" for i in range(40)]
    old = _table(rows)
    _check(tmp_path, old, old)
    _check(tmp_path, old, _table([*rows[:10], "h010,x,o", *rows[11:]]))
    _check(tmp_path, old, _table([*rows[:9], 'h009,"x\ny",o', *rows[10:]]))


def test_many_changes_past_the_limit_go_to_hashing(tmp_path: Path) -> None:
    rows = [f"h{i:05d},e,o" for i in range(3_000)]
    new = [r + "x" if i % 3 == 0 else r for i, r in enumerate(rows)]
    snap, path = tmp_path / "snap.csv", tmp_path / "t.csv"
    snap.write_text(_table(rows), "utf-8")
    path.write_text(_table(new), "utf-8")
    got = []
    for trusted, limit in ((True, 100), (False, 100), (False, 0)):
        sink = ProblemSink("t.csv")
        got.append(
            rowdiff.diff_table(
                path, LAYOUT, sink, lambda: snap.open("rb"), align_limit=limit, trusted=trusted
            )
        )
    assert got[0] == got[1] == got[2] and got[0].changed == 1_000


# -- random tables -----------------------------------------------------------------------

CELL = st.text(alphabet=st.sampled_from(list('ab,"| é\n')), max_size=3)
HOSTILE_LINES = st.sampled_from(
    [
        b"",
        b"\r",
        b'"',
        b"a,b",
        b"a,b,c,d",
        b"\xff,b,c",
        b"x,\xc3,z",
        b'x,"y\nz",w',
        b'"q",r,s',
        b"p,q|r,s",
        b"k,,",
        b",,",
    ]
)


@st.composite
def tables(draw: st.DrawFn) -> tuple[bytes, bytes, TableLayout]:
    layout = draw(st.sampled_from([LAYOUT, MULTI]))
    n = draw(st.integers(1, 30))
    keys = draw(
        st.lists(st.text(alphabet="abcé|,", min_size=1, max_size=4), min_size=n, max_size=n)
    )
    rows: list[list[str]] = []
    seen: set[tuple[str, ...]] = set()
    for k in keys:
        row = [k, draw(CELL), draw(CELL)]
        key = tuple(row[i] for i in layout.key_indexes)
        if key not in seen and "\n" not in "".join(row):
            seen.add(key)
            rows.append(row)
    if not rows:
        rows = [["a", "b", "c"]]
    old_lines = [format_row(r).encode() for r in rows]
    new_lines = list(old_lines)
    for _ in range(draw(st.integers(0, 6))):
        op = draw(st.sampled_from(["change", "add", "remove", "dup", "hostile", "crlf", "move"]))
        i = draw(st.integers(0, max(0, len(new_lines) - 1)))
        if op == "change" and new_lines:
            cells = [draw(CELL) for _ in range(3)]
            new_lines[i] = format_row(cells).encode()
        elif op == "add":
            new_lines.insert(i, format_row([draw(CELL) for _ in range(3)]).encode())
        elif op == "remove" and len(new_lines) > 1:
            del new_lines[i]
        elif op == "dup" and new_lines:
            new_lines.insert(draw(st.integers(0, len(new_lines))), new_lines[i])
        elif op == "hostile":
            new_lines.insert(i, draw(HOSTILE_LINES))
        elif op == "crlf" and new_lines:
            new_lines[i] += b"\r"
        elif op == "move" and new_lines:
            new_lines.append(new_lines.pop(i))
    header = format_row(TITLES).encode()
    if draw(st.booleans()):
        header = draw(
            st.sampled_from([b'"host",env,owner', b"host,env,owner\r", b"env,host,owner"])
        )
    old = b"\n".join([format_row(TITLES).encode(), *old_lines]) + b"\n"
    new = b"\n".join([header, *new_lines]) + b"\n"
    if draw(st.booleans()):
        new = new[:-1]
    return old, new, layout


@settings(
    max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(case=tables(), size=st.sampled_from([16, 24, 64, 200, 4096]))
def test_random_tables(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    case: tuple[bytes, bytes, TableLayout],
    size: int,
) -> None:
    monkeypatch.setattr(table, "BLOCK_SIZE", size)
    old, new, layout = case
    _check(tmp_path, old, new, layout)


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(case=tables(), size=st.sampled_from([16, 64, 4096]))
def test_deferred_digest_on_random_tables(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    case: tuple[bytes, bytes, TableLayout],
    size: int,
) -> None:
    monkeypatch.setattr(table, "BLOCK_SIZE", size)
    _, new, layout = case
    path = tmp_path / "t.csv"
    path.write_bytes(new)
    eager_sink, deferred_sink = ProblemSink("t"), ProblemSink("t")
    eager = TableScan(path, layout, eager_sink).run()
    deferred = TableScan(
        path, layout, deferred_sink, file_digest=lambda: table.sha256_file(path)
    ).run()
    assert deferred == eager
    assert deferred_sink.finish() == eager_sink.finish()


# -- the hashed diff's second read of the snapshot -----------------------------------------


@pytest.mark.parametrize("size", [16, 23, 64, 4096])
def test_lines_at_without_a_final_newline(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, size: int
) -> None:
    monkeypatch.setattr(table, "BLOCK_SIZE", size)
    lines = [f"l{i:02d}" + "x" * random.Random(i).randrange(40) for i in range(1, 41)]
    snap = tmp_path / "s.csv"
    snap.write_text("\n".join(lines), "utf-8")
    for wanted in ([40], [1, 40], [2, 3, 39, 40], list(range(1, 41)), [20]):
        got = rowdiff._lines_at(lambda: snap.open("rb"), iter(wanted))
        assert got == rowdiff.Lines(wanted, [lines[n - 1] for n in wanted])


def test_digest_of_the_byte_path_is_the_canonical_digest(tmp_path: Path) -> None:
    new = _table(_edit(3, "h003,x,y"))
    (d, _), *_ = _run(tmp_path, OLD, new, digest=True)
    assert d.info.canonical_sha256 == hashlib.sha256(new.encode()).hexdigest()
