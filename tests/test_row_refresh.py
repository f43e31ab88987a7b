"""Row refresh (SPEC §7): on v2.1 a refresh reads back the rows of small managed tables,
reports rows changed outside bpsync and plans against BigPanda's rows."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from helpers import fast_client_options, make_repo, manifest_yaml, run_cli

from bpsync.emulator import Emulator

TOKEN = "tok-rows-3e"
V21 = "api:\n  version: v2.1\nmanifests: ['tables/*.yaml']\n"
V1 = "manifests: ['tables/*.yaml']\n"
CSV = "application,owner,team\n" + "".join(f"app{i},owner{i},team{i}\n" for i in range(10))


def bp(root: Path, emu: Emulator, *argv: str) -> tuple[int, str, str]:
    env = {"BIGPANDA_API_URL": emu.url, "BIGPANDA_TOKEN": TOKEN}
    return run_cli(argv, root, env, client_options=fast_client_options())


def applied(tmp_path: Path, emu: Emulator, config: str = V21) -> tuple[Path, str]:
    root = make_repo(
        tmp_path,
        manifests={"owners": manifest_yaml("owners.csv")},
        tables={"owners.csv": CSV},
        config=config,
    )
    code, out, err = bp(root, emu, "apply", "--auto-approve")
    assert code == 0, out + err
    state = json.loads((root / ".bpsync" / "state.json").read_text())
    return root, state["tables"]["owners"]["enrichment_id"]


def plan_json(root: Path, emu: Emulator, *argv: str) -> dict[str, Any]:
    code, out, err = bp(root, emu, "plan", "--format", "json", *argv)
    assert code == 0, err
    return dict(json.loads(out)["tables"][0])


def reads(emu: Emulator) -> list[Any]:
    return [r for r in emu.requests if r.method == "GET" and r.path.endswith("/map")]


def change_in_ui(emu: Emulator, eid: str, *, bump_version: bool = True) -> None:
    emu.put_rows(
        eid,
        [
            {"application": "app1", "owner": "someone-else", "team": "team1"},
            {"application": "ui-only", "owner": "x", "team": "y"},
        ],
        bump_version=bump_version,
    )
    emu.delete_rows(eid, [{"application": "app2"}], bump_version=bump_version)


def test_rows_changed_in_the_ui_are_drift_and_the_plan_restores_them(
    tmp_path: Path, emu: Emulator
) -> None:
    root, eid = applied(tmp_path, emu)
    t = plan_json(root, emu)
    assert (t["action"], t["baseline"], t["row_drift"]) == ("no-op", "bigpanda", None)
    change_in_ui(emu, eid)
    t = plan_json(root, emu)
    assert t["baseline"] == "bigpanda" and t["action"] == "update"
    drift = t["row_drift"]
    assert (drift["added"], drift["changed"], drift["removed"]) == (1, 1, 1)
    assert {(k["op"], k["key"]["application"]) for k in drift["keys"]} == {
        ("add", "ui-only"),
        ("change", "app1"),
        ("remove", "app2"),
    }
    # What apply will change in BigPanda: the UI's changes undone.
    assert t["rows"] == {"added": 1, "changed": 1, "removed": 1, "unchanged": 8}
    ops = {(c["op"], c["key"]["application"]) for c in t["row_changes"]}
    assert ops == {("add", "app2"), ("change", "app1"), ("remove", "ui-only")}
    assert any("3 rows changed in BigPanda outside bpsync" in d for d in t["drift"])
    for fmt in ("text", "markdown"):
        code, out, _ = bp(root, emu, "plan", "--format", fmt)
        assert "3 rows changed in BigPanda outside bpsync" in out
        assert "1 added, 1 changed, 1 removed" in out
        assert out.index("3 rows changed") < out.index("Plan: 1 table")
    code, out, err = bp(root, emu, "apply", "--auto-approve")
    assert code == 0, out + err
    assert emu.table_rows(eid) == [
        dict(zip(("application", "owner", "team"), line.split(","), strict=True))
        for line in CSV.splitlines()[1:]
    ]
    assert bp(root, emu, "plan", "--detailed-exitcode")[0] == 0


def test_a_change_the_version_does_not_show_is_still_found(tmp_path: Path, emu: Emulator) -> None:
    root, eid = applied(tmp_path, emu)
    change_in_ui(emu, eid, bump_version=False)
    t = plan_json(root, emu)
    assert t["action"] == "update" and t["row_drift"]["changed"] == 1
    code, _, _ = bp(root, emu, "plan", "--detailed-exitcode")
    assert code == 2


def test_a_table_over_the_budget_is_checked_by_version_only_and_says_so(
    tmp_path: Path, emu: Emulator
) -> None:
    root, eid = applied(tmp_path, emu)
    change_in_ui(emu, eid, bump_version=False)
    emu.clear_requests()
    t = plan_json(root, emu, "--refresh-rows", "9")
    assert t["baseline"] == "snapshot" and t["row_drift"] is None and t["action"] == "no-op"
    assert any("version only" in n and "10 rows" in n for n in t["notes"])
    assert reads(emu) == []
    _, out, _ = bp(root, emu, "plan", "--refresh-rows", "9")
    assert "version only" in out


def test_refresh_rows_0_turns_it_off_and_the_config_sets_the_budget(
    tmp_path: Path, emu: Emulator
) -> None:
    root, _ = applied(tmp_path, emu)
    emu.clear_requests()
    assert plan_json(root, emu, "--refresh-rows", "0")["baseline"] == "snapshot"
    assert reads(emu) == []
    (root / "bpsync.yaml").write_text(V21 + "refresh:\n  max_rows: 5\n")
    assert plan_json(root, emu)["baseline"] == "snapshot"
    assert plan_json(root, emu, "--refresh-rows", "10")["baseline"] == "bigpanda"


def test_v1_says_once_that_it_cannot_read_rows(tmp_path: Path, emu: Emulator) -> None:
    root, _ = applied(tmp_path, emu, config=V1)
    code, _, err = bp(root, emu, "plan", "--refresh-rows", "100")
    assert code == 0 and err.count("cannot read a table's rows") == 1
    _, _, err = bp(root, emu, "plan")
    assert "cannot read" not in err  # not asked for explicitly


@pytest.mark.parametrize("command", ["plan", "apply"])
def test_apply_refreshes_rows_too(tmp_path: Path, emu: Emulator, command: str) -> None:
    root, eid = applied(tmp_path, emu)
    change_in_ui(emu, eid, bump_version=False)
    argv = ["apply", "--auto-approve"] if command == "apply" else ["plan"]
    code, out, err = bp(root, emu, *argv)
    assert code == 0, out + err
    assert "3 rows changed in BigPanda outside bpsync" in out
    if command == "apply":
        assert bp(root, emu, "plan", "--detailed-exitcode")[0] == 0


def test_a_key_that_may_not_read_rows_plans_by_version_saying_so_once(
    tmp_path: Path, emu: Emulator
) -> None:
    root, _ = applied(tmp_path, emu)
    emu.faults.forbid_read()
    code, out, err = bp(root, emu, "plan", "--format", "json")
    assert code == 0, err
    assert err.count("may not read tables' rows") == 1
    assert json.loads(out)["tables"][0]["baseline"] == "snapshot"


def test_a_read_that_fails_falls_back_to_the_version_and_says_so(
    tmp_path: Path, emu: Emulator
) -> None:
    root, _ = applied(tmp_path, emu)
    emu.faults.move_total_between_pages(times=None)
    emu.faults.cap_per_page(3)
    t = plan_json(root, emu)
    assert t["baseline"] == "snapshot"
    assert any("the read failed" in n and "kept changing" in n for n in t["notes"])
