"""The state package: model, JSON form, and the backend contract run against the local backend.

Tests taking the ``backend`` fixture are the contract every backend must pass; a later S3
backend adds itself to that fixture's params. Tests taking ``local`` check the directory layout.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from bpsync.errors import LockHeld, StateCorrupt, StateError
from bpsync.state import (
    LocalBackend,
    LockInfo,
    PendingJob,
    State,
    StateBackend,
    TableState,
    dumps_state,
    format_duration,
    lock_held,
    referenced_snapshots,
    state_digest,
)

REPO = Path(__file__).resolve().parents[1]
CSV = b"application,owner\ncrm,ana\nbilling,bo\n"
CSV_SHA = hashlib.sha256(CSV).hexdigest()


def schema(**extra: object) -> dict[str, object]:
    return {
        "map_name": "Service owners",
        "description": "Owners per application",
        "active": True,
        "when": None,
        "fields": [
            {"title": "application", "type": "query_tag"},
            {"title": "owner", "type": "result_tag", "override_existing": False},
        ],
        **extra,
    }


def pending_job(sha: str = "b" * 64) -> PendingJob:
    return PendingJob(
        job_id="job-42",
        job_url="https://api.bigpanda.io/resources/v1.0/enrichment-jobs/job-42",
        enrichment_id="enr-2",
        sha256=sha,
        rows=3,
        kind="replace",
        started_at="2024-05-01T12:00:00Z",
        replaces="enr-1",
        schema=schema(map_name="Service owners v2"),
    )


def sample_state() -> State:
    owners = TableState(
        name="service-owners",
        enrichment_id="enr-1",
        api_version="v1",
        schema=schema(),
        remote_version=4,
        sha256=CSV_SHA,
        rows=2,
        applied_at="2024-05-01T11:00:00Z",
        pending=pending_job(),
    )
    hosts = TableState(name="hosts", enrichment_id=None, api_version="v2.1", schema=schema())
    return State.empty().with_table(owners).with_table(hosts)


@pytest.fixture(params=["local", "s3"])
def backend(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> StateBackend:
    if request.param == "local":
        return LocalBackend(tmp_path / ".bpsync")
    if request.param == "s3":
        # A fresh bucket on a moto S3 server on 127.0.0.1 (skipped without boto3/moto).
        import s3_util

        if s3_util.SKIP_REASON:
            pytest.skip(s3_util.SKIP_REASON)
        backend: StateBackend = s3_util.make_backend(monkeypatch)
        return backend
    raise AssertionError(request.param)


@pytest.fixture
def local(tmp_path: Path) -> LocalBackend:
    return LocalBackend(tmp_path / ".bpsync")


def csv_file(tmp_path: Path, data: bytes = CSV, name: str = "t.csv") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


# --- model ------------------------------------------------------------------------------------


def test_local_backend_implements_the_protocol(local: LocalBackend) -> None:
    assert isinstance(local, StateBackend)


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


def test_round_trip_with_pending_job(backend: StateBackend) -> None:
    state = sample_state()
    written = backend.write(state)
    assert written.serial == 1 and written.lineage
    assert written.tables == state.tables
    read = backend.read()
    assert read == written
    assert read.tables["service-owners"].pending == pending_job()


def test_serial_and_lineage_over_successive_writes(backend: StateBackend) -> None:
    first = backend.write(State.empty())
    second = backend.write(first.with_table(sample_state().tables["hosts"]))
    assert (first.serial, second.serial) == (1, 2)
    assert second.lineage == first.lineage
    assert backend.read() == second


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


def test_lost_update_is_refused(backend: StateBackend) -> None:
    base = backend.write(State.empty())
    writer_a = base.with_table(sample_state().tables["hosts"])
    writer_b = base.with_table(sample_state().tables["service-owners"])
    stored = backend.write(writer_a)
    with pytest.raises(StateError, match=r"serial 2.*serial 1"):
        backend.write(writer_b)
    assert backend.read() == stored


def test_other_lineage_is_refused(backend: StateBackend) -> None:
    stored = backend.write(State.empty())
    with pytest.raises(StateError, match="lineage"):
        backend.write(State(stored.serial, "someone-else", {}))


def test_writes_stay_inside_the_state_directory(tmp_path: Path) -> None:
    backend = LocalBackend(tmp_path / "repo" / ".bpsync")
    backend.write(sample_state())
    backend.put_snapshot(CSV_SHA, csv_file(tmp_path))
    with backend.lock("bpsync apply"):
        pass
    assert sorted(p.name for p in tmp_path.iterdir()) == ["repo", "t.csv"]
    assert [p.name for p in (tmp_path / "repo").iterdir()] == [".bpsync"]


# --- damaged state ------------------------------------------------------------------------------


def _valid_text() -> str:
    return dumps_state(State(3, "lin", sample_state().tables))


@pytest.mark.parametrize(
    ("content", "detail"),
    [
        (b"", "empty"),
        (b"\n  \n", "empty"),
        (_valid_text().encode()[:-40], "not valid JSON"),
        (b"\x00\x17garbage\xff", "not UTF-8"),
        (b"<<<<<<< HEAD\n{}\n=======\n", "not valid JSON"),
        (b"[1, 2]", "should be an object"),
        (b"{}", "format_version"),
        (_valid_text().replace('"format_version": 1', '"format_version": 2').encode(), "reads"),
        (_valid_text().replace('"format_version": 1', '"format_version": "1"').encode(), "1"),
        (_valid_text().replace('"serial": 3', '"serial": "3"').encode(), "serial"),
        (_valid_text().replace('"rows": 2', '"rows": true').encode(), "rows"),
        (_valid_text().replace(CSV_SHA, "nothex").encode(), "sha256"),
        (_valid_text().replace('"kind": "replace"', '"kind": "upsert"').encode(), "kind"),
        (_valid_text().replace('"tables": {', '"tables": {"x": 1, ').encode(), "'x'"),
    ],
)
def test_damaged_state_is_never_read_as_empty(
    local: LocalBackend, content: bytes, detail: str
) -> None:
    local.path.mkdir()
    local.state_path.write_bytes(content)
    for action in (local.read, lambda: local.write(State(3, "lin", {}))):
        with pytest.raises(StateCorrupt) as excinfo:
            action()
        message = str(excinfo.value)
        assert str(local.state_path) in message
        assert detail in message
        assert "state.json.bak" in message and "git" in message
    assert local.state_path.read_bytes() == content  # left untouched


def test_missing_state_beside_a_backup_is_corrupt(local: LocalBackend) -> None:
    local.write(State.empty())
    local.write(local.read())
    local.state_path.unlink()
    with pytest.raises(StateCorrupt, match="missing"):
        local.read()


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


def test_snapshot_round_trip(backend: StateBackend, tmp_path: Path) -> None:
    assert not backend.has_snapshot(CSV_SHA)
    backend.put_snapshot(CSV_SHA, csv_file(tmp_path))
    assert backend.has_snapshot(CSV_SHA)
    with backend.open_snapshot(CSV_SHA) as f:
        assert f.read() == CSV
    with backend.open_snapshot(CSV_SHA) as f:  # line by line, as the differ reads it
        assert list(io.TextIOWrapper(f, encoding="utf-8", newline="")) == [
            "application,owner\n",
            "crm,ana\n",
            "billing,bo\n",
        ]
    backend.put_snapshot(CSV_SHA, csv_file(tmp_path))  # again: a no-op


def test_snapshot_digest_mismatch_is_refused(backend: StateBackend, tmp_path: Path) -> None:
    wrong = "c" * 64
    with pytest.raises(StateError, match="hash"):
        backend.put_snapshot(wrong, csv_file(tmp_path))
    assert not backend.has_snapshot(wrong)
    backend.put_snapshot(CSV_SHA, csv_file(tmp_path))
    with pytest.raises(StateError, match="hash"):  # an existing id is still checked
        backend.put_snapshot(CSV_SHA, csv_file(tmp_path, b"other\n"))


def test_snapshot_ids_are_validated(backend: StateBackend, tmp_path: Path) -> None:
    for bad in ("../../etc/passwd", "A" * 64, "a" * 63, ""):
        with pytest.raises(StateError, match="snapshot id"):
            backend.put_snapshot(bad, csv_file(tmp_path))
        with pytest.raises(StateError):
            backend.open_snapshot(bad)


def test_missing_snapshot_says_how_to_recover(backend: StateBackend) -> None:
    with pytest.raises(StateError) as excinfo:
        backend.open_snapshot(CSV_SHA, table="service-owners")
    message = str(excinfo.value)
    assert "service-owners" in message and CSV_SHA in message and "bpsync apply" in message


def test_snapshot_file_is_deterministic_gzip(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    a = LocalBackend(tmp_path / "a")
    b = LocalBackend(tmp_path / "b")
    a.put_snapshot(CSV_SHA, csv_file(tmp_path, name="one.csv"))
    monkeypatch.setattr(time, "time", lambda: 2_000_000_000.0)  # a gzip mtime would now differ
    b.put_snapshot(CSV_SHA, csv_file(tmp_path, name="other-name.csv"))
    monkeypatch.undo()
    blob = a.snapshot_path(CSV_SHA).read_bytes()
    assert blob == b.snapshot_path(CSV_SHA).read_bytes()
    assert a.snapshot_path(CSV_SHA).name == f"{CSV_SHA}.csv.gz"
    assert blob[:4] == b"\x1f\x8b\x08\x00"  # gzip, deflate, no FNAME
    assert blob[4:8] == b"\x00\x00\x00\x00"  # mtime 0
    assert gzip.decompress(blob) == CSV


def test_damaged_snapshot_is_reported(local: LocalBackend, tmp_path: Path) -> None:
    local.put_snapshot(CSV_SHA, csv_file(tmp_path))
    path = local.snapshot_path(CSV_SHA)
    good = path.read_bytes()
    for damaged in (good[:-12], gzip.compress(b"application,owner\ncrm,eve\n", mtime=0), b"junk"):
        path.write_bytes(damaged)
        with (
            pytest.raises(StateCorrupt, match="snapshot is damaged"),
            local.open_snapshot(CSV_SHA) as f,
        ):
            f.read()


def test_prune_keeps_referenced_snapshots(backend: StateBackend, tmp_path: Path) -> None:
    contents = [b"a\n1\n", b"a\n2\n", b"a\n3\n"]
    ids = [hashlib.sha256(c).hexdigest() for c in contents]
    for i, c in enumerate(contents):
        backend.put_snapshot(ids[i], csv_file(tmp_path, c, name=f"{i}.csv"))
    assert backend.prune_snapshots([ids[1]]) == sorted([ids[0], ids[2]])
    assert [backend.has_snapshot(i) for i in ids] == [False, True, False]
    assert backend.prune_snapshots([ids[1]]) == []
    assert backend.prune_snapshots(set()) == [ids[1]]


def test_prune_ignores_foreign_files(local: LocalBackend, tmp_path: Path) -> None:
    assert local.prune_snapshots([]) == []  # no snapshots directory yet
    local.put_snapshot(CSV_SHA, csv_file(tmp_path))
    (local.snapshots_dir / "README").write_text("mine")
    assert local.prune_snapshots([]) == [CSV_SHA]
    assert (local.snapshots_dir / "README").exists()


def test_snapshots_stream_in_constant_memory(local: LocalBackend, tmp_path: Path) -> None:
    size = 50 * 1024 * 1024
    line = b"app-%08d,owner-of-the-application-%08d,https://runbooks.example.com/%08d\n"
    big = tmp_path / "big.csv"
    digest = hashlib.sha256()
    with open(big, "wb") as f:
        written, i = 0, 0
        while written < size:
            block = b"".join(line % (n, n, n) for n in range(i, i + 10000))
            f.write(block)
            digest.update(block)
            written += len(block)
            i += 10000
    sha = digest.hexdigest()

    tracemalloc.start()
    try:
        local.put_snapshot(sha, big)
        _, put_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        total = 0
        with local.open_snapshot(sha) as f:
            while chunk := f.read(256 * 1024):
                total += len(chunk)
        _, read_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert total == written
    assert put_peak < 8 * 1024 * 1024, put_peak
    assert read_peak < 8 * 1024 * 1024, read_peak


# --- lock ---------------------------------------------------------------------------------------

HOLDER = """
import sys, time
from pathlib import Path
from bpsync.state import LocalBackend

backend = LocalBackend(Path(sys.argv[1]))
with backend.lock("bpsync apply") as info:
    print(info.id, flush=True)
    if sys.argv[2] == "stdin":
        sys.stdin.readline()
    else:
        time.sleep(float(sys.argv[2]))
"""


Holder = Callable[..., tuple["subprocess.Popen[str]", str]]


@pytest.fixture
def holder(local: LocalBackend) -> Iterator[Holder]:
    """Starts a process that holds the lock; returns a function (hold) -> (Popen, lock id)."""
    procs: list[subprocess.Popen[str]] = []

    def start(hold: str = "stdin") -> tuple[subprocess.Popen[str], str]:
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        proc = subprocess.Popen(
            [sys.executable, "-c", HOLDER, str(local.path), hold],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        procs.append(proc)
        assert proc.stdout is not None
        lock_id = proc.stdout.readline().strip()
        assert lock_id, "holder process failed to take the lock"
        return proc, lock_id

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                stream.close()


def test_lock_file_content_and_release(local: LocalBackend) -> None:
    assert local.current_lock() is None
    with local.lock("bpsync apply") as info:
        data = json.loads((local.path / "lock.json").read_text())
        assert data == {
            "id": info.id,
            "holder": info.holder,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "command": "bpsync apply",
            "created_at": info.created_at,
        }
        assert info.holder.endswith("@" + socket.gethostname())
        assert datetime.fromisoformat(info.created_at).tzinfo is not None
        assert local.current_lock() == info
        assert info.taken_over_from is None
    assert local.current_lock() is None
    assert not (local.path / "lock.json").exists()


def test_lock_is_released_when_the_command_fails(backend: StateBackend) -> None:
    with pytest.raises(RuntimeError), backend.lock("bpsync apply"):
        raise RuntimeError("boom")
    assert backend.current_lock() is None


def test_lock_contention_between_processes(local: LocalBackend, holder: Holder) -> None:
    proc, lock_id = holder()
    with pytest.raises(LockHeld) as excinfo, local.lock("bpsync plan"):
        pass
    message = str(excinfo.value)
    assert "lock" in message
    for part in (lock_id, f"pid {proc.pid}", socket.gethostname(), "`bpsync apply`", "held for"):
        assert part in message
    assert f"bpsync force-unlock {lock_id}" in message
    # the refused command did not touch the holder's lock
    current = local.current_lock()
    assert current is not None and current.id == lock_id

    assert proc.stdin is not None
    proc.stdin.write("release\n")
    proc.stdin.flush()
    assert proc.wait(timeout=10) == 0
    assert local.current_lock() is None
    with local.lock("bpsync plan") as info:
        assert info.id != lock_id


def test_lock_timeout_waits_for_the_holder(local: LocalBackend, holder: Holder) -> None:
    proc, lock_id = holder("0.6")
    started = time.monotonic()
    with local.lock("bpsync apply", timeout=10, poll_interval=0.05) as info:
        assert 0.2 < time.monotonic() - started < 8
        assert info.id != lock_id and info.taken_over_from is None
    assert proc.wait(timeout=10) == 0


def test_lock_timeout_gives_up_at_the_deadline(local: LocalBackend, holder: Holder) -> None:
    holder()
    now = [100.0]
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        now[0] += seconds

    with (
        pytest.raises(LockHeld, match="after waiting 5s"),
        local.lock("bpsync apply", timeout=5, clock=lambda: now[0], sleep=sleep, poll_interval=2),
    ):
        pass
    assert sleeps == [2, 2, 1]


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


def test_force_unlock(local: LocalBackend, holder: Holder) -> None:
    with pytest.raises(StateError, match="not locked"):
        local.force_unlock("whatever")
    proc, lock_id = holder()
    with pytest.raises(StateError, match="does not match") as excinfo:
        local.force_unlock("wrong-id")
    assert lock_id in str(excinfo.value)
    assert local.current_lock() is not None
    removed = local.force_unlock(lock_id)
    assert removed.id == lock_id and removed.pid == proc.pid
    assert local.current_lock() is None


def test_lock_is_never_released_by_a_non_owner(local: LocalBackend) -> None:
    notes: list[str] = []
    with local.lock("bpsync apply", notify=notes.append) as first:
        local.force_unlock(first.id)  # an operator cleared it while we ran...
        second_cm = local.lock("bpsync apply")
        second = second_cm.__enter__()  # ...and another command took it
    # leaving the first block must not remove the second command's lock
    current = local.current_lock()
    assert current is not None and current.id == second.id
    assert notes and first.id in notes[0]
    second_cm.__exit__(None, None, None)
    assert local.current_lock() is None


def test_damaged_lock_file_is_reported_not_deleted(local: LocalBackend) -> None:
    local.path.mkdir()
    lock_path = local.path / "lock.json"
    lock_path.write_text("{not json")
    old = time.time() - 3600
    os.utime(lock_path, (old, old))
    for action in (local.current_lock, lambda: local.lock("bpsync apply").__enter__()):
        with pytest.raises(StateCorrupt) as excinfo:
            action()
        assert str(lock_path) in str(excinfo.value) and "by hand" in str(excinfo.value)
    assert lock_path.read_text() == "{not json"


def test_lock_file_being_created_counts_as_held(local: LocalBackend) -> None:
    local.path.mkdir()
    (local.path / "lock.json").write_bytes(b"")  # O_EXCL done, content not yet written
    with pytest.raises(LockHeld, match="lock"), local.lock("bpsync apply"):
        pass
