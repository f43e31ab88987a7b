"""Progress of a long table read (SPEC §7): quiet at first, then a live line on a terminal
and a plain line at least every 30 s in logs."""

from __future__ import annotations

import io
from itertools import pairwise

from bpsync.console import LiveLines, read_progress


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_logs_get_a_line_when_reads_take_long_and_then_at_least_every_30_s() -> None:
    clock, notes = Clock(), list[str]()
    on_rows = read_progress("owners", notes.append, clock=clock)
    on_rows(1000, 100_000)  # a quick start says nothing
    assert notes == []
    for second in range(4, 100):
        clock.now = second
        on_rows(second * 1000, 100_000)
    assert notes[0] == "owners: read 4,000 of 100,000 rows (4%)"
    assert 3 <= len(notes) <= 10  # throttled, not one line per page
    times = [int(n.split("read ")[1].split(",")[0]) for n in notes]
    assert all(b - a <= 30 for a, b in pairwise(times))


def test_a_terminal_gets_one_live_line_cleared_at_the_end() -> None:
    clock, out = Clock(), io.StringIO()
    live = LiveLines(out)
    on_rows = read_progress("owners", lambda text: None, live, clock=clock)
    clock.now = 5
    on_rows(50, 100)
    assert "owners: read 50 of 100 rows (50%)" in out.getvalue()
    on_rows(100, 100)
    assert live.lines == {}


def test_without_a_total_it_counts_rows() -> None:
    clock, notes = Clock(), list[str]()
    on_rows = read_progress("t", notes.append, clock=clock)
    clock.now = 10
    on_rows(2500, None)
    assert notes == ["t: read 2,500 rows"]
