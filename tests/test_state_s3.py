"""The S3 state backend against a real S3-compatible server: moto's server mode on 127.0.0.1.

The contract shared with the local backend (lost updates, damaged state, snapshots streamed and
verified, the lock raced by real processes over HTTP, force-unlock) runs on both backends in
tests/test_state_contract.py; this file checks what only S3 has: the objects in the bucket,
conditional writes, a dead holder's lock left alone, multipart uploads, errors mapped to
StateError, and `bpsync state migrate`.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import s3_util
from state_util import (
    CSV,
    CSV_SHA,
    REPO,
    Holder,
    csv_file,
    gzip_snapshot,
    holders,
    random_table,
    s3_holder,
    sample_state,
)

from bpsync.cli import run
from bpsync.config import StateConfig, load_config
from bpsync.console import Console
from bpsync.errors import ConfigError, LockHeld, StateError
from bpsync.state import LocalBackend, LockInfo, State, StateBackend, dumps_state, open_backend
from bpsync.state.migrate import migrate_state
from bpsync.state.s3 import S3Backend

if s3_util.SKIP_REASON:  # pragma: no cover - depends on the environment
    pytest.skip(s3_util.SKIP_REASON, allow_module_level=True)


@pytest.fixture(scope="session")
def moto_url() -> Iterator[str]:
    """One moto server (a child process) for the whole session; see tests/s3_util.py."""
    yield s3_util.server_url()
    s3_util.stop_server()


@pytest.fixture
def url(moto_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    s3_util.aws_env(monkeypatch)
    return moto_url


@pytest.fixture
def bucket(url: str) -> str:
    return s3_util.new_bucket(url)


def backend_for(url: str, bucket: str, prefix: str = "team/state") -> S3Backend:
    """Another backend (another command) on the bucket. They share one boto3 client, as a new
    session costs ~0.2 s; ``s3`` and every subprocess build theirs from the config."""
    return S3Backend(s3_util.client(url), bucket, prefix)


@pytest.fixture
def s3(url: str, bucket: str) -> S3Backend:
    return S3Backend.from_config(s3_util.state_config(url, bucket))


def objects(url: str, bucket: str) -> dict[str, bytes]:
    client = s3_util.client(url)
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=bucket).get("Contents", [])]
    return {k: client.get_object(Bucket=bucket, Key=k)["Body"].read() for k in sorted(keys)}


def put_raw(url: str, bucket: str, key: str, data: bytes) -> None:
    s3_util.client(url).put_object(Bucket=bucket, Key=key, Body=data)


# --- layout -------------------------------------------------------------------------------------


def test_s3_backend_implements_the_protocol(s3: S3Backend) -> None:
    assert isinstance(s3, StateBackend)
    assert s3.location == f"s3://{s3.bucket}/team/state"
    assert S3Backend(s3._client, "b", "/p/q/").location == "s3://b/p/q"
    assert S3Backend(s3._client, "b").location == "s3://b"


def test_open_backend_follows_bpsync_yaml(url: str, bucket: str, tmp_path: Path) -> None:
    (tmp_path / "bpsync.yaml").write_text(
        f"state:\n  backend: s3\n  bucket: {bucket}\n  prefix: bp\n"
        f"  region: us-east-1\n  endpoint_url: {url}\n"
    )
    backend = open_backend(load_config(tmp_path, {}))
    assert isinstance(backend, S3Backend)
    assert backend.location == f"s3://{bucket}/bp"
    assert backend.read() == State.empty()


def test_objects_in_the_bucket(s3: S3Backend, url: str, bucket: str, tmp_path: Path) -> None:
    first = s3.write(sample_state())
    assert list(objects(url, bucket)) == ["team/state/state.json"]
    second = s3.write(first.without_table("hosts"))
    s3.put_snapshot(CSV_SHA, csv_file(tmp_path))
    with s3.lock("bpsync apply") as info:
        stored = objects(url, bucket)
        assert json.loads(stored["team/state/lock.json"]) == {
            "id": info.id,
            "holder": info.holder,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "command": "bpsync apply",
            "created_at": info.created_at,
        }
        assert s3.current_lock() == info
    assert s3.current_lock() is None
    stored = objects(url, bucket)
    assert sorted(stored) == [
        f"team/state/snapshots/{CSV_SHA}.csv.zst",
        "team/state/state.json",
        "team/state/state.json.bak",
    ]
    # The same bytes as the local backend writes: state files and snapshots can move freely.
    assert stored["team/state/state.json"] == dumps_state(second).encode()
    assert stored["team/state/state.json.bak"] == dumps_state(first).encode()
    local = LocalBackend(tmp_path / ".bpsync")
    local.put_snapshot(CSV_SHA, csv_file(tmp_path))
    assert stored[f"team/state/snapshots/{CSV_SHA}.csv.zst"] == (
        local.snapshot_path(CSV_SHA).read_bytes()
    )
    head = s3_util.client(url).head_object(
        Bucket=bucket, Key=f"team/state/snapshots/{CSV_SHA}.csv.zst"
    )
    assert head["ContentType"] == "application/zstd"


# --- lost updates -------------------------------------------------------------------------------


class _RacingClient:
    """A boto3 client that lets another writer in just before our conditional write."""

    def __init__(self, client: Any, before_put: Callable[[], None]) -> None:
        self._client = client
        self._before_put = before_put
        self.refusals = 0

    def put_object(self, **kw: Any) -> Any:
        if kw["Key"].endswith("/state.json"):
            self._before_put()
            self._before_put = lambda: None
        try:
            return self._client.put_object(**kw)
        except Exception as exc:
            self.refusals += 1
            raise exc

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


def test_conditional_write_refuses_a_writer_that_raced_in(url: str, bucket: str) -> None:
    """Both writers pass the serial check; only the conditional write can tell them apart."""
    other = backend_for(url, bucket)
    base = other.write(State.empty())
    winner = base.with_table(sample_state().tables["hosts"])
    real = backend_for(url, bucket)
    racing = _RacingClient(real._client, lambda: other.write(winner))
    loser = S3Backend(racing, bucket, "team/state")
    with pytest.raises(StateError, match="another command wrote it at the same time") as exc:
        loser.write(base.with_table(sample_state().tables["service-owners"]))
    assert "PreconditionFailed" in str(exc.value) and racing.refusals == 1
    assert backend_for(url, bucket).read().tables.keys() == {"hosts"}


def test_first_write_races_too(url: str, bucket: str) -> None:
    """With no state yet the write is If-None-Match: *, so two first writers cannot both win."""
    other = backend_for(url, bucket)
    racing = _RacingClient(backend_for(url, bucket)._client, lambda: other.write(State.empty()))
    with pytest.raises(StateError, match="at the same time"):
        S3Backend(racing, bucket, "team/state").write(State.empty())
    assert backend_for(url, bucket).read().serial == 1


def test_state_replaced_at_the_same_serial_is_refused(url: str, bucket: str) -> None:
    s3 = backend_for(url, bucket)
    read = s3.read()
    read = s3.write(read)
    # Someone puts a different document with the same serial (a restore, a hand edit).
    put_raw(
        url,
        bucket,
        "team/state/state.json",
        dumps_state(read.with_table(sample_state().tables["hosts"])).encode(),
    )
    with pytest.raises(StateError, match="replaced since this command read it"):
        s3.write(read)
    assert backend_for(url, bucket).read().tables.keys() == {"hosts"}


# --- lock ---------------------------------------------------------------------------------------


@pytest.fixture
def holder(url: str, bucket: str) -> Iterator[Holder]:
    """Starts a process holding the S3 lock; returns a function (hold) -> (Popen, lock id)."""
    with holders(s3_holder(url, bucket, "team/state")) as start:
        yield start


def test_lock_of_a_dead_process_is_not_taken_over(s3: S3Backend, url: str, bucket: str) -> None:
    """Runners sharing a bucket may share a host name, so S3 never guesses a holder is dead."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    dead = LockInfo(
        "dead-1", "ci@here", proc.pid, socket.gethostname(), "bpsync apply", "2024-05-01T12:00:00Z"
    )
    put_raw(url, bucket, "team/state/lock.json", json.dumps(dead.to_dict()).encode())
    notes: list[str] = []
    with pytest.raises(LockHeld, match="dead-1"), s3.lock("bpsync apply", notify=notes.append):
        pass
    assert s3.current_lock() == dead and notes == []
    assert s3.force_unlock("dead-1") == dead


# --- snapshots ----------------------------------------------------------------------------------


def test_wrong_digest_aborts_a_multipart_upload(
    s3: S3Backend, url: str, bucket: str, tmp_path: Path
) -> None:
    big = tmp_path / "big.csv"
    sha, _ = random_table(big, 12 * 1024 * 1024)  # several parts
    wrong = "c" * 64
    with pytest.raises(StateError, match=f"hash to {sha}"):
        s3.put_snapshot(wrong, big)
    assert not s3.has_snapshot(wrong)
    assert objects(url, bucket) == {}
    assert not s3_util.client(url).list_multipart_uploads(Bucket=bucket).get("Uploads")


def test_prune_stays_inside_the_prefix(url: str, bucket: str, tmp_path: Path) -> None:
    ours, theirs = backend_for(url, bucket, "a"), backend_for(url, bucket, "a2")
    ours.put_snapshot(CSV_SHA, csv_file(tmp_path))
    theirs.put_snapshot(CSV_SHA, csv_file(tmp_path))
    put_raw(url, bucket, "a/snapshots/README", b"mine")
    assert ours.prune_snapshots([]) == [CSV_SHA]
    assert sorted(objects(url, bucket)) == ["a/snapshots/README", f"a2/snapshots/{CSV_SHA}.csv.zst"]


def test_prune_deletes_both_names_in_batches(
    s3: S3Backend, url: str, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each id may be stored as .csv.zst and .csv.gz: a DeleteObjects call names both, and
    never more than its 1,000 keys."""
    ids = [hashlib.sha256(b"%d" % i).hexdigest() for i in range(501)]
    for sha in ids[:2]:
        put_raw(url, bucket, s3.key(f"snapshots/{sha}.csv.zst"), b"x")
        put_raw(url, bucket, s3.key(f"snapshots/{sha}.csv.gz"), b"x")
    put_raw(url, bucket, s3.key(f"snapshots/{ids[2]}.csv.gz"), b"x")
    sizes: list[int] = []
    delete = s3._client.delete_objects

    def counting(**kw: Any) -> Any:
        sizes.append(len(kw["Delete"]["Objects"]))
        return delete(**kw)

    monkeypatch.setattr(s3._client, "delete_objects", counting)
    assert s3.prune_snapshots([]) == sorted(ids[:3])
    assert objects(url, bucket) == {}
    assert sizes == [6]
    sizes.clear()
    assert s3._delete_snapshots(ids) == ids  # the batching itself
    assert sizes == [1000, 2]


# --- errors -------------------------------------------------------------------------------------


def test_missing_bucket(url: str) -> None:
    s3 = backend_for(url, "no-such-bucket-here")
    with pytest.raises(StateError) as excinfo:
        s3.read()
    message = str(excinfo.value)
    assert "s3://no-such-bucket-here/team/state/state.json" in message
    assert "does not exist" in message and "state.bucket" in message


def test_access_denied(s3: S3Backend) -> None:
    from botocore.stub import Stubber

    with Stubber(s3._client) as stub:
        stub.add_client_error("get_object", "AccessDenied", "Access Denied", 403)
        with pytest.raises(StateError) as excinfo:
            s3.read()
    message = str(excinfo.value)
    assert f"s3://{s3.bucket}/team/state/state.json: access denied (AccessDenied)" in message
    assert "s3:PutObject" in message and "credentials" in message


def test_unreachable_endpoint(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    with socket.socket() as sock:  # a loopback port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    s3 = S3Backend.from_config(s3_util.state_config(f"http://127.0.0.1:{port}", "bucket"))
    with pytest.raises(StateError) as excinfo, s3.lock("bpsync apply"):
        pass
    message = str(excinfo.value)
    assert f"http://127.0.0.1:{port}" in message and "cannot be reached" in message
    assert "state.endpoint_url" in message


def test_no_credentials(monkeypatch: pytest.MonkeyPatch, url: str, bucket: str) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(StateError, match="no usable AWS credentials") as excinfo:
        S3Backend.from_config(s3_util.state_config(url, bucket)).read()
    assert "AWS_PROFILE" in str(excinfo.value)


class _OldBotocore:
    """A client of a botocore that predates some conditional parameters."""

    def __init__(self, client: Any, unknown: set[tuple[str, str]]) -> None:
        self._client = client
        self._unknown = unknown

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._client, name)

        def call(**kw: Any) -> Any:
            from botocore.exceptions import ParamValidationError

            for param in kw:
                if (name, param) in self._unknown:
                    raise ParamValidationError(report=f'Unknown parameter in input: "{param}"')
            return method(**kw)

        return call


def test_older_botocore(url: str, bucket: str) -> None:
    # Without conditional deletes the lock is still released (read, compare id, delete)...
    no_delete_if = _OldBotocore(s3_util.client(url), {("delete_object", "IfMatch")})
    s3 = S3Backend(no_delete_if, bucket, "team/state")
    with s3.lock("bpsync apply") as info:
        assert s3.current_lock() == info
    assert s3.current_lock() is None
    # ...but without conditional writes there is no safe lock: say to upgrade.
    no_put_if = _OldBotocore(s3_util.client(url), {("put_object", "IfNoneMatch")})
    with pytest.raises(StateError, match="too old for S3 conditional writes") as excinfo:
        S3Backend(no_put_if, bucket, "team/state").lock("bpsync apply").__enter__()
    assert "pip install -U 'bpsync[s3]'" in str(excinfo.value)


def test_without_boto3_the_backend_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "boto3", None)
    with pytest.raises(ConfigError) as excinfo:
        S3Backend.from_config(StateConfig(backend="s3", bucket="b"))
    assert "state.backend s3 needs boto3: pip install 'bpsync[s3]'" in str(excinfo.value)


# --- migrate ------------------------------------------------------------------------------------


def test_migrate_refuses_existing_state_unless_forced(s3: S3Backend, tmp_path: Path) -> None:
    local = LocalBackend(tmp_path / ".bpsync")
    with pytest.raises(StateError, match="nothing to migrate"):
        migrate_state(local, s3)
    local.put_snapshot(CSV_SHA, csv_file(tmp_path))
    local_state = local.write(sample_state())

    result = migrate_state(local, s3)
    assert result.copied == (CSV_SHA,) and result.missing == ("b" * 64,)
    assert result.state.lineage == local_state.lineage and result.state.serial == 1
    assert s3.read().tables == local_state.tables
    with s3.open_snapshot(CSV_SHA) as f:
        assert f.read() == CSV

    with pytest.raises(StateError, match="already holds state") as excinfo:
        migrate_state(local, s3)
    assert "--force" in str(excinfo.value)
    forced = migrate_state(local, s3, force=True)
    assert forced.present == (CSV_SHA,) and forced.copied == ()
    assert forced.state.serial == 2 and s3.read() == forced.state

    # And back: S3 to a new local directory.
    back = LocalBackend(tmp_path / "back")
    returned = migrate_state(s3, back)
    assert returned.state.tables == local_state.tables
    assert back.snapshot_path(CSV_SHA).read_bytes() == local.snapshot_path(CSV_SHA).read_bytes()
    assert s3.current_lock() is None and local.current_lock() is None


def test_migrate_writes_a_gzip_snapshot_of_an_older_state_as_zstd(
    s3: S3Backend, url: str, bucket: str, tmp_path: Path
) -> None:
    local = LocalBackend(tmp_path / ".bpsync")
    local.snapshots_dir.mkdir(parents=True)
    (local.snapshots_dir / f"{CSV_SHA}.csv.gz").write_bytes(gzip_snapshot(CSV))
    local.write(sample_state())
    assert migrate_state(local, s3).copied == (CSV_SHA,)
    stored = objects(url, bucket)
    assert f"team/state/snapshots/{CSV_SHA}.csv.gz" not in stored
    assert stored[f"team/state/snapshots/{CSV_SHA}.csv.zst"][:4] == b"\x28\xb5\x2f\xfd"
    # And an S3 state holding a gzip snapshot migrates to a local .csv.zst.
    s3_util.client(url).delete_object(Bucket=bucket, Key=f"team/state/snapshots/{CSV_SHA}.csv.zst")
    put_raw(url, bucket, f"team/state/snapshots/{CSV_SHA}.csv.gz", gzip_snapshot(CSV))
    back = LocalBackend(tmp_path / "back")
    assert migrate_state(s3, back).copied == (CSV_SHA,)
    assert [p.name for p in back.snapshots_dir.iterdir()] == [f"{CSV_SHA}.csv.zst"]
    with back.open_snapshot(CSV_SHA) as f:
        assert f.read() == CSV


def test_migrate_takes_both_locks(s3: S3Backend, tmp_path: Path, holder: Holder) -> None:
    local = LocalBackend(tmp_path / ".bpsync")
    local.write(State.empty())
    _, lock_id = holder()
    with pytest.raises(LockHeld, match=lock_id):
        migrate_state(local, s3)
    assert local.current_lock() is None  # the local lock was released on the way out
    assert s3.read() == State.empty()


TOKEN = "tok-s3-5d1f"  # must never appear in any output


class Run:
    def __init__(self, code: int, out: str, err: str) -> None:
        self.code, self.out, self.err = code, out, err
        assert TOKEN not in out + err

    @property
    def text(self) -> str:
        return self.out + self.err


def test_migrate_command_without_local_state(url: str, bucket: str, tmp_path: Path) -> None:
    (tmp_path / "bpsync.yaml").write_text(
        f"state:\n  backend: local\n  bucket: {bucket}\n  endpoint_url: {url}\n"
    )
    out, err = io.StringIO(), io.StringIO()
    code = run(
        ["state", "migrate", "--to", "s3"],
        env={},
        cwd=tmp_path,
        console=Console(out=out, err=err),
        stdin_isatty=False,
    )
    assert code == 1 and "nothing to migrate" in err.getvalue(), err.getvalue()
    assert not (tmp_path / ".bpsync").exists()
    assert objects(url, bucket) == {}


def test_migrate_then_plan_and_apply_against_s3(url: str, bucket: str, tmp_path: Path) -> None:
    from bpsync.bigpanda.client import RateLimiter
    from bpsync.emulator import Emulator

    repo = tmp_path / "repo"
    shutil.copytree(REPO / "tables", repo / "tables")
    shutil.copy(REPO / "bpsync.yaml", repo / "bpsync.yaml")

    with Emulator(port=0, job_seconds=0.05, rate_limit=False) as emu:

        def bp(*argv: str) -> Run:
            out, err = io.StringIO(), io.StringIO()
            code = run(
                list(argv),
                env={"BIGPANDA_API_URL": emu.url, "BIGPANDA_TOKEN": TOKEN},
                cwd=repo,
                console=Console(out=out, err=err),
                stdin_isatty=False,
                client_options={
                    "poll_initial": 0.02,
                    "poll_max": 0.1,
                    "backoff_base": 0.01,
                    "backoff_cap": 0.05,
                    "rate_limiter": RateLimiter(1000),
                },
            )
            return Run(code, out.getvalue(), err.getvalue())

        r = bp("apply", "--auto-approve")
        assert r.code == 0, r.text
        local = LocalBackend(repo / ".bpsync")
        applied = local.read()

        target = ["--bucket", bucket, "--prefix", "bp", "--region", "us-east-1"]
        r = bp("state", "migrate", "--to", "s3", *target, "--endpoint-url", url)
        assert r.code == 0, r.text
        assert f"to s3://{bucket}/bp: 3 snapshot(s) copied" in r.err
        assert f"Next: set `state: {{backend: s3, bucket: {bucket}, prefix: bp" in r.err
        r = bp("state", "migrate", "--to", "s3", *target, "--endpoint-url", url)
        assert r.code == 1 and "already holds state" in r.err

        config = (
            (repo / "bpsync.yaml")
            .read_text()
            .replace(
                "  backend: local\n  path: .bpsync\n",
                f"  backend: s3\n  bucket: {bucket}\n  prefix: bp\n  region: us-east-1\n"
                f"  endpoint_url: {url}\n",
            )
        )
        (repo / "bpsync.yaml").write_text(config)
        shutil.rmtree(repo / ".bpsync")  # from now on only the bucket holds the state

        r = bp("plan", "--no-refresh", "--detailed-exitcode")
        assert r.code == 0 and "No changes." in r.out, r.text
        csv_path = repo / "tables" / "service-owners.csv"
        csv_path.write_text(csv_path.read_text().replace("billing,Ravi Patel", "billing,Ana Lima"))
        r = bp("plan", "--no-refresh")
        assert r.code == 0, r.text
        assert '"Ravi Patel" → "Ana Lima"' in r.out  # diffed against the snapshot in S3

        r = bp("apply", "--auto-approve")
        assert r.code == 0, r.text
        assert "1 updated" in r.out
        s3 = backend_for(url, bucket, "bp")
        after = s3.read()
        assert after.lineage == applied.lineage and after.serial > 1
        owners = after.tables["service-owners"]
        assert owners.sha256 == hashlib.sha256(csv_path.read_bytes()).hexdigest()
        assert s3.has_snapshot(owners.sha256)
        assert s3.current_lock() is None
        assert "No changes." in bp("plan", "--no-refresh").out

        # force-unlock through the CLI reaches the bucket too.
        planted = LockInfo(
            "left-by-ci", "ci@runner", 4242, "runner", "bpsync apply", "2024-05-01T12:00:00Z"
        )
        put_raw(url, bucket, "bp/lock.json", json.dumps(planted.to_dict()).encode())
        r = bp("apply", "--auto-approve")
        assert r.code == 1 and "locked by ci@runner" in r.err and "left-by-ci" in r.err
        r = bp("force-unlock", "left-by-ci")
        assert r.code == 0 and "Lock left-by-ci released" in r.err, r.text
        assert s3.current_lock() is None
        assert not (repo / ".bpsync").exists()
