"""What an apply that did not finish leaves behind is settled by the next plan (issue 13).

A replace whose job failed, or that was killed, records its new enrichment in state; a create
killed in flight records only its intent. Whatever the manifest says afterwards (restored,
changed, deleted, renamed), the next plan shows how that enrichment is settled (reused,
adopted or deactivated) and the apply after it leaves exactly one active enrichment per
manifest, none unknown to the state, and no pending entry.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_crash import MAP_NAME, TOKEN, bp, csv_rows, killed_apply, make_repo, wait_for_jobs

from bpsync.emulator import Emulator

EMULATOR_OPTIONS = {"job_seconds": 0.0, "token": TOKEN}


def state_tables(repo: Path) -> dict[str, dict[str, object]]:
    data = json.loads((repo / ".bpsync" / "state.json").read_text())
    tables: dict[str, dict[str, object]] = data["tables"]
    return tables


def active(emu: Emulator, name: str = MAP_NAME) -> list[str]:
    return [str(e["id"]) for e in emu.store.all() if e["name"] == name and e["active"]]


def all_active(emu: Emulator) -> list[str]:
    return [str(e["id"]) for e in emu.store.all() if e["active"]]


def change_field(repo: Path) -> tuple[Path, str]:
    """Make the next plan a replace; returns the manifest and its text before."""
    m = repo / "tables" / "owners.yaml"
    before = m.read_text()
    m.write_text(before.replace("override_existing: true", "override_existing: false"))
    return m, before


def assert_settled(repo: Path, emu: Emulator, *, deleted: bool = False) -> None:
    wait_for_jobs(emu)
    tables = state_tables(repo)
    if deleted:
        assert tables == {}
        assert all_active(emu) == []
    else:
        owners = tables["owners"]
        assert owners.get("pending") is None, owners
        assert all_active(emu) == [owners["enrichment_id"]]
        assert emu.table_rows(str(owners["enrichment_id"])) == csv_rows(
            repo / "tables" / "owners.csv"
        )
    code, out, err = bp(repo, emu, "plan")
    assert code == 0, out + err
    assert "No changes." in out, out + err


@pytest.fixture
def applied(tmp_path: Path, emu: Emulator) -> Path:
    repo = make_repo(tmp_path / "repo")
    code, out, err = bp(repo, emu, "apply", "--auto-approve")
    assert code == 0, out + err
    return repo


def failed_replace(repo: Path, emu: Emulator) -> tuple[str, str]:
    """A replace whose job failed; returns (old enrichment id, the new one)."""
    old = str(state_tables(repo)["owners"]["enrichment_id"])
    emu.faults.fail_next_jobs(1)
    code, out, err = bp(repo, emu, "apply", "--auto-approve")
    assert code == 1, out + err
    new = [e for e in active(emu) if e != old]
    assert len(new) == 1, active(emu)
    return old, new[0]


def test_failed_replace_then_restored_manifest_deactivates_the_new_enrichment(
    applied: Path, emu: Emulator
) -> None:
    manifest, before = change_field(applied)
    old, new = failed_replace(applied, emu)
    manifest.write_text(before)
    code, out, err = bp(applied, emu, "plan")
    assert code == 0, out + err
    assert "No changes." not in out
    assert new in out and "deactivates it" in out, out
    code, out, err = bp(applied, emu, "apply", "--auto-approve")
    assert code == 0, out + err
    assert active(emu) == [old]
    assert_settled(applied, emu)


def test_failed_replace_then_same_replace_reuses_the_new_enrichment(
    applied: Path, emu: Emulator
) -> None:
    change_field(applied)
    _, new = failed_replace(applied, emu)
    code, out, err = bp(applied, emu, "apply", "--auto-approve")
    assert code == 0, out + err
    assert active(emu) == [new]
    assert len([e for e in emu.store.all() if e["name"] == MAP_NAME]) == 2
    assert_settled(applied, emu)


def test_failed_replace_then_another_change_deactivates_the_first_new_enrichment(
    applied: Path, emu: Emulator
) -> None:
    manifest, before = change_field(applied)
    _, new = failed_replace(applied, emu)
    manifest.write_text(
        before.replace(
            "type: result_tag\n    override", "type: result_tag\n    tag_name: team_x\n    override"
        )
    )
    code, out, err = bp(applied, emu, "apply", "--auto-approve")
    assert code == 0, out + err
    assert new not in active(emu)
    assert_settled(applied, emu)


def test_failed_replace_then_deleted_manifest_deactivates_both(
    applied: Path, emu: Emulator
) -> None:
    manifest, _ = change_field(applied)
    old, new = failed_replace(applied, emu)
    manifest.unlink()
    code, out, err = bp(applied, emu, "plan")
    assert new in out and old in out, out
    code, out, err = bp(applied, emu, "apply", "--auto-approve")
    assert code == 0, out + err
    assert_settled(applied, emu, deleted=True)


@pytest.mark.parametrize("then", ["restore", "delete"])
def test_replace_killed_before_its_upload_is_settled(
    applied: Path, emu: Emulator, then: str
) -> None:
    manifest, before = change_field(applied)
    old = str(state_tables(applied)["owners"]["enrichment_id"])
    assert killed_apply(applied, emu, "created").returncode == -9
    assert len(active(emu)) == 2
    if then == "restore":
        manifest.write_text(before)
    else:
        manifest.unlink()
    code, out, err = bp(applied, emu, "apply", "--auto-approve")
    assert code == 0, out + err
    if then == "restore":
        assert active(emu) == [old]
    assert_settled(applied, emu, deleted=then == "delete")


# -- a create killed before BigPanda's answer (its id) was recorded -----------------------


def killed_create(tmp_path: Path, emu: Emulator) -> tuple[Path, str]:
    """A create killed between BigPanda's creating the enrichment and the state's recording
    its id; returns the repository and the orphan's id."""
    repo = make_repo(tmp_path / "repo")
    assert killed_apply(repo, emu, "state-write#2").returncode == -9
    orphans = active(emu)
    assert len(orphans) == 1
    pending = state_tables(repo)["owners"]["pending"]
    assert isinstance(pending, dict) and not pending["enrichment_id"]
    return repo, orphans[0]


def test_killed_create_then_deleted_manifest_deactivates_the_orphan_by_id(
    tmp_path: Path, emu: Emulator
) -> None:
    repo, orphan = killed_create(tmp_path, emu)
    (repo / "tables" / "owners.yaml").unlink()
    code, out, err = bp(repo, emu, "plan")
    assert code == 0, out + err
    assert f"enrichment {orphan} will be deactivated" in out, out
    code, out, err = bp(repo, emu, "apply", "--auto-approve")
    assert code == 0, out + err
    assert_settled(repo, emu, deleted=True)


def test_killed_create_then_renamed_map_name_leaves_one_active(
    tmp_path: Path, emu: Emulator
) -> None:
    repo, orphan = killed_create(tmp_path, emu)
    m = repo / "tables" / "owners.yaml"
    m.write_text(m.read_text().replace(MAP_NAME, "Owners (renamed)"))
    code, out, err = bp(repo, emu, "plan")
    assert orphan in out, out
    code, out, err = bp(repo, emu, "apply", "--auto-approve")
    assert code == 0, out + err
    assert_settled(repo, emu)
    assert active(emu, "Owners (renamed)") == all_active(emu)


def test_killed_create_then_added_field_replaces_the_orphan(tmp_path: Path, emu: Emulator) -> None:
    repo, orphan = killed_create(tmp_path, emu)
    m = repo / "tables" / "owners.yaml"
    m.write_text(m.read_text() + "  - title: site\n    type: result_tag\n")
    csv = repo / "tables" / "owners.csv"
    lines = csv.read_text().splitlines()
    csv.write_text("\n".join([lines[0] + ",site", *(line + ",eu" for line in lines[1:])]) + "\n")
    code, out, err = bp(repo, emu, "apply", "--auto-approve")
    assert code == 0, out + err
    assert "does not know" not in err
    assert orphan not in all_active(emu)
    assert_settled(repo, emu)


# -- an upload whose answer was lost after the whole body went out -------------------------


def test_upload_dropped_after_the_whole_body_is_retried_and_apply_succeeds(
    tmp_path: Path, emu: Emulator
) -> None:
    repo = make_repo(tmp_path / "repo")
    size = (repo / "tables" / "owners.csv").stat().st_size
    emu.faults.drop_upload_after(bytes=size, times=1)  # every byte read, then no answer
    code, out, err = bp(repo, emu, "apply", "--auto-approve")
    assert code == 0, out + err
    sent = [r for r in emu.requests if r.method == "POST" and r.path.endswith("/map")]
    assert [r.status for r in sent] == [None, 202]
    assert sent[0].body_bytes == size
    assert_settled(repo, emu)
