"""The emulator's bulk path for plain blocks of an upload finds what its line-by-line path
finds: the same failure reasons, in the same order, on random tables and block sizes."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bpsync.emulator import csvcheck

CELL = st.text(alphabet=st.sampled_from(list('ab,"\r\n é|')), min_size=0, max_size=5)
ROW = st.lists(CELL, min_size=2, max_size=4)


def _line(cells: list[str], quote: bool) -> str:
    if not quote:
        return ",".join(cells)
    return ",".join('"' + c.replace('"', '""') + '"' for c in cells)


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    rows=st.lists(st.tuples(ROW, st.booleans()), max_size=30),
    repeat=st.lists(st.integers(0, 29), max_size=3),
    block=st.sampled_from([16, 64, 1 << 20]),
    final_newline=st.booleans(),
)
def test_bulk_path_reports_what_the_line_path_reports(
    monkeypatch: pytest.MonkeyPatch,
    rows: list[tuple[list[str], bool]],
    repeat: list[int],
    block: int,
    final_newline: bool,
) -> None:
    lines = ["a,b,c"] + [_line(cells, quote) for cells, quote in rows]
    lines += [lines[1 + i] for i in repeat if i < len(rows)]  # duplicate rows
    text = "\n".join(lines) + ("\n" if final_newline else "")
    monkeypatch.setattr(csvcheck, "_BLOCK", block)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "t.csv"
        path.write_bytes(text.encode("utf-8"))
        bulk = csvcheck.check_table(path, ["a", "b", "c"])
        monkeypatch.setattr(csvcheck, "_plain_rows", lambda raw, width: None)
        by_line = csvcheck.check_table(path, ["a", "b", "c"])
    assert bulk == by_line


def test_duplicates_across_blocks_are_reported_once_each(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(csvcheck, "_BLOCK", 64)
    rows = [f"h{i},x,y" for i in range(40)]
    path = tmp_path / "t.csv"
    path.write_text("a,b,c\n" + "\n".join([*rows, rows[3], '"h,5",x,y', rows[39]]) + "\n")
    reasons = csvcheck.check_table(path, ["a", "b", "c"])
    assert reasons == [
        "line 42: duplicate of the row on line 5",
        "line 44: duplicate of the row on line 41",
    ]
