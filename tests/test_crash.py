"""Crash matrix (issue 7): SIGKILL a real `bpsync apply` process at every step of the apply
path, then run `apply` again and check that BigPanda (the emulator) and the state agree.

The kill is placed by the `BPSYNC_TEST_KILL_AT=<point>[#N]` seam (bpsync.cli.core._fault_hook):
deterministic fault points, never sleeps. The points are the Applier's (see the docstring of
bpsync/applier.py), "locked", the client's "mid-upload" and the local backend's "state:…" and
"snapshot:…" points; `#N` picks the N-th time a point is reached (the N-th state write).

After each kill, a second apply (in-process, no kill) must leave:
- exactly one ACTIVE enrichment for the table, and it is the one the state names;
- no more uploads than needed: a repeat only where the first upload's fate was unknown;
- the emulator's table rows equal to the CSV's, the state's sha256 equal to the CSV's;
- the dead process's lock taken over (same host, dead pid), and no lock left behind;
- `plan` saying `No changes.`.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import fast_client_options, run_cli

from bpsync.emulator import Emulator, RecordedRequest

TOKEN = "tok-crash-91f3c0"
MAP_NAME = "Owners (crash matrix)"
CONFIG = "manifests: ['tables/*.yaml']\n"
MANIFEST = f"""\
name: owners
map_name: {MAP_NAME}
csv: owners.csv
fields:
  - title: application
    type: query_tag
  - title: owner
    type: result_tag
  - title: team
    type: result_tag
    override_existing: true
"""
ROWS = 40  # a few KB: "mid-upload" splits the body in two


def table_text(rows: int = ROWS, owner: str = "ana") -> str:
    lines = ["application,owner,team"]
    lines += [f"app-{i:03d},{owner}-{i % 7},team-{i % 5}" for i in range(rows)]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class Case:
    path: str  # create | update | replace
    point: str  # BPSYNC_TEST_KILL_AT value
    uploads: int  # uploads accepted (202) in both runs together, at most
    reached: bool = False  # the killed run's upload reached BigPanda whole

    @property
    def id(self) -> str:
        return f"{self.path}-{self.point}"


# Apply's state writes, in order: create/replace record the intent to create (1), the new
# enrichment (2), the pending job (3), the done job (4); an update has only the last two.
CASES = [
    # first apply: the table is created
    Case("create", "locked", 1),
    Case("create", "intent-recorded", 1),
    # Killed between the enrichment's POST and the state write that records its id: the
    # next apply finds it by the name and fields the intent recorded and adopts it (a
    # changed or deleted manifest meanwhile: tests/test_interrupted.py).
    Case("create", "state-write#2", 1),
    Case("create", "created", 1),
    Case("create", "snapshot:before-rename", 1),
    Case("create", "snapshot-stored", 1),
    Case("create", "before-upload", 1),
    Case("create", "mid-upload", 1),
    # The 202 came but the process died before recording its job: the next run cannot know
    # the job and uploads the same bytes again (a full replace with identical content).
    Case("create", "accepted", 2, reached=True),
    Case("create", "pending-recorded", 1, reached=True),
    Case("create", "waiting", 1, reached=True),
    Case("create", "job-done", 1, reached=True),
    Case("create", "state:before-rename#4", 1, reached=True),  # mid state write
    Case("create", "state-recorded", 1, reached=True),
    # an edited CSV: the table is updated
    Case("update", "locked", 1),
    Case("update", "mid-upload", 1),
    Case("update", "accepted", 2, reached=True),
    Case("update", "pending-recorded", 1, reached=True),
    Case("update", "job-done", 1, reached=True),
    Case("update", "state:temp-written#2", 1, reached=True),  # mid state write
    # a changed field: a new enrichment replaces the old one
    Case("replace", "intent-recorded", 1),
    # BigPanda created the new enrichment, its id is not recorded: adopted, not duplicated
    Case("replace", "state-write#2", 1),
    Case("replace", "created", 1),
    Case("replace", "mid-upload", 1),
    Case("replace", "pending-recorded", 1, reached=True),
    Case("replace", "job-done", 1, reached=True),
    Case("replace", "state:before-rename#4", 1, reached=True),  # mid state write
    Case("replace", "state-write#4", 1, reached=True),  # old one retired, state not written
    Case("replace", "state-recorded", 1, reached=True),
]


# ------------------------------------------------------------------------------- helpers


# job_seconds=0: the killed run's first poll usually sees `done` (no 1 s poll sleep).
EMULATOR_OPTIONS = {"job_seconds": 0.0, "token": TOKEN}


def make_repo(root: Path) -> Path:
    (root / "tables").mkdir(parents=True)
    (root / "bpsync.yaml").write_text(CONFIG)
    (root / "tables" / "owners.yaml").write_text(MANIFEST)
    (root / "tables" / "owners.csv").write_text(table_text())
    return root


def bp(repo: Path, emu: Emulator, *argv: str) -> tuple[int, str, str]:
    """bpsync in-process, polling fast."""
    env = {"BIGPANDA_API_URL": emu.url, "BIGPANDA_TOKEN": TOKEN}
    return run_cli(argv, repo, env, client_options=fast_client_options())


def killed_apply(repo: Path, emu: Emulator, point: str) -> subprocess.CompletedProcess[str]:
    """`python -m bpsync -C repo apply --auto-approve` in a child process killed at `point`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BIGPANDA_", "BPSYNC_"))}
    env.update(BIGPANDA_API_URL=emu.url, BIGPANDA_TOKEN=TOKEN, BPSYNC_TEST_KILL_AT=point)
    return subprocess.run(
        [sys.executable, "-m", "bpsync", "-C", str(repo), "apply", "--auto-approve"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )


def state_of(repo: Path) -> dict[str, object]:
    data: dict[str, object] = json.loads((repo / ".bpsync" / "state.json").read_text())
    return data


def csv_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def uploads(emu: Emulator, since: int = 0) -> list[RecordedRequest]:
    return [r for r in emu.requests[since:] if r.method == "POST" and r.path.endswith("/map")]


def ours(emu: Emulator) -> list[dict[str, object]]:
    """Every enrichment of this table in the emulator (by map_name), oldest first."""
    found = [e for e in emu.store.all() if e["name"] == MAP_NAME]
    return sorted(found, key=lambda e: float(e["created"]))


def wait_for_jobs(emu: Emulator) -> None:
    emu.wait_jobs(timeout=5)
    time.sleep(0.01)


# ------------------------------------------------------------------------------- the matrix


def check_recovery(repo: Path, emu: Emulator, case: Case, baseline: int) -> None:
    killed = killed_apply(repo, emu, case.point)
    assert killed.returncode == -9, (
        f"not killed at {case.point} (exit {killed.returncode}):\n{killed.stdout}{killed.stderr}"
    )
    assert TOKEN not in killed.stdout + killed.stderr
    lock = repo / ".bpsync" / "lock.json"
    assert lock.exists(), "the killed apply held the lock"
    dead_pid = json.loads(lock.read_text())["pid"]
    if case.point == "mid-upload" or case.reached:
        # The emulator notices a connection cut by the kill a moment after the process died.
        deadline = time.monotonic() + 5
        while not uploads(emu, baseline) and time.monotonic() < deadline:
            time.sleep(0.02)
    first_run = uploads(emu, baseline)
    wait_for_jobs(emu)

    code, out, err = bp(repo, emu, "apply", "--auto-approve")
    assert code == 0, out + err
    assert "took over the state lock" in err and f"pid {dead_pid}" in err, err
    assert not lock.exists()

    # exactly one active enrichment for the table, the one the state names
    state = state_of(repo)["tables"]
    assert isinstance(state, dict)
    owners = state["owners"]
    eid = owners["enrichment_id"]
    active = [e["id"] for e in ours(emu) if e["active"]]
    assert active == [eid], f"active enrichments {active}, state names {eid}"
    assert owners.get("pending") is None
    created = len(ours(emu))
    assert created == (2 if case.path == "replace" else 1), f"{created} enrichments created"

    # BigPanda holds exactly the CSV, and the state records what BigPanda holds
    csv_path = repo / "tables" / "owners.csv"
    assert emu.table_rows(eid) == csv_rows(csv_path)
    digest = hashlib.sha256(csv_path.read_bytes()).hexdigest()
    assert owners["sha256"] == digest
    assert owners["rows"] == len(csv_rows(csv_path))
    assert (repo / ".bpsync" / "snapshots" / f"{digest}.csv.zst").is_file()

    # no more uploads than needed
    sent = uploads(emu, baseline)
    accepted = [r for r in sent if r.status == 202]
    assert len(accepted) <= case.uploads, [(r.status, r.body_bytes) for r in sent]
    assert {r.sha256 for r in accepted} == {digest}
    assert all(r.path.endswith(f"/{eid}/map") for r in accepted)
    if case.point == "mid-upload":
        cut = [r for r in first_run if r.status != 202]
        assert len(cut) == 1 and cut[0].content_length is not None
        assert 0 < cut[0].body_bytes < cut[0].content_length, cut[0]
    if case.reached:
        assert [r.status for r in first_run] == [202]  # the killed run's upload was whole
    elif case.point != "mid-upload":
        assert first_run == []

    code, out, err = bp(repo, emu, "plan")
    assert code == 0, out + err
    assert "No changes." in out, out + err
    assert "drift" not in (out + err).lower()


def prepare(tmp_path: Path, emu: Emulator, path: str) -> tuple[Path, int]:
    """The repository in the state before the apply that gets killed, and how many requests
    the emulator saw until then."""
    repo = make_repo(tmp_path / "repo")
    if path != "create":
        code, out, err = bp(repo, emu, "apply", "--auto-approve")
        assert code == 0, out + err
        if path == "update":
            # 3 rows changed, 2 removed, 2 added
            text = table_text(ROWS - 2, owner="bo") + "zz-1,cy,t\nzz-2,cy,t\n"
            (repo / "tables" / "owners.csv").write_text(text)
        else:
            m = repo / "tables" / "owners.yaml"
            m.write_text(
                m.read_text().replace("override_existing: true", "override_existing: false")
            )
    return repo, len(emu.requests)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_killed_apply_recovers(tmp_path: Path, emu: Emulator, case: Case) -> None:
    repo, baseline = prepare(tmp_path, emu, case.path)
    check_recovery(repo, emu, case, baseline)


def test_every_applier_fault_point_is_in_the_matrix() -> None:
    """A new step in applier.py must get a row here."""
    source = (Path(__file__).parents[1] / "bpsync" / "applier.py").read_text()
    import re

    points = set(re.findall(r'self\.fault\("([a-z-]+)"\)', source))
    points |= set(re.findall(r'self\._fault\("([a-z-]+)"\)', source))
    covered = {c.point.partition("#")[0] for c in CASES}
    assert points, "no fault points found in applier.py"
    assert points <= covered, f"not in the crash matrix: {sorted(points - covered)}"


def test_replaced_enrichment_is_deactivated_after_a_failed_deactivation(
    tmp_path: Path, emu: Emulator
) -> None:
    repo, _ = prepare(tmp_path, emu, "replace")
    emu.faults.fail_next_requests(1, status=500, method="PATCH")
    code, out, err = bp(repo, emu, "apply", "--auto-approve")
    assert code != 0  # the failed deactivation is reported
    code, out, err = bp(repo, emu, "apply", "--auto-approve")
    assert code == 0, out + err
    eid = state_of(repo)["tables"]["owners"]["enrichment_id"]  # type: ignore[index]
    assert [e["id"] for e in ours(emu) if e["active"]] == [eid]
    assert len(ours(emu)) == 2  # the old one, deactivated, and the new one
    assert "No changes." in bp(repo, emu, "plan")[1]


def test_killed_apply_leaves_no_file_outside_the_state_directory(
    tmp_path: Path, emu: Emulator
) -> None:
    repo = make_repo(tmp_path / "repo")
    csv_path = repo / "tables" / "owners.csv"
    csv_path.write_bytes(csv_path.read_bytes().replace(b"\n", b"\r\n"))  # not canonical
    before = {p for p in repo.rglob("*") if ".bpsync" not in p.parts}
    assert killed_apply(repo, emu, "mid-upload").returncode == -9
    code, out, err = bp(repo, emu, "apply", "--auto-approve")
    assert code == 0, out + err
    after = {p for p in repo.rglob("*") if ".bpsync" not in p.parts}
    assert sorted(p.relative_to(repo).as_posix() for p in after - before) == []
