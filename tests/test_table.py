"""bpsync/table.py: the streaming CSV reader and the canonical writer, below the CLI.

The CLI-level rule checks (one test per bad-input class) live in test_validate_cli.py;
here are the properties the reader must keep for any input, what crosses its 1 MiB block
boundaries, and its memory bound.
"""

from __future__ import annotations

import csv
import hashlib
import io
import sys
import time
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bpsync.table import (
    BLOCK_SIZE,
    ProblemSink,
    TableInfo,
    TableLayout,
    TableScan,
    format_row,
    parse_line,
    scan_table,
    write_canonical,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from gen_table import write_table  # type: ignore[import-not-found]

LAYOUT = TableLayout(("application", "owner", "team"), (0,))
HEADER = "application,owner,team\n"
PROPERTY_SETTINGS = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def scan_bytes(
    tmp_path: Path, data: bytes | str, layout: TableLayout = LAYOUT
) -> tuple[TableInfo, ProblemSink, list[tuple[int, list[str]]]]:
    """Scan `data` as a file; returns the info, the sink and every (line, cells) emitted."""
    path = tmp_path / "t.csv"
    path.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    sink = ProblemSink("t.csv")
    rows: list[tuple[int, list[str]]] = []
    scan = TableScan(path, layout, sink)
    for first, lines in scan.row_blocks():
        rows.extend((first + i, parse_line(line)) for i, line in enumerate(lines))
    return scan.result, sink, rows


def canonical_bytes(tmp_path: Path, data: bytes | str, layout: TableLayout = LAYOUT) -> bytes:
    path = tmp_path / "c.csv"
    path.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    out = io.BytesIO()
    write_canonical(path, out, layout)
    return out.getvalue()


def messages(sink: ProblemSink) -> list[str]:
    return [str(p) for p in sink.finish()]


# -- round trip (hypothesis) ---------------------------------------------------------------

# Any text a cell can hold: everything except CR/LF (and lone surrogates, not UTF-8).
cell_text = st.text(
    alphabet=st.characters(exclude_categories=["Cs"], exclude_characters="\r\n"),
    max_size=12,
)
tricky_cell = st.one_of(
    cell_text,
    st.sampled_from(
        [
            "",
            " ",
            " lead",
            "trail ",
            ",",
            '"',
            '""',
            "a,b",
            'say "hi"',
            "x|y",
            "|",
            "ünïcødé",
            "日本語",
            "🐼",
            '"quoted"',
            "\t",
            "\x00",
            "\ufeff",
        ]
    ),
)
row_strategy = st.tuples(tricky_cell, tricky_cell, tricky_cell)
rows_strategy = st.lists(row_strategy, min_size=1, max_size=30, unique_by=lambda r: r[0])


@PROPERTY_SETTINGS
@given(rows=rows_strategy)
def test_format_row_lines_scan_back_to_the_same_rows(
    tmp_path: Path, rows: list[tuple[str, str, str]]
) -> None:
    text = HEADER + "".join(format_row(r) + "\n" for r in rows)
    info, sink, emitted = scan_bytes(tmp_path, text)
    assert info.ok, messages(sink)
    assert info.rows == len(rows)
    # one line per row, in order, at the line the row is on
    assert emitted == [(i + 2, list(r)) for i, r in enumerate(rows)]
    assert text.count("\n") == len(rows) + 1
    # the canonical form of a canonical file is the file itself, and its digest is the file's
    assert info.is_canonical
    assert canonical_bytes(tmp_path, text) == text.encode("utf-8")
    assert info.canonical_sha256 == hashlib.sha256(text.encode("utf-8")).hexdigest()


line_break = st.sampled_from(["\n", "\r", "\r\n"])


@PROPERTY_SETTINGS
@given(rows=rows_strategy, data=st.data())
def test_a_value_holding_cr_or_lf_is_refused_and_never_splits_output_lines(
    tmp_path: Path, rows: list[tuple[str, str, str]], data: st.DataObject
) -> None:
    at = data.draw(st.integers(0, len(rows) - 1), label="row")
    col = data.draw(st.integers(1, 2), label="column")  # a result column: keys stay unique
    before, after = data.draw(cell_text), data.draw(cell_text)
    value = before + data.draw(line_break) + after
    cells = [format_row([v]) if v else "" for v in rows[at]]
    cells[col] = '"' + value.replace('"', '""') + '"'  # RFC 4180 quoting of the bad value
    lines = [format_row(r) for r in rows]
    lines[at] = ",".join(cells)
    text = HEADER + "".join(line + "\n" for line in lines)

    info, sink, _ = scan_bytes(tmp_path, text)
    assert not info.ok
    errors = [p for p in sink.finish() if p.severity == "error"]
    assert any(p.line == at + 2 and "line break" in p.message for p in errors), errors

    out = canonical_bytes(tmp_path, text).decode("utf-8")
    assert "\r" not in out
    records = list(csv.reader(io.StringIO(out, newline=""), strict=True))
    # every output line is exactly one whole record: no value carries a line break out
    assert len(records) == out.count("\n")
    assert all(len(r) == 3 for r in records)


def test_canonical_digest_ignores_line_endings_and_needless_quotes(tmp_path: Path) -> None:
    plain = HEADER + "a,b,c\nd,e,f\n"
    variants = [
        plain.replace("\n", "\r\n"),  # CRLF
        '"application","owner",team\n"a",b,"c"\nd,"e",f\n',  # needless quotes
        HEADER.replace("\n", "\r\n") + '"a",b,c\r\nd,e,"f"',  # both, and no final newline
        plain[:-1],  # no final newline
    ]
    reference = scan_bytes(tmp_path, plain)[0]
    assert reference.is_canonical
    for text in variants:
        info = scan_bytes(tmp_path, text)[0]
        assert info.ok
        assert not info.is_canonical, text
        assert info.canonical_sha256 == reference.canonical_sha256, text
        assert canonical_bytes(tmp_path, text) == plain.encode()


def test_quoting_that_changes_a_value_changes_the_digest(tmp_path: Path) -> None:
    a = scan_bytes(tmp_path, HEADER + "a,b,c\n")[0]
    b = scan_bytes(tmp_path, HEADER + 'a,"b ",c\n')[0]
    c = scan_bytes(tmp_path, HEADER + 'a,"""b""",c\n')[0]
    assert len({a.canonical_sha256, b.canonical_sha256, c.canonical_sha256}) == 3


def test_format_row_quotes_a_value_holding_cr() -> None:
    assert format_row(["a", "b\r"]) == 'a,"b\r"'
    assert format_row(["a\rb", "c"]) == '"a\rb",c'


def test_canonical_form_quotes_only_where_needed() -> None:
    assert format_row(["a", "b c", " x "]) == "a,b c, x "
    assert format_row(["a,b", 'say "hi"', "x|y"]) == '"a,b","say ""hi""",x|y'
    assert parse_line('"a,b","say ""hi""",x|y') == ["a,b", 'say "hi"', "x|y"]
    assert parse_line(",,") == ["", "", ""]


def test_header_columns_in_another_order_are_read_by_title(tmp_path: Path) -> None:
    info, sink, rows = scan_bytes(tmp_path, "team,application,owner\nops,billing,ana\nops,crm,bo\n")
    assert info.ok, messages(sink)
    assert [cells for _, cells in rows] == [["ops", "billing", "ana"], ["ops", "crm", "bo"]]
    # the key is `application`, wherever it stands: a repeat of it is a duplicate key
    info, sink, _ = scan_bytes(tmp_path, "team,application,owner\nops,billing,ana\nx,billing,y\n")
    assert [p.line for p in sink.finish()] == [3]
    assert "application='billing'" in messages(sink)[0]


def test_the_scan_result_carries_the_header_as_read(tmp_path: Path) -> None:
    # The planner and the row diff take the new table's columns from here, not by
    # reopening the file: file order, quotes and CRLF undone.
    info, sink, _ = scan_bytes(tmp_path, 'team,"application",owner\r\nops,billing,ana\r\n')
    assert info.ok, messages(sink)
    assert info.columns == ("team", "application", "owner")
    info, _, _ = scan_bytes(tmp_path, b"")
    assert info.columns == ()


# -- across 1 MiB blocks ---------------------------------------------------------------------


def _body(rows: int, start: int = 0) -> str:
    return "".join(f"app{i:07d},owner {i},team-{i % 7}\n" for i in range(start, start + rows))


BIG_ROWS = 50_000  # ~1.5 MB: three blocks


def test_duplicate_key_far_apart_across_blocks_names_both_lines(tmp_path: Path) -> None:
    text = HEADER + _body(BIG_ROWS) + "app0000003,someone else,x\n"
    assert len(text) > BLOCK_SIZE
    info, sink, _ = scan_bytes(tmp_path, text)
    assert not info.ok
    (msg,) = messages(sink)
    assert msg.startswith(f"t.csv:{BIG_ROWS + 2}: duplicate key application='app0000003'")
    assert "first at line 5" in msg


def test_quoted_and_plain_spelling_of_one_key_are_duplicates_across_blocks(
    tmp_path: Path,
) -> None:
    text = HEADER + '"app0000007",quoted,"a,b"\n' + _body(BIG_ROWS, start=8) + "app0000007,x,y\n"
    _, sink, _ = scan_bytes(tmp_path, text)
    (msg,) = messages(sink)
    assert msg.startswith(f"t.csv:{BIG_ROWS + 3}: duplicate key")
    assert "first at line 2" in msg


def test_invalid_utf8_in_a_later_block_gives_the_file_byte_offset(tmp_path: Path) -> None:
    head = (HEADER + _body(BIG_ROWS)).encode()
    data = head + b"bad\xc3(,x,y\n"
    _, sink, _ = scan_bytes(tmp_path, data)
    (problem,) = sink.finish()
    assert f"byte offset {len(head) + 3}" in problem.message
    assert (problem.line, problem.col) == (BIG_ROWS + 2, 4)


def test_quoted_rows_round_trip_across_blocks(tmp_path: Path) -> None:
    rows = [(f"k{i}", f'v "{i}", ok', "x|y" if i % 1000 == 0 else "") for i in range(80_000)]
    text = HEADER + "".join(format_row(r) + "\n" for r in rows)
    assert len(text) > BLOCK_SIZE
    info, _, emitted = scan_bytes(tmp_path, text)
    assert info.ok and info.is_canonical
    assert [tuple(cells) for _, cells in emitted] == rows
    assert [line for line, _ in emitted] == list(range(2, len(rows) + 2))


def test_crlf_table_across_blocks_is_canonicalised(tmp_path: Path) -> None:
    plain = HEADER + _body(BIG_ROWS)
    info = scan_bytes(tmp_path, plain.replace("\n", "\r\n"))[0]
    assert info.ok and info.line_endings_crlf and not info.is_canonical
    assert info.canonical_sha256 == hashlib.sha256(plain.encode()).hexdigest()
    assert canonical_bytes(tmp_path, plain.replace("\n", "\r\n")) == plain.encode()


# -- problem cap -----------------------------------------------------------------------------


def test_sink_keeps_fifty_errors_and_counts_the_rest(tmp_path: Path) -> None:
    text = HEADER + "".join(f"app{i}\n" for i in range(80))
    _, sink, _ = scan_bytes(tmp_path, text)
    assert sink.errors == 80
    problems = sink.finish()
    assert len(problems) == 51
    assert [p.line for p in problems[:50]] == list(range(2, 52))
    assert problems[-1].message == "… and 30 more error(s)"


def test_write_canonical_reports_an_invalid_table_as_not_ok(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text(HEADER + "a,b,c\na,b,c\n", encoding="utf-8")
    sink = ProblemSink("t.csv")
    info = write_canonical(path, io.BytesIO(), LAYOUT, sink)
    assert not info.ok
    assert "duplicate row (same as line 2)" in messages(sink)[0]


# -- size limits without reading -------------------------------------------------------------


def test_a_file_over_500_mb_is_refused_before_reading(tmp_path: Path) -> None:
    path = tmp_path / "huge.csv"
    path.write_bytes(b"")
    import os

    os.truncate(path, 500_000_001)  # sparse: takes no disk and no time
    sink = ProblemSink("huge.csv")
    started = time.perf_counter()
    info = scan_table(path, LAYOUT, sink)
    assert time.perf_counter() - started < 1
    assert not info.ok
    (problem,) = sink.finish()
    assert "500,000,001 bytes" in problem.message and "500,000,000" in problem.message


# -- memory ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def table_50mb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("big") / "bench.csv"
    write_table(path, 50_000_000)
    return path


BENCH_LAYOUT = TableLayout(("host", "cmdb_ci", "environment", "support_group", "runbook_url"), (0,))


def test_scan_memory_stays_well_below_the_file_size(table_50mb: Path) -> None:
    size = table_50mb.stat().st_size
    scan = TableScan(table_50mb, BENCH_LAYOUT, ProblemSink("bench.csv"))
    tracemalloc.start()
    try:
        info = scan.run()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert info.ok and info.rows > 400_000
    # The key-hash dict grows with the row count by design (module docstring); all the rest
    # (blocks, decoded text, line lists) must stay bounded.
    key_dict = sys.getsizeof(scan.key_hashes) + sum(map(sys.getsizeof, scan.key_hashes))
    assert peak - key_dict < 0.4 * size, (peak, key_dict, size)


def test_scan_without_key_tracking_is_bounded_by_blocks_not_file(table_50mb: Path) -> None:
    scan = TableScan(table_50mb, BENCH_LAYOUT, ProblemSink("bench.csv"), keys="off")
    tracemalloc.start()
    try:
        for _ in scan.row_blocks():
            pass
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 * BLOCK_SIZE, peak  # a few blocks in flight, whatever the table's size


def test_a_table_without_lf_is_not_read_whole_into_memory(tmp_path: Path) -> None:
    path = tmp_path / "mac.csv"
    path.write_bytes((HEADER + _body(300_000)).replace("\n", "\r").encode())
    size = path.stat().st_size
    sink = ProblemSink("mac.csv")
    tracemalloc.start()
    try:
        info = scan_table(path, LAYOUT, sink)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert not info.ok
    assert peak < 0.4 * size, (peak, size)
