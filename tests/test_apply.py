"""`bpsync apply` end to end against the emulator over real sockets on 127.0.0.1."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import zstandard
from helpers import fast_client_options, run_cli
from state_util import gzip_snapshot

from bpsync.bigpanda.client import BigPandaClient
from bpsync.bigpanda.models import EnrichmentSpec
from bpsync.emulator import Emulator
from bpsync.state import LocalBackend

REPO = Path(__file__).resolve().parents[1]
TOKEN = "tok-apply-7c1e"  # must never appear in any output


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    shutil.copytree(REPO / "tables", tmp_path / "tables")
    shutil.copy(REPO / "bpsync.yaml", tmp_path / "bpsync.yaml")
    return tmp_path


class Run:
    def __init__(self, code: int, out: str, err: str) -> None:
        self.code, self.out, self.err = code, out, err
        assert TOKEN not in out and TOKEN not in err

    @property
    def text(self) -> str:
        return self.out + self.err


def bp(repo: Path, emu: Emulator, *argv: str, tty: bool = False, **env: str) -> Run:
    environ = {"BIGPANDA_API_URL": emu.url, "BIGPANDA_TOKEN": TOKEN, **env}
    return Run(*run_cli(argv, repo, environ, tty=tty, client_options=fast_client_options()))


def state_of(repo: Path) -> dict:
    return json.loads((repo / ".bpsync" / "state.json").read_text())


def uploads(emu: Emulator) -> list:
    return [r for r in emu.requests if r.method == "POST" and r.path.endswith("/map")]


def csv_rows(path: Path) -> list[dict[str, str]]:
    import csv

    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_full_cycle_create_update_replace_deactivate(repo: Path, emu: Emulator) -> None:
    r = bp(repo, emu, "apply", "--auto-approve")
    assert r.code == 0, r.text
    assert "Apply complete! Tables: 3 created" in r.out
    state = state_of(repo)["tables"]
    owners = state["service-owners"]["enrichment_id"]
    assert emu.table_rows(owners) == csv_rows(repo / "tables" / "service-owners.csv")
    assert "No changes." in bp(repo, emu, "plan").out

    # Edit rows: one change, one removal, one addition.
    csv_path = repo / "tables" / "service-owners.csv"
    text = csv_path.read_text().replace("billing,Ravi Patel", "billing,Ana Lima")
    text = "".join(line for line in text.splitlines(True) if not line.startswith("crm,"))
    csv_path.write_text(text + "zeta,Tom Becker,commerce,https://wiki.example.com/z\n")
    r = bp(repo, emu, "plan")
    assert "Plan: 1 table to change; 1 row to add, 1 to change, 1 to remove." in r.out
    assert '"Ravi Patel" → "Ana Lima"' in r.out
    r = bp(repo, emu, "apply", "--auto-approve")
    assert r.code == 0, r.text
    assert "1 updated" in r.out and "1 added, 1 changed, 1 removed" in r.out
    assert emu.table_rows(owners) == csv_rows(csv_path)
    assert "No changes." in bp(repo, emu, "plan").out

    # A field change needs a new enrichment; the old one is deactivated only after done.
    manifest = repo / "tables" / "host-cmdb.yaml"
    manifest.write_text(
        manifest.read_text().replace("override_existing: true", "override_existing: false")
    )
    old_id = state_of(repo)["tables"]["host-cmdb"]["enrichment_id"]
    r = bp(repo, emu, "apply", "--auto-approve")
    assert r.code == 0, r.text
    new_id = state_of(repo)["tables"]["host-cmdb"]["enrichment_id"]
    assert new_id != old_id
    assert emu.enrichment(old_id)["active"] is False
    assert emu.enrichment(new_id)["active"] is True
    assert emu.table_rows(new_id) == csv_rows(repo / "tables" / "host-cmdb.csv")

    # Deleting a manifest deactivates its enrichment and forgets the table.
    routing = state_of(repo)["tables"]["check-routing"]["enrichment_id"]
    (repo / "tables" / "check-routing.yaml").unlink()
    r = bp(repo, emu, "plan")
    assert "deactivate" in r.out
    r = bp(repo, emu, "apply", "--auto-approve")
    assert r.code == 0, r.text
    assert emu.enrichment(routing)["active"] is False
    assert "check-routing" not in state_of(repo)["tables"]
    assert "No changes." in bp(repo, emu, "plan").out


def test_state_with_gzip_snapshots_plans_no_changes_and_applies_onto_zstd(
    repo: Path, emu: Emulator
) -> None:
    """A state from before zstd (snapshots stored as <sha>.csv.gz) is read as it is: nothing
    is rewritten until a table changes, and then that table's new snapshot is a .csv.zst."""
    assert bp(repo, emu, "apply", "--auto-approve").code == 0
    snapshots = repo / ".bpsync" / "snapshots"
    for zst in snapshots.glob("*.csv.zst"):
        plain = zstandard.ZstdDecompressor().stream_reader(zst.read_bytes()).read()
        (snapshots / f"{zst.name.removesuffix('.csv.zst')}.csv.gz").write_bytes(
            gzip_snapshot(plain)
        )
        zst.unlink()
    old = {p.name: p.read_bytes() for p in snapshots.iterdir()}
    assert len(old) == 3 and all(name.endswith(".csv.gz") for name in old)

    assert "No changes." in bp(repo, emu, "plan").out
    r = bp(repo, emu, "apply", "--auto-approve")
    assert r.code == 0 and "No changes." in r.out, r.text
    assert {p.name: p.read_bytes() for p in snapshots.iterdir()} == old

    old_sha = state_of(repo)["tables"]["service-owners"]["sha256"]
    csv_path = repo / "tables" / "service-owners.csv"
    csv_path.write_text(csv_path.read_text().replace("billing,Ravi Patel", "billing,Ana Lima"))
    r = bp(repo, emu, "plan")  # diffed against the gzip snapshot
    assert "Plan: 1 table to change; 0 rows to add, 1 to change, 0 to remove." in r.out, r.text
    assert '"Ravi Patel" → "Ana Lima"' in r.out
    r = bp(repo, emu, "apply", "--auto-approve")
    assert r.code == 0, r.text
    new_sha = state_of(repo)["tables"]["service-owners"]["sha256"]
    # The table's gzip snapshot was pruned for a zstd one; the others are kept as they were.
    kept = {name: data for name, data in old.items() if not name.startswith(old_sha)}
    assert len(kept) == 2
    assert {p.name: p.read_bytes() for p in snapshots.iterdir() if p.name in kept} == kept
    assert sorted(p.name for p in snapshots.iterdir()) == sorted([*kept, f"{new_sha}.csv.zst"])
    assert "No changes." in bp(repo, emu, "plan").out


def test_update_in_place_patches_metadata_without_upload(repo: Path, emu: Emulator) -> None:
    assert bp(repo, emu, "apply", "--auto-approve").code == 0
    before = len(uploads(emu))
    m = repo / "tables" / "check-routing.yaml"
    m.write_text(m.read_text().replace("map_name: Check routing", "map_name: Routing v2"))
    r = bp(repo, emu, "apply", "--auto-approve")
    assert r.code == 0, r.text
    assert "1 updated in place" in r.out
    assert len(uploads(emu)) == before
    eid = state_of(repo)["tables"]["check-routing"]["enrichment_id"]
    assert emu.enrichment(eid, "v1")["config"]["map_name"] == "Routing v2"


def test_without_terminal_apply_needs_auto_approve(repo: Path, emu: Emulator) -> None:
    r = bp(repo, emu, "apply")
    assert r.code == 1
    assert "--auto-approve" in r.err
    assert emu.requests == []
    assert bp(repo, emu, "apply", "--auto-approve").code == 0
    r = bp(repo, emu, "apply")  # nothing to approve: nothing to refuse
    assert r.code == 0 and "No changes." in r.out


def test_failed_job_shows_reason_and_keeps_the_change_planned(repo: Path, emu: Emulator) -> None:
    emu.faults.fail_next_jobs(1, reason="Header does not match the schema")
    r = bp(repo, emu, "apply", "--auto-approve", "--parallelism", "1")
    assert r.code == 1
    assert "Header does not match the schema" in r.err
    assert "Apply failed for 1 of 3 table(s)" in r.out
    plan = bp(repo, emu, "plan", "--format", "json")
    failed = [t for t in json.loads(plan.out)["tables"] if t["action"] != "no-op"]
    assert len(failed) == 1  # the other two were applied; the failed one is still to do
    assert bp(repo, emu, "apply", "--auto-approve").code == 0
    assert "No changes." in bp(repo, emu, "plan").out


def test_transient_errors_during_upload_and_polling_are_retried(repo: Path, emu: Emulator) -> None:
    emu.faults.fail_next_requests(2, status=503, path_contains="/map")
    emu.faults.fail_next_requests(2, status=429, path_contains="jobs")
    r = bp(repo, emu, "apply", "--auto-approve", "--table", "service-owners")
    assert r.code == 0, r.text
    ok_uploads = [u for u in uploads(emu) if u.status == 202]
    assert len(ok_uploads) == 1
    assert all(u.body_bytes == u.content_length for u in uploads(emu) if u.status == 202)


def test_job_that_never_ends_times_out_and_next_apply_reattaches(repo: Path, emu: Emulator) -> None:
    emu.faults.hang_jobs(True)
    r = bp(repo, emu, "apply", "--auto-approve", "--table", "check-routing", "--timeout", "1s")
    assert r.code == 1
    assert "may still complete" in r.err
    pending = state_of(repo)["tables"]["check-routing"]["pending"]
    assert pending is not None and pending["job_id"]
    assert len(uploads(emu)) == 1


def test_second_apply_is_refused_by_the_lock(repo: Path, emu: Emulator) -> None:
    backend = LocalBackend(repo / ".bpsync")
    with backend.lock("bpsync apply") as held:
        r = bp(repo, emu, "apply", "--auto-approve")
    assert r.code == 1
    assert "lock" in r.err
    assert held.id in r.err and str(held.pid) in r.err and "bpsync apply" in r.err
    assert uploads(emu) == []


def test_stale_saved_plan_is_refused_naming_what_moved(repo: Path, emu: Emulator) -> None:
    assert bp(repo, emu, "plan", "--out", "plan.out").code == 0
    with (repo / "tables" / "host-cmdb.csv").open("a") as f:
        f.write("late-host.example.com,CI9,production,Linux Ops\n")
    r = bp(repo, emu, "apply", "plan.out")
    assert r.code == 1
    assert "stale" in r.err and "tables/host-cmdb.csv" in r.err
    assert emu.requests == []


def test_saved_plan_applies_without_prompt(repo: Path, emu: Emulator) -> None:
    assert bp(repo, emu, "plan", "--out", "plan.out").code == 0
    r = bp(repo, emu, "apply", "plan.out")
    assert r.code == 0, r.text
    assert "3 created" in r.out


def test_fingerprint_mismatch_is_refused_before_any_request(repo: Path, emu: Emulator) -> None:
    r = bp(repo, emu, "apply", "--auto-approve", "--expect-fingerprint", "sha256:" + "0" * 64)
    assert r.code == 1
    assert "fingerprint mismatch" in r.err
    assert emu.requests == []
    fp = json.loads(bp(repo, emu, "plan", "--format", "json", "--no-refresh").out)["fingerprint"]
    r = bp(repo, emu, "apply", "--auto-approve", "--expect-fingerprint", fp)
    assert r.code == 0, r.text


def test_mass_delete_needs_the_flag(repo: Path, emu: Emulator) -> None:
    assert bp(repo, emu, "apply", "--auto-approve").code == 0
    emu.clear_requests()
    path = repo / "tables" / "host-cmdb.csv"  # max_delete_fraction: 0.2
    lines = path.read_text().splitlines(True)
    path.write_text("".join(lines[:100]))
    r = bp(repo, emu, "apply", "--auto-approve")
    assert r.code == 1
    assert "mass delete" in r.err and "--allow-mass-delete" in r.err
    assert emu.requests == []
    r = bp(repo, emu, "apply", "--auto-approve", "--allow-mass-delete")
    assert r.code == 0, r.text
    eid = state_of(repo)["tables"]["host-cmdb"]["enrichment_id"]
    assert len(emu.table_rows(eid)) == 99


def test_import_adopts_an_existing_enrichment(repo: Path, emu: Emulator) -> None:
    fields = (
        {"title": "check", "type": "query_tag"},
        {"title": "environment", "type": "query_tag"},
        {"title": "escalation_policy", "type": "result_tag"},
        {"title": "priority", "type": "result_tag", "override_existing": True},
    )
    with BigPandaClient(emu.url, TOKEN, **fast_client_options()) as client:
        existing = client.create_enrichment(EnrichmentSpec("Check routing", fields))
    r = bp(repo, emu, "import", "check-routing", existing.id)
    assert r.code == 0, r.text
    plan = json.loads(bp(repo, emu, "plan", "--format", "json").out)
    routing = next(t for t in plan["tables"] if t["name"] == "check-routing")
    assert routing["action"] == "update" and routing["enrichment_id"] == existing.id
    assert routing["rows"]["added"] == 30  # remote content unknown: every row is uploaded
    assert bp(repo, emu, "apply", "--auto-approve").code == 0
    assert state_of(repo)["tables"]["check-routing"]["enrichment_id"] == existing.id
    assert "No changes." in bp(repo, emu, "plan").out


def test_drift_is_reported_and_overwritten(repo: Path, emu: Emulator) -> None:
    assert bp(repo, emu, "apply", "--auto-approve").code == 0
    eid = state_of(repo)["tables"]["service-owners"]["enrichment_id"]
    other = repo / "other.csv"
    other.write_text("application,owner,team,Runbook URL\nx,y,z,w\n")
    with BigPandaClient(emu.url, TOKEN, **fast_client_options()) as client:
        client.wait_for_job(client.upload_table(eid, other), timeout=10)
    r = bp(repo, emu, "plan")
    assert "since the last apply" in r.text  # the version moved outside bpsync
    assert "service-owners" in r.out and "update" in r.out
    assert bp(repo, emu, "apply", "--auto-approve").code == 0
    assert emu.table_rows(eid) == csv_rows(repo / "tables" / "service-owners.csv")
    assert "No changes." in bp(repo, emu, "plan").out


def test_missing_token_is_named(repo: Path, emu: Emulator) -> None:
    r = bp(repo, emu, "apply", "--auto-approve", BIGPANDA_TOKEN="")
    assert r.code == 1 and "BIGPANDA_TOKEN is not set" in r.err
    r = bp(repo, emu, "plan", "--refresh", BIGPANDA_TOKEN="")
    assert r.code == 1 and "BIGPANDA_TOKEN is not set" in r.err


def test_v2_1_api_sends_when_and_note(repo: Path, emu: Emulator) -> None:
    config = repo / "bpsync.yaml"
    config.write_text(config.read_text().replace("version: v1 ", "version: v2.1 "))
    m = repo / "tables" / "check-routing.yaml"
    m.write_text(m.read_text() + "when: 'source_system = \"nagios\"'\ndescription: routing\n")
    r = bp(repo, emu, "apply", "--auto-approve")
    assert r.code == 0, r.text
    creates = [
        q for q in emu.requests if q.method == "POST" and q.path.endswith("mapping-enrichment")
    ]
    assert len(creates) == 3
    eid = state_of(repo)["tables"]["check-routing"]["enrichment_id"]
    shown = emu.enrichment(eid, "v2.1")
    assert shown["when"] == 'source_system = "nagios"' and shown["note"] == "routing"
    assert shown["config"]["name"] == "Check routing"
    assert "No changes." in bp(repo, emu, "plan").out


def test_failed_replace_keeps_old_active_and_reuses_new_enrichment(
    repo: Path, emu: Emulator
) -> None:
    assert bp(repo, emu, "apply", "--auto-approve").code == 0
    old_id = state_of(repo)["tables"]["host-cmdb"]["enrichment_id"]
    manifest = repo / "tables" / "host-cmdb.yaml"
    manifest.write_text(
        manifest.read_text().replace("override_existing: true", "override_existing: false")
    )
    emu.faults.fail_next_jobs(1, reason="boom")
    r = bp(repo, emu, "apply", "--auto-approve")
    assert r.code == 1 and "boom" in r.err
    assert emu.enrichment(old_id)["active"] is True  # the old one still serves alerts
    assert state_of(repo)["tables"]["host-cmdb"]["enrichment_id"] == old_id
    assert "replace" in bp(repo, emu, "plan").out  # the change is still planned
    creates_before = [
        q for q in emu.requests if q.method == "POST" and q.path.endswith("enrichments")
    ]
    r = bp(repo, emu, "apply", "--auto-approve")
    assert r.code == 0, r.text
    creates_after = [
        q for q in emu.requests if q.method == "POST" and q.path.endswith("enrichments")
    ]
    assert len(creates_after) == len(creates_before)  # reused the enrichment made for it
    new_id = state_of(repo)["tables"]["host-cmdb"]["enrichment_id"]
    assert new_id != old_id and emu.enrichment(old_id)["active"] is False
    assert "No changes." in bp(repo, emu, "plan").out


def test_create_refuses_when_an_unknown_enrichment_has_the_name(repo: Path, emu: Emulator) -> None:
    fields = (
        {"title": "application", "type": "query_tag"},
        {"title": "owner", "type": "result_tag"},
    )
    with BigPandaClient(emu.url, TOKEN, **fast_client_options()) as client:
        existing = client.create_enrichment(EnrichmentSpec("Service owners", fields))
    r = bp(repo, emu, "apply", "--auto-approve")
    assert r.code == 1
    assert existing.id in r.err and "bpsync import service-owners" in r.err
    assert "service-owners" not in state_of(repo)["tables"]
    assert {"host-cmdb", "check-routing"} <= set(state_of(repo)["tables"])  # the others went on


def test_import_of_an_unknown_enrichment_says_why_and_changes_nothing(
    repo: Path, emu: Emulator
) -> None:
    r = bp(repo, emu, "import", "check-routing", "no-such-id")
    assert r.code == 1
    assert "no-such-id" in r.err and ("deleted" in r.err or "region" in r.err)
    assert not (repo / ".bpsync" / "state.json").exists()
    r = bp(repo, emu, "import", "no-such-table", "x")
    assert r.code == 64 and "no manifest defines table" in r.err


def test_force_unlock_clears_a_lock_left_by_a_killed_apply(repo: Path, emu: Emulator) -> None:
    backend = LocalBackend(repo / ".bpsync")
    held = backend.lock("bpsync apply")
    info = held.__enter__()  # never released: as if the holder had been killed elsewhere
    r = bp(repo, emu, "apply", "--auto-approve")
    assert r.code == 1 and info.id in r.err
    r = bp(repo, emu, "force-unlock", "not-the-id")
    assert r.code == 1 and backend.current_lock() is not None
    r = bp(repo, emu, "force-unlock", info.id)
    assert r.code == 0 and info.id in r.err
    assert backend.current_lock() is None
    assert bp(repo, emu, "apply", "--auto-approve").code == 0


@pytest.mark.parametrize(
    ("fields", "table", "counts"),
    [
        # The key moved to a column whose old values repeat: one prod row is removed.
        ([("env", "query_tag"), ("owner", "result_tag")], "env,owner\nprod,ana\ndev,cy\n",
         {"added": 0, "changed": 2, "removed": 1, "unchanged": 0}),
        # The key widened past the snapshot's columns (it had crashed the renderers).
        ([("host", "query_tag"), ("env", "query_tag"), ("zone", "query_tag"),
          ("region", "query_tag"), ("owner", "result_tag")],
         "host,env,zone,region,owner\nh1,prod,,,ana\nh2,prod,eu,w,bob\nh3,dev,,,cy\n",
         {"added": 1, "changed": 2, "removed": 1, "unchanged": 0}),
    ],
)  # fmt: skip
def test_a_plan_after_the_key_changed_accounts_for_every_old_row(
    tmp_path: Path, emu: Emulator, fields: list[tuple[str, str]], table: str, counts: dict
) -> None:
    from helpers import make_repo, manifest_yaml

    old = [("host", "query_tag", None), ("env", "result_tag", None), ("owner", "result_tag", None)]
    root = make_repo(
        tmp_path,
        manifests={"t": manifest_yaml("t.csv", old)},
        tables={"t.csv": "host,env,owner\nh1,prod,ana\nh2,prod,bob\nh3,dev,cy\n"},
    )
    assert bp(root, emu, "apply", "--auto-approve").code == 0
    (root / "tables" / "t.yaml").write_text(
        manifest_yaml("t.csv", [(t, kind, None) for t, kind in fields])
    )
    (root / "tables" / "t.csv").write_text(table)
    r = bp(root, emu, "plan", "--format", "json")
    assert r.code == 0, r.text
    (t,) = json.loads(r.out)["tables"]
    assert t["rows"] == counts
    assert t["table_rows"]["before"] == counts["changed"] + counts["removed"] + counts["unchanged"]
    keys = [c["key"] for c in t["row_changes"]]
    assert all(list(k) == t["key_columns"] for k in keys)
    text = bp(root, emu, "plan")
    assert text.code == 0 and f"{counts['removed']} to remove" in text.out, text.text
