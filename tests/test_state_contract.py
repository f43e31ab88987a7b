"""The contract every state backend keeps, written once and run on each of them: the local
directory and S3 (moto's server on 127.0.0.1; skipped without boto3/moto).

What only one backend has (the local file layout, .bak and .gitignore, taking over a dead
process's lock; S3's conditional writes, multipart uploads, error mapping) is tested in
tests/test_state.py and tests/test_state_s3.py. A new backend adds a harness to
tests/state_util.py and a param to the ``harness`` fixture below.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import socket
import time
import tracemalloc
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
from state_util import (
    CSV,
    CSV_SHA,
    Harness,
    Holder,
    LocalHarness,
    S3Harness,
    csv_file,
    gzip_name,
    gzip_snapshot,
    holders,
    pending_job,
    random_table,
    sample_state,
    zstd_name,
)

from bpsync.endpoint import Endpoint
from bpsync.errors import LockHeld, StateCorrupt, StateError
from bpsync.state import LocalBackend, LockInfo, State, StateBackend, dumps_state


@pytest.fixture(params=["local", "s3"])
def harness(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Harness:
    if request.param == "local":
        return LocalHarness(tmp_path / ".bpsync")
    import s3_util

    if s3_util.SKIP_REASON:
        pytest.skip(s3_util.SKIP_REASON)
    return S3Harness(monkeypatch)


@pytest.fixture
def backend(harness: Harness) -> StateBackend:
    return harness.backend


@pytest.fixture
def holder(harness: Harness) -> Iterator[Holder]:
    """Starts a process holding this backend's lock; returns a function (hold) -> (Popen, id)."""
    with holders(harness.holder_argv) as start:
        yield start


def test_backend_implements_the_contract(backend: StateBackend) -> None:
    assert isinstance(backend, StateBackend)


# --- read / write -------------------------------------------------------------------------------


def test_round_trip_with_pending_job(backend: StateBackend) -> None:
    state = sample_state()
    written = backend.write(state)
    assert written.serial == 1 and written.lineage
    assert written.tables == state.tables
    read = backend.read()
    assert read == written
    assert read.tables["service-owners"].pending == pending_job()


def test_the_endpoint_is_recorded_and_kept(backend: StateBackend) -> None:
    # SPEC §5: state is bound to its endpoint; every later write keeps the binding.
    endpoint = Endpoint("https://eu-api.bigpanda.io", "v2.1")
    written = backend.write(sample_state().bound_to(endpoint))
    assert backend.read().endpoint == endpoint
    name = next(iter(written.tables))
    backend.write(written.without_table(name))
    assert backend.read().endpoint == endpoint


def test_serial_and_lineage_over_successive_writes(backend: StateBackend) -> None:
    first = backend.write(State.empty())
    second = backend.write(first.with_table(sample_state().tables["hosts"]))
    assert (first.serial, second.serial) == (1, 2)
    assert second.lineage == first.lineage
    assert backend.read() == second


def test_lost_update_is_refused(backend: StateBackend) -> None:
    base = backend.write(State.empty())
    writer_a = base.with_table(sample_state().tables["hosts"])
    writer_b = base.with_table(sample_state().tables["service-owners"])
    stored = backend.write(writer_a)
    with pytest.raises(StateError, match=r"serial 2.*serial 1"):
        backend.write(writer_b)
    assert backend.read() == stored


def test_two_writers_from_the_same_read(harness: Harness) -> None:
    harness.another().write(State.empty())
    a, b = harness.another(), harness.another()
    base_a, base_b = a.read(), b.read()
    stored = a.write(base_a.with_table(sample_state().tables["hosts"]))
    with pytest.raises(StateError, match=r"serial 2 but this state was read at serial 1"):
        b.write(base_b.with_table(sample_state().tables["service-owners"]))
    assert harness.another().read() == stored


def test_other_lineage_is_refused(backend: StateBackend) -> None:
    stored = backend.write(State.empty())
    with pytest.raises(StateError, match="lineage"):
        backend.write(State(stored.serial, "someone-else", {}))


# --- damaged state ------------------------------------------------------------------------------


def _valid_text() -> str:
    return dumps_state(State(3, "lin", sample_state().tables))


@pytest.mark.parametrize(
    ("content", "detail"),
    [
        (b"", "empty"),
        (b"\n  \n", "empty"),
        (_valid_text().encode()[:-40], "not valid JSON"),
        (dumps_state(sample_state()).encode()[:-30], "not valid JSON"),
        (b"\x00\x17garbage\xff", "not UTF-8"),
        (b"\xff\xfe", "not UTF-8"),
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
    harness: Harness, content: bytes, detail: str
) -> None:
    backend = harness.backend
    harness.put_raw("state.json", content)
    actions = (
        backend.read,
        lambda: backend.write(State(3, "lin", {})),
        lambda: backend.write(State(0, "", {})),
    )
    for action in actions:
        with pytest.raises(StateCorrupt) as excinfo:
            action()
        message = str(excinfo.value)
        assert backend.state_where in message and detail in message
        assert "state.json.bak" in message and "never treats damaged state as empty" in message
        for word in harness.recovery_words:
            assert word in message
    assert harness.raw("state.json") == content  # left untouched


def test_missing_state_beside_a_backup_is_corrupt(harness: Harness) -> None:
    backend = harness.backend
    backend.write(backend.write(State.empty()))
    harness.delete_raw("state.json")
    with pytest.raises(StateCorrupt, match="missing"):
        backend.read()


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


def test_snapshot_is_stored_as_zstd(harness: Harness, tmp_path: Path) -> None:
    harness.backend.put_snapshot(CSV_SHA, csv_file(tmp_path))
    stored = harness.raw(zstd_name(CSV_SHA))
    assert stored is not None and stored[:4] == b"\x28\xb5\x2f\xfd"
    assert harness.raw(gzip_name(CSV_SHA)) is None
    assert harness.backend.snapshot_where(CSV_SHA).endswith(zstd_name(CSV_SHA))


def _damage_is_reported(harness: Harness, name: str, cases: list[tuple[bytes, str]]) -> None:
    backend = harness.backend
    for damaged, detail in cases:
        harness.put_raw(name, damaged)
        with (
            pytest.raises(StateCorrupt, match=detail) as excinfo,
            backend.open_snapshot(CSV_SHA) as f,
        ):
            f.read()
        message = str(excinfo.value)
        assert "snapshot is damaged" in message
        assert name in message, message  # the object that is damaged
        assert excinfo.value.hint == backend.wording.snapshot_damaged


def test_damaged_snapshot_is_reported(harness: Harness, tmp_path: Path) -> None:
    harness.backend.put_snapshot(CSV_SHA, csv_file(tmp_path))
    name = zstd_name(CSV_SHA)
    good = harness.raw(name)
    assert good is not None
    other = LocalBackend(tmp_path / "other")
    other_sha = hashlib.sha256(b"application,owner\ncrm,eve\n").hexdigest()
    other.put_snapshot(other_sha, csv_file(tmp_path, b"application,owner\ncrm,eve\n", "o.csv"))
    flipped = bytearray(good)
    flipped[len(good) // 2] ^= 0x10
    _damage_is_reported(
        harness,
        name,
        [
            (good[:-1], "ends too early"),
            (good[:6], "ends too early"),
            (other.snapshot_path(other_sha).read_bytes(), "hashes to"),
            (bytes(flipped), "snapshot is damaged"),
            (b"junk", "neither zstd nor gzip"),
            (b"", "it is empty"),
            (good + b"x", "after the zstd frame"),
            (good + good, "after the zstd frame"),
        ],
    )


def test_gzip_snapshot_of_an_older_state_is_read(harness: Harness, tmp_path: Path) -> None:
    backend = harness.backend
    harness.put_raw(gzip_name(CSV_SHA), gzip_snapshot(CSV))
    assert backend.has_snapshot(CSV_SHA)
    with backend.open_snapshot(CSV_SHA) as f:
        assert f.read() == CSV
    backend.put_snapshot(CSV_SHA, csv_file(tmp_path))  # already there: no zstd copy is written
    assert harness.raw(zstd_name(CSV_SHA)) is None
    with pytest.raises(StateError, match="hash"):  # yet a wrong table is still refused
        backend.put_snapshot(CSV_SHA, csv_file(tmp_path, b"other\n"))
    good = gzip_snapshot(CSV)
    _damage_is_reported(
        harness,
        gzip_name(CSV_SHA),
        [
            (good[:-12], "ends too early"),
            (gzip.compress(b"application,owner\ncrm,eve\n", mtime=0), "hashes to"),
            (good + b"x", "after the gzip stream"),
        ],
    )


def test_codec_is_told_by_the_bytes_not_the_name(harness: Harness, tmp_path: Path) -> None:
    backend = harness.backend
    backend.put_snapshot(CSV_SHA, csv_file(tmp_path))
    zstd = harness.raw(zstd_name(CSV_SHA))
    assert zstd is not None
    harness.put_raw(zstd_name(CSV_SHA), gzip_snapshot(CSV))
    with backend.open_snapshot(CSV_SHA) as f:
        assert f.read() == CSV
    harness.delete_raw(zstd_name(CSV_SHA))
    harness.put_raw(gzip_name(CSV_SHA), zstd)
    with backend.open_snapshot(CSV_SHA) as f:
        assert f.read() == CSV


def test_zstd_snapshot_is_preferred_and_pruned_with_the_gzip_one(
    harness: Harness, tmp_path: Path
) -> None:
    backend = harness.backend
    backend.put_snapshot(CSV_SHA, csv_file(tmp_path))
    harness.put_raw(gzip_name(CSV_SHA), b"an older copy, damaged")
    with backend.open_snapshot(CSV_SHA) as f:
        assert f.read() == CSV
    only_gzip = hashlib.sha256(b"a\n1\n").hexdigest()
    harness.put_raw(gzip_name(only_gzip), gzip_snapshot(b"a\n1\n"))
    assert backend.prune_snapshots([only_gzip]) == [CSV_SHA]  # one id, both of its names
    assert harness.raw(zstd_name(CSV_SHA)) is None and harness.raw(gzip_name(CSV_SHA)) is None
    assert backend.has_snapshot(only_gzip)
    assert backend.prune_snapshots([]) == [only_gzip]
    assert not backend.has_snapshot(only_gzip)


def test_prune_keeps_referenced_snapshots(backend: StateBackend, tmp_path: Path) -> None:
    contents = [b"a\n1\n", b"a\n2\n", b"a\n3\n"]
    ids = [hashlib.sha256(c).hexdigest() for c in contents]
    for i, c in enumerate(contents):
        backend.put_snapshot(ids[i], csv_file(tmp_path, c, name=f"{i}.csv"))
    assert backend.prune_snapshots([ids[1]]) == sorted([ids[0], ids[2]])
    assert [backend.has_snapshot(i) for i in ids] == [False, True, False]
    assert backend.prune_snapshots([ids[1]]) == []
    assert backend.prune_snapshots(set()) == [ids[1]]


def test_snapshots_stream_in_constant_memory(harness: Harness, tmp_path: Path) -> None:
    backend = harness.backend
    big = tmp_path / "big.csv"
    sha, size = random_table(big, 50 * 1024 * 1024)
    tracemalloc.start()
    try:
        backend.put_snapshot(sha, big)
        _, put_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        total, digest = 0, hashlib.sha256()
        with backend.open_snapshot(sha) as f:
            while chunk := f.read(256 * 1024):
                total += len(chunk)
                digest.update(chunk)
        _, read_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert total == size and digest.hexdigest() == sha
    assert put_peak < harness.put_peak_limit, put_peak
    assert read_peak < 8 * 1024 * 1024, read_peak


# --- lock ---------------------------------------------------------------------------------------


def test_lock_content_and_release(harness: Harness) -> None:
    backend = harness.backend
    assert backend.current_lock() is None
    with backend.lock("bpsync apply") as info:
        stored = harness.raw("lock.json")
        assert stored is not None
        assert json.loads(stored) == {
            "id": info.id,
            "holder": info.holder,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "command": "bpsync apply",
            "created_at": info.created_at,
        }
        assert info.holder.endswith("@" + socket.gethostname())
        assert datetime.fromisoformat(info.created_at).tzinfo is not None
        assert backend.current_lock() == info
        assert info.taken_over_from is None
    assert backend.current_lock() is None
    assert harness.raw("lock.json") is None


def test_lock_is_released_when_the_command_fails(backend: StateBackend) -> None:
    with pytest.raises(RuntimeError), backend.lock("bpsync apply"):
        raise RuntimeError("boom")
    assert backend.current_lock() is None


def test_lock_contention_between_processes(backend: StateBackend, holder: Holder) -> None:
    proc, lock_id = holder()
    with pytest.raises(LockHeld) as excinfo, backend.lock("bpsync plan"):
        pass
    message = str(excinfo.value)
    assert "lock" in message
    assert f"state {backend.location} is locked" in message
    for part in (lock_id, f"pid {proc.pid}", socket.gethostname(), "`bpsync apply`", "held for"):
        assert part in message
    assert f"bpsync force-unlock {lock_id}" in message
    # the refused command did not touch the holder's lock
    current = backend.current_lock()
    assert current is not None and current.id == lock_id and current.pid == proc.pid

    assert proc.stdin is not None
    proc.stdin.write("release\n")
    proc.stdin.flush()
    assert proc.wait(timeout=10) == 0
    assert backend.current_lock() is None
    with backend.lock("bpsync plan") as info:
        assert info.id != lock_id


def test_lock_timeout_waits_for_the_holder(backend: StateBackend, holder: Holder) -> None:
    proc, lock_id = holder("0.8")
    started = time.monotonic()
    with backend.lock("bpsync apply", timeout=20, poll_interval=0.05) as info:
        assert 0.2 < time.monotonic() - started < 8
        assert info.id != lock_id and info.taken_over_from is None
    assert proc.wait(timeout=10) == 0


def test_lock_timeout_gives_up_at_the_deadline(backend: StateBackend, holder: Holder) -> None:
    _, lock_id = holder()
    now = [100.0]
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        now[0] += seconds

    with (
        pytest.raises(LockHeld, match="after waiting 5s") as excinfo,
        backend.lock("bpsync apply", timeout=5, clock=lambda: now[0], sleep=sleep, poll_interval=2),
    ):
        pass
    assert lock_id in str(excinfo.value)
    assert sleeps == [2, 2, 1]


def test_force_unlock(backend: StateBackend, holder: Holder) -> None:
    with pytest.raises(StateError, match="not locked"):
        backend.force_unlock("whatever")
    proc, lock_id = holder()
    with pytest.raises(StateError, match="does not match") as excinfo:
        backend.force_unlock("wrong-id")
    assert lock_id in str(excinfo.value)
    assert backend.current_lock() is not None
    removed = backend.force_unlock(lock_id)
    assert removed.id == lock_id and removed.pid == proc.pid
    assert backend.current_lock() is None


def test_lock_is_never_released_by_a_non_owner(backend: StateBackend) -> None:
    notes: list[str] = []
    with backend.lock("bpsync apply", notify=notes.append) as first:
        backend.force_unlock(first.id)  # an operator cleared it while we ran...
        second_cm = backend.lock("bpsync apply")
        second = second_cm.__enter__()  # ...and another command took it
    # leaving the first block must not remove the second command's lock
    current = backend.current_lock()
    assert current is not None and current.id == second.id
    assert notes and first.id in notes[0]
    second_cm.__exit__(None, None, None)
    assert backend.current_lock() is None


def test_damaged_lock_is_reported_not_deleted(harness: Harness) -> None:
    backend = harness.backend
    harness.put_raw("lock.json", b"{not json")
    for action in (backend.current_lock, lambda: backend.lock("bpsync apply").__enter__()):
        with pytest.raises(StateCorrupt) as excinfo:
            action()
        message = str(excinfo.value)
        assert backend.lock_where in message and "by hand" in message
    assert harness.raw("lock.json") == b"{not json"


def test_planted_lock_reads_back(harness: Harness) -> None:
    """A lock written by any bpsync (the stored form is shared) is read and described alike."""
    info = LockInfo("lid", "ci@runner", 4242, "runner", "bpsync apply", "2024-05-01T12:00:00Z")
    harness.put_raw("lock.json", json.dumps(info.to_dict()).encode())
    assert harness.backend.current_lock() == info
    with pytest.raises(LockHeld, match="ci@runner"), harness.backend.lock("bpsync plan"):
        pass
    assert harness.backend.force_unlock("lid") == info
