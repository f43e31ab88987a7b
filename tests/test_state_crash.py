"""Kill a real process at every step of a state or snapshot write: what survives must always be
either the old state or the new one, readable, never a torn or empty file."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bpsync.state import LocalBackend, State, TableState
from bpsync.state.local import FAULT_POINTS

REPO = Path(__file__).resolve().parents[1]

WRITER = """
import os, sys
from pathlib import Path
from bpsync.state import LocalBackend, TableState

path, point, csv, sha = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3]), sys.argv[4]

def fault(at):
    if at == point:
        os._exit(137)  # no cleanup, no finally blocks: as close to SIGKILL as we can place it

backend = LocalBackend(path, fault=fault)
if point.startswith("snapshot:"):
    backend.put_snapshot(sha, csv)
else:
    state = backend.read()
    backend.write(state.with_table(TableState("added", None, "v1", {"fields": []})))
"""


@pytest.mark.parametrize("point", FAULT_POINTS)
def test_killed_writer_leaves_old_or_new_state(tmp_path: Path, point: str) -> None:
    path = tmp_path / ".bpsync"
    old = LocalBackend(path).write(State.empty())
    old = LocalBackend(path).write(old)  # a backup exists too
    csv = tmp_path / "t.csv"
    csv.write_bytes(b"a,b\n" + b"x,y\n" * 5000)
    sha = hashlib.sha256(csv.read_bytes()).hexdigest()

    result = subprocess.run(
        [sys.executable, "-c", WRITER, str(path), point, str(csv), sha],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 137, result.stderr

    after = LocalBackend(path)
    state = after.read()  # never StateCorrupt
    new = State(old.serial + 1, old.lineage, {}).with_table(
        TableState("added", None, "v1", {"fields": []})
    )
    if point == "state:renamed":
        assert state == new
    else:
        assert state == old
    assert not after.has_snapshot(sha)  # killed before the rename: no half snapshot visible

    # the leftovers are temp files only, all ignored by the state directory's .gitignore
    leftovers = [p for p in path.rglob("*") if p.is_file() and p.suffix == ".tmp"]
    assert all(p.name.startswith(".") for p in leftovers)

    # and the next write works from what survived
    after.write(state)
    after.put_snapshot(sha, csv)
    with after.open_snapshot(sha) as f:
        assert f.read() == csv.read_bytes()
