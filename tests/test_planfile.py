"""Saved plans: exact round trip, atomic writes, and clear refusals of anything else."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import plan_cases as pc
import pytest

from bpsync import planfile
from bpsync.errors import PlanError
from bpsync.plan import Plan
from bpsync.planfile import PLAN_FILE_VERSION, load_plan, save_plan
from bpsync.render.json import render_json
from bpsync.render.text import render_text


def assert_same_plan(loaded: Plan, original: Plan) -> None:
    """Field by field (row changes materialised), so a failure names the field."""
    for f in dataclasses.fields(Plan):
        if f.name != "tables":
            assert getattr(loaded, f.name) == getattr(original, f.name), f.name
    assert len(loaded.tables) == len(original.tables)
    for a, b in zip(loaded.tables, original.tables, strict=True):
        for f in dataclasses.fields(a):
            x, y = getattr(a, f.name), getattr(b, f.name)
            if f.name == "row_changes":
                assert len(x) == len(y)
                x, y = list(x), list(y)
            assert x == y, f"{a.name}.{f.name}"
    assert loaded == original


@pytest.mark.parametrize("case", sorted(pc.GOLDEN_CASES))
def test_round_trip(case: str, tmp_path: Path) -> None:
    plan = pc.GOLDEN_CASES[case]()
    assert_same_plan(load_plan(save_plan(plan, tmp_path / "plan.out")), plan)


def test_round_trip_keeps_plan_order_of_tables_and_rows(tmp_path: Path) -> None:
    # Lazy create plans are in file order, not key order; a saved plan must still load equal.
    big = pc.big_case(3_000, lazy=True)
    plan = pc.plan(pc.unchanged_table("zzz"), *big.tables)
    loaded = load_plan(save_plan(plan, tmp_path / "plan.out"))
    assert_same_plan(loaded, plan)
    assert [t.name for t in loaded.tables] == ["zzz", "big"]


def test_large_tables_load_lazily(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(planfile, "EAGER_ROWS", 100)
    plan = pc.big_case(5_000, lazy=True)
    path = save_plan(plan, tmp_path / "plan.out")
    loaded = load_plan(path)
    changes = loaded.tables[0].row_changes
    assert not changes.in_memory and len(changes) == 5_000
    assert_same_plan(loaded, plan)
    assert render_json(loaded) == render_json(plan)
    path.write_text(path.read_text() + " ")
    with pytest.raises(PlanError, match="changed after it was loaded"):
        list(changes)


def test_a_saved_plan_is_the_json_rendering_plus_its_section(tmp_path: Path) -> None:
    plan = pc.update_case()
    doc = json.loads(save_plan(plan, tmp_path / "p").read_text(encoding="utf-8"))
    section = doc.pop("bpsync_plan")
    assert section["version"] == PLAN_FILE_VERSION
    assert doc["fingerprint"] == plan.fingerprint and doc["summary"] == plan.summary()
    rendering = json.loads(render_json(plan))
    assert {t["name"] for t in doc["tables"]} == {t["name"] for t in rendering["tables"]}


def test_save_is_atomic_and_replaces(tmp_path: Path) -> None:
    path = tmp_path / "plan.out"
    path.write_text("old")
    save_plan(pc.create_case(), path)
    save_plan(pc.update_case(), path)
    assert load_plan(path) == pc.update_case()
    assert os.listdir(tmp_path) == ["plan.out"]


def test_failed_save_leaves_no_temp_file_and_keeps_the_old_plan(tmp_path: Path) -> None:
    path = save_plan(pc.create_case(), tmp_path / "plan.out")
    broken = pc.plan(pc.table(max_delete_fraction=float("nan")))
    with pytest.raises(ValueError):
        save_plan(broken, path)
    assert os.listdir(tmp_path) == ["plan.out"]
    assert load_plan(path) == pc.create_case()


def test_save_into_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(PlanError, match="cannot write plan file"):
        save_plan(pc.create_case(), tmp_path / "nope" / "plan.out")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(PlanError, match="not found") as e:
        load_plan(tmp_path / "plan.out")
    assert "bpsync plan --out" in e.value.render()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "is empty"),
        ("application,owner\ncrm,ana\n", "not a bpsync plan file"),
        ('{"a": 1}', "not a bpsync plan file"),
    ],
)
def test_not_a_plan_file(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "plan.out"
    path.write_text(content)
    with pytest.raises(PlanError, match=message):
        load_plan(path)


def test_a_json_rendering_is_not_a_plan_file(tmp_path: Path) -> None:
    path = tmp_path / "plan.json"
    path.write_text(render_json(pc.update_case()))
    with pytest.raises(PlanError, match="JSON rendering of a plan, not a saved plan"):
        load_plan(path)


@pytest.mark.parametrize("version", [2, None, "1"])
def test_wrong_version(tmp_path: Path, version: object) -> None:
    path = save_plan(pc.update_case(), tmp_path / "plan.out")
    text = path.read_text().replace('"version": 1,', f'"version": {json.dumps(version)},', 1)
    path.write_text(text)
    with pytest.raises(PlanError, match="has version"):
        load_plan(path)


def test_every_truncation_is_refused(tmp_path: Path) -> None:
    data = save_plan(pc.update_case(), tmp_path / "full").read_bytes()
    cut = tmp_path / "cut"
    for n in range(0, len(data) - 1, 7):
        cut.write_bytes(data[:n])
        with pytest.raises(PlanError):
            load_plan(cut)
    cut.write_bytes(data[:-1])  # only the final newline missing
    with pytest.raises(PlanError, match="truncated"):
        load_plan(cut)


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (b'"op": "add"', b'"op": "add", '),  # invalid JSON in a row
        (b'"application": "crm"}, "before"', b'"app": "crm"}, "before"'),  # wrong key title
        (b"  ]\n}\n", b"  ]\n}\n{}\n"),  # data after the end
        (b'"row_change_count": 4', b'"row_change_count": 5'),  # a row missing
    ],
)
def test_damaged_files_are_refused(tmp_path: Path, old: bytes, new: bytes) -> None:
    path = save_plan(pc.update_case(), tmp_path / "plan.out")
    data = path.read_bytes()
    assert old in data
    path.write_bytes(data.replace(old, new, 1))
    with pytest.raises(PlanError, match="damaged"):
        load_plan(path)


def test_show_renders_a_loaded_plan_like_the_original(tmp_path: Path) -> None:
    plan = pc.drift_case()
    loaded = load_plan(save_plan(plan, tmp_path / "plan.out"))
    assert render_text(loaded) == render_text(plan)
    assert render_json(loaded) == render_json(plan)
