"""A bounded, seeded fault campaign (issue 13): random edits, random faults, then a clean apply.

Each seed runs a few rounds against a fresh emulator. A round edits the repository at random
(rows, fields, map_name, a deleted or restored manifest), then applies under one random fault
(a failed job, a reset upload, 5xx or 429 answers, or SIGKILL of a real `bpsync apply` at one
of its fault points), whatever that apply's outcome. After the rounds, faults are cleared and
one clean `apply` must succeed and leave:

- one active enrichment per manifest, and none that the state does not know;
- BigPanda's rows equal to each CSV;
- no pending entry in state;
- `plan` saying `No changes.` without drift.

Deterministic per seed (the faults and edits are drawn from `random.Random(seed)`); the seeds
are few and the tables small so that the whole campaign stays well under two minutes.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from test_crash import TOKEN, bp, csv_rows, killed_apply

from bpsync.emulator import Emulator

EMULATOR_OPTIONS = {"job_seconds": 0.0, "token": TOKEN}
SEEDS = range(20)
ROUNDS = 5
KILL_POINTS = (
    "intent-recorded",
    "state-write#2",
    "created",
    "snapshot-stored",
    "before-upload",
    "mid-upload",
    "accepted",
    "pending-recorded",
    "waiting",
    "job-done",
    "state-write#4",
    "state-recorded",
)
FAULTS = ("none", "job-failure", "reset", "5xx", "429", "sigkill")


@dataclass
class Table:
    """One table as the campaign wants it; written to tables/<name>.yaml and .csv."""

    name: str
    present: bool = True
    renames: int = 0
    site: bool = False  # an extra result field (structural: replace)
    override: bool = False  # override_existing on owner (structural: replace)
    rows: dict[str, str] = field(default_factory=dict)
    shuffle: int = 0

    @property
    def map_name(self) -> str:
        return f"{self.name.title()} (campaign {self.renames})"

    def manifest(self) -> str:
        lines = [
            f"name: {self.name}",
            f"map_name: {self.map_name}",
            f"csv: {self.name}.csv",
            "fields:",
            "  - title: application",
            "    type: query_tag",
            "  - title: owner",
            "    type: result_tag",
        ]
        if self.override:
            lines.append("    override_existing: true")
        if self.site:
            lines += ["  - title: site", "    type: result_tag"]
        return "\n".join(lines) + "\n"

    def csv(self) -> str:
        keys = sorted(self.rows)
        random.Random(self.shuffle).shuffle(keys)
        header = "application,owner" + (",site" if self.site else "")
        lines = [header] + [
            f"{k},{self.rows[k]}" + (f",site-{len(k) % 3}" if self.site else "") for k in keys
        ]
        return "\n".join(lines) + "\n"

    def write(self, repo: Path) -> None:
        manifest = repo / "tables" / f"{self.name}.yaml"
        if self.present:
            manifest.write_text(self.manifest())
            (repo / "tables" / f"{self.name}.csv").write_text(self.csv())
        else:
            manifest.unlink(missing_ok=True)


def edit(rng: random.Random, t: Table) -> str:
    kind = rng.choice(("rows", "rows", "field", "rename", "delete"))
    if not t.present:
        t.present = True  # a deleted manifest comes back
        return "restore"
    if kind == "rows":
        for _ in range(rng.randint(1, 3)):
            op = rng.choice(("add", "change", "remove"))
            if op == "add" or len(t.rows) < 2:
                t.rows[f"app-{rng.randrange(1000):03d}"] = f"owner-{rng.randrange(9)}"
            elif op == "change":
                t.rows[rng.choice(sorted(t.rows))] = f"owner-{rng.randrange(9)}"
            else:
                del t.rows[rng.choice(sorted(t.rows))]
        t.shuffle = rng.randrange(3)  # sometimes a new row order too
    elif kind == "field":
        if rng.random() < 0.5:
            t.site = not t.site
        else:
            t.override = not t.override
    elif kind == "rename":
        t.renames += 1
    else:
        t.present = False
    return kind


def arm(rng: random.Random, emu: Emulator, fault: str) -> None:
    if fault == "job-failure":
        emu.faults.fail_next_jobs(1)
    elif fault == "reset":
        emu.faults.drop_upload_after(bytes=rng.randint(1, 400), times=1)
    elif fault == "5xx":
        emu.faults.fail_next_requests(rng.randint(1, 2), status=rng.choice((500, 502, 503)))
    elif fault == "429":
        emu.faults.fail_next_requests(1, status=429, retry_after=0)


def state_tables(repo: Path) -> dict[str, dict[str, object]]:
    path = repo / ".bpsync" / "state.json"
    if not path.exists():
        return {}
    tables: dict[str, dict[str, object]] = json.loads(path.read_text())["tables"]
    return tables


def check_invariants(repo: Path, emu: Emulator, tables: list[Table], log: list[str]) -> None:
    where = "; ".join(log)
    state = state_tables(repo)
    present = [t for t in tables if t.present]
    assert sorted(state) == sorted(t.name for t in present), where
    active = sorted(str(e["id"]) for e in emu.store.all() if e["active"])
    known = sorted(str(s["enrichment_id"]) for s in state.values())
    assert active == known, f"active {active}, state knows {known} ({where})"
    for t in present:
        s = state[t.name]
        assert s.get("pending") is None, (t.name, s, where)
        e = emu.store.get(str(s["enrichment_id"]))
        assert e is not None and e["name"] == t.map_name, (t.name, e, where)
        csv = repo / "tables" / f"{t.name}.csv"
        assert emu.table_rows(str(s["enrichment_id"])) == csv_rows(csv), (t.name, where)
    code, out, err = bp(repo, emu, "plan")
    assert code == 0, out + err
    assert "No changes." in out, f"{out}{err}({where})"
    assert "drift" not in (out + err).lower(), out + err


@pytest.mark.parametrize("seed", SEEDS)
def test_random_edits_and_faults_then_a_clean_apply(
    tmp_path: Path, emu: Emulator, seed: int
) -> None:
    rng = random.Random(seed)
    repo = tmp_path / "repo"
    (repo / "tables").mkdir(parents=True)
    (repo / "bpsync.yaml").write_text("manifests: ['tables/*.yaml']\n")
    tables = [
        Table(name, rows={f"app-{i:03d}": f"owner-{i % 5}" for i in range(rng.randint(3, 30))})
        for name in ("alpha", "beta")
    ]
    for t in tables:
        t.write(repo)
    log: list[str] = []
    for round_ in range(ROUNDS):
        if round_:  # the first round applies the initial tables
            t = rng.choice(tables)
            log.append(f"{t.name}: {edit(rng, t)}")
            t.write(repo)
        fault = rng.choice(FAULTS)
        if fault == "sigkill":
            point = rng.choice(KILL_POINTS)
            killed_apply(repo, emu, point)
            log.append(f"apply killed at {point}")
        else:
            arm(rng, emu, fault)
            code, _, _ = bp(repo, emu, "apply", "--auto-approve")
            log.append(f"apply with {fault}: exit {code}")
        emu.faults.clear()
        emu.wait_jobs(timeout=5)
    code, out, err = bp(repo, emu, "apply", "--auto-approve")
    assert code == 0, f"{out}{err}({'; '.join(log)})"
    emu.wait_jobs(timeout=5)
    check_invariants(repo, emu, tables, log)
