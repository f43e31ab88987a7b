"""The cycle collector is paused only while a plan's rows are built and written."""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Any

import pytest

from bpsync import rowdiff
from bpsync.gcpause import cycle_collector_paused
from bpsync.table import ProblemSink, TableLayout

LAYOUT = TableLayout(("h", "e"), (0,))


def test_the_diff_runs_without_the_collector_and_gives_it_back(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    seen: list[bool] = []
    real = rowdiff._aligned_diff

    def spy(*args: Any) -> Any:
        seen.append(gc.isenabled())
        return real(*args)

    monkeypatch.setattr(rowdiff, "_aligned_diff", spy)
    (tmp_path / "s.csv").write_text("h,e\na,1\nb,2\n")
    (tmp_path / "t.csv").write_text("h,e\na,1\nb,3\n")
    assert gc.isenabled()
    d = rowdiff.diff_table(
        tmp_path / "t.csv", LAYOUT, ProblemSink("t.csv"), lambda: (tmp_path / "s.csv").open("rb")
    )
    assert d.changed == 1
    assert seen == [False] and gc.isenabled()


def test_a_pause_inside_a_pause_leaves_the_outer_one_in_charge() -> None:
    with cycle_collector_paused():
        with cycle_collector_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()
    assert gc.isenabled()


def test_an_error_resumes_the_collector_and_a_disabled_one_stays_off() -> None:
    with pytest.raises(ValueError), cycle_collector_paused():
        raise ValueError
    assert gc.isenabled()
    gc.disable()
    try:
        with cycle_collector_paused():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()
