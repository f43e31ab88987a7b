"""The state package: the model and its JSON form, and what only the local backend has (its
directory layout, backup and .gitignore, crash safety, taking over a dead process's lock).

The contract every backend keeps, local included, is tests/test_state_contract.py.
"""

from __future__ import annotations

import gzip
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import zstandard
from state_util import (
    CSV,
    CSV_SHA,
    REPO,
    Holder,
    csv_file,
    gzip_snapshot,
    holders,
    local_holder,
    pending_job,
    sample_state,
    schema,
)

from bpsync.errors import LockHeld, StateError
from bpsync.state import (
    LocalBackend,
    LockInfo,
    PendingJob,
    State,
    TableState,
    dumps_state,
    lock_held,
    referenced_snapshots,
    state_digest,
)
from bpsync.units import format_duration

# Re-exported: a subprocess in test_state_digest_... and older imports find them here.
__all__ = ["CSV", "CSV_SHA", "csv_file", "pending_job", "sample_state", "schema"]


@pytest.fixture
def local(tmp_path: Path) -> LocalBackend:
    return LocalBackend(tmp_path / ".bpsync")


# --- model ------------------------------------------------------------------------------------


def test_state_is_an_immutable_value() -> None:
    s = sample_state()
    assert list(s.tables) == ["hosts", "service-owners"]  # sorted, whatever the insertion order
    with pytest.raises(TypeError):
        s.tables["x"] = s.tables["hosts"]  # type: ignore[index]
    source = schema()
    ts = TableState(name="t", enrichment_id=None, api_version="v1", schema=source)
    source["map_name"] = "changed later"
    assert ts.schema["map_name"] == "Service owners"  # the state kept its own copy

    s2 = s.without_table("hosts")
    assert s.table("hosts") is not None and s2.table("hosts") is None
    assert s2.with_table(s.tables["hosts"]) == s
    assert s.with_table(ts).table("t") == ts


@pytest.mark.parametrize(
    "make",
    [
        lambda: TableState(name="", enrichment_id=None, api_version="v1", schema={}),
        lambda: TableState(name="t", enrichment_id=None, api_version="v1", schema={}, sha256="x"),
        lambda: TableState(name="t", enrichment_id=None, api_version="v1", schema={"x": object()}),
        lambda: PendingJob("j", None, "e", "a" * 64, 1, "upsert", "t", None, {}),
        lambda: State(tables={"a": TableState("b", None, "v1", {})}),
    ],
)
def test_model_refuses_invalid_values(make: Callable[[], object]) -> None:
    with pytest.raises(ValueError):
        make()


def test_state_digest_is_stable_and_independent_of_dict_order() -> None:
    a = sample_state()
    reordered_schema = dict(reversed(list(schema().items())))
    b = State.empty()
    for ts in reversed(list(a.tables.values())):
        b = b.with_table(
            TableState(**{**ts.__dict__, "schema": dict(reversed(list(ts.schema.items())))})
        )
    assert reordered_schema == schema()
    assert a == b
    assert state_digest(a) == state_digest(b)
    assert state_digest(a).startswith("sha256:") and len(state_digest(a)) == 7 + 64

    # the same in another process (no hash randomisation can leak in)
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); sys.path.insert(0, sys.argv[2]);"
        "from test_state import sample_state; from bpsync.state import state_digest;"
        "print(state_digest(sample_state()))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(REPO), str(Path(__file__).parent)],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONHASHSEED": "12345"},
    ).stdout.strip()
    assert out == state_digest(a)


@pytest.mark.parametrize(
    "change",
    [
        lambda s: State(s.serial + 1, s.lineage, s.tables),
        lambda s: State(s.serial, "other-lineage", s.tables),
        lambda s: s.without_table("hosts"),
        lambda s: s.with_table(TableState("hosts", None, "v1", schema())),
        lambda s: s.with_table(TableState("hosts", None, "v2.1", schema(active=False))),
        lambda s: s.with_table(
            TableState(**{**s.tables["service-owners"].__dict__, "pending": None})
        ),
    ],
)
def test_state_digest_changes_with_any_content(change: Callable[[State], State]) -> None:
    s = sample_state()
    assert state_digest(change(s)) != state_digest(s)


def test_referenced_snapshots_include_pending_uploads() -> None:
    assert referenced_snapshots(sample_state()) == {CSV_SHA, "b" * 64}


# --- read / write -------------------------------------------------------------------------------


def test_no_state_yet_reads_as_empty_and_creates_nothing(tmp_path: Path) -> None:
    missing = LocalBackend(tmp_path / "nowhere")
    assert missing.read() == State.empty()
    assert not (tmp_path / "nowhere").exists()
    (tmp_path / "empty").mkdir()
    assert LocalBackend(tmp_path / "empty").read() == State(serial=0, lineage="", tables={})


def test_state_file_format(local: LocalBackend) -> None:
    written = local.write(sample_state())
    text = local.state_path.read_text("utf-8")
    assert text.endswith("}\n") and not text.endswith("\n\n")
    data = json.loads(text)
    assert data["format_version"] == 1
    assert data["serial"] == 1 and data["lineage"] == written.lineage
    assert set(data["tables"]) == {"hosts", "service-owners"}
    assert text == json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    assert text == dumps_state(written)


def test_writing_the_same_state_twice_differs_only_in_serial(local: LocalBackend) -> None:
    first = local.write(sample_state())
    text1 = local.state_path.read_text("utf-8")
    local.write(first)
    text2 = local.state_path.read_text("utf-8")
    diff = [(a, b) for a, b in zip(text1.splitlines(), text2.splitlines(), strict=True) if a != b]
    assert diff == [('  "serial": 1,', '  "serial": 2,')]


def test_backup_holds_the_previous_state_and_gitignore_is_written(local: LocalBackend) -> None:
    local.write(State.empty())
    assert not local.backup_path.exists()
    before = local.state_path.read_bytes()
    local.write(local.read().with_table(sample_state().tables["hosts"]))
    assert local.backup_path.read_bytes() == before
    ignored = (local.path / ".gitignore").read_text().splitlines()
    assert {"lock.json", "lock.guard", "*.tmp"} <= set(ignored)
    assert sorted(p.name for p in local.path.iterdir()) == [
        ".gitignore",
        "state.json",
        "state.json.bak",
    ]


def test_writes_stay_inside_the_state_directory(tmp_path: Path) -> None:
    backend = LocalBackend(tmp_path / "repo" / ".bpsync")
    backend.write(sample_state())
    backend.put_snapshot(CSV_SHA, csv_file(tmp_path))
    with backend.lock("bpsync apply"):
        pass
    assert sorted(p.name for p in tmp_path.iterdir()) == ["repo", "t.csv"]
    assert [p.name for p in (tmp_path / "repo").iterdir()] == [".bpsync"]


# --- crashes mid-write (in-process; tests/test_state_crash.py kills real processes) -------------

STATE_FAULTS = [
    "state:temp-written",
    "state:temp-synced",
    "state:backup-written",
    "state:before-rename",
]


@pytest.mark.parametrize("point", STATE_FAULTS)
def test_failed_write_leaves_the_old_state_intact(tmp_path: Path, point: str) -> None:
    path = tmp_path / ".bpsync"
    old = LocalBackend(path).write(sample_state())
    old_bytes = (path / "state.json").read_bytes()

    def fault(at: str) -> None:
        if at == point:
            raise OSError(28, "No space left on device")

    failing = LocalBackend(path, fault=fault)
    with pytest.raises(StateError, match="No space left"):
        failing.write(old.without_table("hosts"))
    assert (path / "state.json").read_bytes() == old_bytes
    assert LocalBackend(path).read() == old
    assert not list(path.glob("*.tmp")) and not list(path.glob(".*.tmp"))


def test_fsync_failure_is_a_state_error(
    local: LocalBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = local.write(State.empty())

    def broken_fsync(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(StateError, match="previous state is intact"):
        local.write(old.with_table(sample_state().tables["hosts"]))
    monkeypatch.undo()
    assert local.read() == old


# --- snapshots ----------------------------------------------------------------------------------


def test_snapshot_file_is_deterministic_zstd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    a = LocalBackend(tmp_path / "a")
    b = LocalBackend(tmp_path / "b")
    a.put_snapshot(CSV_SHA, csv_file(tmp_path, name="one.csv"))
    monkeypatch.setattr(time, "time", lambda: 2_000_000_000.0)  # nothing may depend on the time
    b.put_snapshot(CSV_SHA, csv_file(tmp_path, name="other-name.csv"))
    monkeypatch.undo()
    blob = a.snapshot_path(CSV_SHA).read_bytes()
    assert blob == b.snapshot_path(CSV_SHA).read_bytes()
    assert a.snapshot_path(CSV_SHA).name == f"{CSV_SHA}.csv.zst"
    assert sorted(p.name for p in a.snapshots_dir.iterdir()) == [f"{CSV_SHA}.csv.zst"]
    assert blob[:4] == b"\x28\xb5\x2f\xfd"  # zstd
    assert blob[4] == 0  # frame header: no content size, no checksum, no dictionary id
    assert zstandard.ZstdDecompressor().stream_reader(blob).read() == CSV


def test_gzip_snapshot_of_an_older_state_stays_until_pruned(
    local: LocalBackend, tmp_path: Path
) -> None:
    gz = local.snapshots_dir / f"{CSV_SHA}.csv.gz"
    gz.parent.mkdir(parents=True)
    gz.write_bytes(gzip_snapshot(CSV))
    assert local.snapshot_path(CSV_SHA) == gz
    local.put_snapshot(CSV_SHA, csv_file(tmp_path))  # content-addressed: nothing to write
    assert [p.name for p in local.snapshots_dir.iterdir()] == [gz.name]
    assert gzip.decompress(gz.read_bytes()) == CSV  # still the old format, as stored
    # With both (a gzip one restored from git beside a new one): the zstd one is read.
    zst = local.snapshots_dir / f"{CSV_SHA}.csv.zst"
    other = LocalBackend(tmp_path / "other")
    other.put_snapshot(CSV_SHA, csv_file(tmp_path))
    zst.write_bytes(other.snapshot_path(CSV_SHA).read_bytes())
    gz.write_bytes(b"damaged")
    assert local.snapshot_path(CSV_SHA) == zst
    with local.open_snapshot(CSV_SHA) as f:
        assert f.read() == CSV
    assert local.prune_snapshots([]) == [CSV_SHA]  # one id, both files
    assert list(local.snapshots_dir.iterdir()) == []


def test_prune_ignores_foreign_files(local: LocalBackend, tmp_path: Path) -> None:
    assert local.prune_snapshots([]) == []  # no snapshots directory yet
    local.put_snapshot(CSV_SHA, csv_file(tmp_path))
    (local.snapshots_dir / "README").write_text("mine")
    assert local.prune_snapshots([]) == [CSV_SHA]
    assert (local.snapshots_dir / "README").exists()


# --- lock (local only; the shared lock contract is in tests/test_state_contract.py) ------------


@pytest.fixture
def holder(local: LocalBackend) -> Iterator[Holder]:
    """Starts a process that holds the lock; returns a function (hold) -> (Popen, lock id)."""
    with holders(local_holder(local.path)) as start:
        yield start


def test_lock_left_by_a_dead_process_is_taken_over(local: LocalBackend, holder: Holder) -> None:
    proc, dead_id = holder()
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    assert local.current_lock() is not None  # the killed process could not clean up

    notes: list[str] = []
    with local.lock("bpsync apply", notify=notes.append) as info:
        assert info.taken_over_from is not None
        assert info.taken_over_from.id == dead_id
        assert info.taken_over_from.pid == proc.pid
        assert local.current_lock() == LockInfo(**{**info.__dict__, "taken_over_from": None})
    assert len(notes) == 1 and dead_id in notes[0] and "no longer exists" in notes[0]


def _plant_lock(local: LocalBackend, **fields: object) -> LockInfo:
    info = LockInfo(
        **{
            "id": "11111111-2222-3333-4444-555555555555",
            "holder": "ci@runner-7",
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "command": "bpsync apply",
            "created_at": "2024-05-01T12:00:00Z",
            **fields,
        }  # type: ignore[arg-type]
    )
    local.path.mkdir(exist_ok=True)
    (local.path / "lock.json").write_text(json.dumps(info.to_dict()))
    return info


def test_dead_pid_on_another_host_is_not_taken_over(local: LocalBackend) -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    planted = _plant_lock(local, pid=proc.pid, host="some-other-host")
    with pytest.raises(LockHeld, match="some-other-host"), local.lock("bpsync apply"):
        pass
    assert local.current_lock() == planted


def test_lock_held_message_shows_age() -> None:
    created = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
    info = LockInfo("lid", "ana@laptop", 4242, "laptop", "bpsync apply", "2024-05-01T12:00:00Z")
    err = lock_held(info, where=".bpsync", now=created + timedelta(minutes=3, seconds=12))
    assert str(err).startswith(
        "state .bpsync is locked by ana@laptop (lock id lid, pid 4242, host laptop, "
        "command `bpsync apply`, held for 3m12s)"
    )
    assert "bpsync force-unlock lid" in str(err)
    assert isinstance(err, LockHeld)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (59.9, "59s"), (192, "3m12s"), (3600 * 2 + 180, "2h03m"), (90000, "1d01h")],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


def test_lock_file_being_created_counts_as_held(local: LocalBackend) -> None:
    local.path.mkdir()
    (local.path / "lock.json").write_bytes(b"")  # O_EXCL done, content not yet written
    with pytest.raises(LockHeld, match="lock"), local.lock("bpsync apply"):
        pass
