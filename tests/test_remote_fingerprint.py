"""The fingerprint covers BigPanda's side (issue 13, defect 4; SPEC §2): an apply bound to a
reviewed plan (`--expect-fingerprint`, or a saved plan) refuses before any write when the
apply-time refresh finds drift the reviewed plan did not show, and names it."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import fast_client_options
from test_crash import TOKEN, bp, make_repo

from bpsync.bigpanda.client import BigPandaClient
from bpsync.emulator import Emulator

EMULATOR_OPTIONS = {"job_seconds": 0.0, "token": TOKEN}


@pytest.fixture
def applied(tmp_path: Path, emu: Emulator) -> Path:
    repo = make_repo(tmp_path / "repo")
    code, out, err = bp(repo, emu, "apply", "--auto-approve")
    assert code == 0, out + err
    return repo


def enrichment_id(repo: Path) -> str:
    state = json.loads((repo / ".bpsync" / "state.json").read_text())
    return str(state["tables"]["owners"]["enrichment_id"])


def outside(emu: Emulator) -> BigPandaClient:
    return BigPandaClient(emu.url, TOKEN, **fast_client_options())


def deactivate_outside(repo: Path, emu: Emulator, tmp_path: Path | None = None) -> str:
    eid = enrichment_id(repo)
    with outside(emu) as client:
        client.update_enrichment(eid, active=False)
    return eid


def upload_outside(repo: Path, emu: Emulator, tmp_path: Path) -> str:
    eid = enrichment_id(repo)
    other = tmp_path / "other.csv"
    other.write_text("application,owner,team\nx,y,z\n")
    with outside(emu) as client:
        client.wait_for_job(client.upload_table(eid, other), timeout=10)
    return eid


def delete_outside(repo: Path, emu: Emulator, tmp_path: Path | None = None) -> str:
    eid = enrichment_id(repo)
    del emu.store.enrichments[eid]
    return eid


def writes_since(emu: Emulator, n: int) -> list[str]:
    return [f"{r.method} {r.path}" for r in emu.requests[n:] if r.method in ("POST", "PATCH")]


def change_csv(repo: Path) -> None:
    csv = repo / "tables" / "owners.csv"
    csv.write_text(csv.read_text() + "zz-9,new,team-9\n")


Drift = Callable[[Path, Emulator, Path], str]
DRIFTS: dict[str, tuple[Drift, str]] = {
    "deactivated": (deactivate_outside, "was deactivated outside bpsync"),
    "changed": (upload_outside, "changed outside bpsync"),
    "deleted": (delete_outside, "is missing in BigPanda"),
}


@pytest.mark.parametrize("drift", sorted(DRIFTS))
def test_expect_fingerprint_refuses_drift_the_review_did_not_show(
    applied: Path, emu: Emulator, tmp_path: Path, drift: str
) -> None:
    change_csv(applied)
    code, out, err = bp(applied, emu, "plan", "--format", "json")
    assert code == 0, out + err
    fp = json.loads(out)["fingerprint"]
    make_drift, words = DRIFTS[drift]
    eid = make_drift(applied, emu, tmp_path)
    n = len(emu.requests)
    code, out, err = bp(applied, emu, "apply", "--auto-approve", "--expect-fingerprint", fp)
    assert code == 1, out + err
    assert "fingerprint mismatch" in err and words in err and eid in err, err
    assert writes_since(emu, n) == []


@pytest.mark.parametrize("drift", sorted(DRIFTS))
def test_saved_plan_refuses_drift_it_did_not_show(
    applied: Path, emu: Emulator, tmp_path: Path, drift: str
) -> None:
    change_csv(applied)
    code, out, err = bp(applied, emu, "plan", "--out", "plan.json")
    assert code == 0, out + err
    make_drift, words = DRIFTS[drift]
    eid = make_drift(applied, emu, tmp_path)
    n = len(emu.requests)
    code, out, err = bp(applied, emu, "apply", "plan.json")
    assert code == 1, out + err
    assert "BigPanda changed since the plan was made" in err and words in err, err
    assert eid in err
    assert writes_since(emu, n) == []


def test_drift_shown_in_the_reviewed_plan_is_applied(
    applied: Path, emu: Emulator, tmp_path: Path
) -> None:
    deactivate_outside(applied, emu)
    code, out, err = bp(applied, emu, "plan", "--format", "json")
    assert code == 0, out + err
    plan = json.loads(out)
    assert plan["tables"][0]["drift"], plan
    code, out, err = bp(
        applied, emu, "apply", "--auto-approve", "--expect-fingerprint", plan["fingerprint"]
    )
    assert code == 0, out + err
    code, out, err = bp(applied, emu, "plan", "--out", "p2.json")
    deactivate_outside(applied, emu)
    code, out, err = bp(applied, emu, "plan", "--out", "p3.json")  # shows the drift
    code, out, err = bp(applied, emu, "apply", "p3.json")
    assert code == 0, out + err


def test_fingerprint_without_drift_is_the_offline_one(applied: Path, emu: Emulator) -> None:
    change_csv(applied)
    online = json.loads(bp(applied, emu, "plan", "--format", "json")[1])["fingerprint"]
    offline = json.loads(bp(applied, emu, "plan", "--format", "json", "--no-refresh")[1])
    assert online == offline["fingerprint"]
