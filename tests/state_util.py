"""What the state tests share: sample states and tables, processes that hold a lock, and one
harness per backend so the contract suite (tests/test_state_contract.py) can reach behind a
backend to plant or inspect its stored bytes.

A harness names stored things as the local directory lays them out (``state.json``,
``lock.json``, ``snapshots/<sha>.csv.zst``); the S3 harness maps those names to keys under the
prefix. Adding a backend to the contract suite means adding a harness here.

:func:`gzip_snapshot` writes a snapshot as bpsync did before zstd, the ``.csv.gz`` that
existing states hold.
"""

from __future__ import annotations

import hashlib
import os
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from bpsync.state import LocalBackend, PendingJob, State, StateBackend, TableState

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


def csv_file(tmp_path: Path, data: bytes = CSV, name: str = "t.csv") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def gzip_snapshot(data: bytes) -> bytes:
    """``data`` as the snapshot bpsync wrote before zstd (stored as ``<sha>.csv.gz``): gzip's
    header with mtime 0, no file name, XFL 4, OS 255, then deflate level 1 and the trailer."""
    deflate = zlib.compressobj(1, zlib.DEFLATED, -zlib.MAX_WBITS, zlib.DEF_MEM_LEVEL, 0)
    body = deflate.compress(data) + deflate.flush()
    trailer = struct.pack("<II", zlib.crc32(data), len(data) & 0xFFFFFFFF)
    return b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x04\xff" + body + trailer


def gzip_name(sha: str) -> str:
    """Where an older state keeps snapshot ``sha``, as a harness names it."""
    return f"snapshots/{sha}.csv.gz"


def zstd_name(sha: str) -> str:
    """Where snapshot ``sha`` is written, as a harness names it."""
    return f"snapshots/{sha}.csv.zst"


# --- processes holding the lock -----------------------------------------------------------------

LOCAL_HOLDER = """
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

S3_HOLDER = """
import sys, time
from bpsync.config import StateConfig
from bpsync.state.s3 import S3Backend

url, bucket, prefix, hold = sys.argv[1:5]
config = StateConfig(backend="s3", bucket=bucket, prefix=prefix, region="us-east-1",
                     endpoint_url=url)
with S3Backend.from_config(config).lock("bpsync apply") as info:
    print(info.id, flush=True)
    if hold == "stdin":
        sys.stdin.readline()
    else:
        time.sleep(float(hold))
"""

Holder = Callable[..., tuple["subprocess.Popen[str]", str]]


def local_holder(path: Path) -> Callable[[str], list[str]]:
    """The command line (hold) -> argv of a process holding the lock of the directory."""
    return lambda hold: [sys.executable, "-c", LOCAL_HOLDER, str(path), hold]


def s3_holder(url: str, bucket: str, prefix: str) -> Callable[[str], list[str]]:
    """The command line (hold) -> argv of a process holding the lock under the prefix."""
    return lambda hold: [sys.executable, "-c", S3_HOLDER, url, bucket, prefix, hold]


@contextmanager
def holders(argv: Callable[[str], list[str]]) -> Iterator[Holder]:
    """A function (hold) -> (Popen, lock id) that starts a process holding the lock until its
    stdin gets a line (hold "stdin") or for ``hold`` seconds; every process dies on exit."""
    procs: list[subprocess.Popen[str]] = []

    def start(hold: str = "stdin") -> tuple[subprocess.Popen[str], str]:
        proc = subprocess.Popen(
            argv(hold),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        procs.append(proc)
        assert proc.stdout is not None
        lock_id = proc.stdout.readline().strip()
        assert lock_id, "holder process failed to take the lock"
        return proc, lock_id

    try:
        yield start
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            for stream in (proc.stdin, proc.stdout):
                if stream is not None:
                    stream.close()


def random_table(path: Path, size: int) -> tuple[str, int]:
    """A CSV of ``size`` bytes that compresses only ~2:1, so buffering would show; returns its
    SHA-256 and exact size."""
    digest = hashlib.sha256()
    written = 0
    with open(path, "wb") as f:
        n = 0
        while written < size:
            block = b"".join(
                b"app-%08d,%s\n" % (i, os.urandom(24).hex().encode()) for i in range(n, n + 10000)
            )
            f.write(block)
            digest.update(block)
            written += len(block)
            n += 10000
    return digest.hexdigest(), written


# --- one harness per backend ----------------------------------------------------------------------


class LocalHarness:
    """The local backend in a temporary directory."""

    name = "local"
    # Words the recovery advice must contain beyond what every backend says.
    recovery_words: tuple[str, ...] = ("git",)
    # tracemalloc peak allowed while recording a 50 MB snapshot.
    put_peak_limit = 8 * 1024 * 1024

    def __init__(self, path: Path) -> None:
        self.path = path
        self.backend: StateBackend = LocalBackend(path)

    def another(self) -> StateBackend:
        """Another backend on the same state, as another command would open it."""
        return LocalBackend(self.path)

    def raw(self, name: str) -> bytes | None:
        try:
            return (self.path / name).read_bytes()
        except FileNotFoundError:
            return None

    def put_raw(self, name: str, data: bytes) -> None:
        """Plant bytes as if an earlier run left them an hour ago (so a lock file planted this
        way is never taken for one being created right now)."""
        path = self.path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        old = time.time() - 3600
        os.utime(path, (old, old))

    def delete_raw(self, name: str) -> None:
        (self.path / name).unlink()

    def holder_argv(self, hold: str) -> list[str]:
        return local_holder(self.path)(hold)


class S3Harness:
    """The S3 backend on a fresh bucket of the session's moto server (see tests/s3_util.py)."""

    name = "s3"
    recovery_words: tuple[str, ...] = ()
    # Multipart parts of 5 MiB, two in memory at most, plus boto3's buffers (seen at up to
    # 21 MiB under load); the table is 50 MiB, so this still shows it is never held whole.
    put_peak_limit = 25 * 1024 * 1024

    def __init__(self, monkeypatch: pytest.MonkeyPatch, prefix: str = "team/state") -> None:
        import s3_util

        self._s3_util = s3_util
        self.backend: StateBackend = s3_util.make_backend(monkeypatch, prefix)
        self.url = s3_util.server_url()
        self.bucket: str = self.backend.bucket  # type: ignore[attr-defined]
        self.prefix = prefix

    @property
    def _client(self) -> Any:
        return self._s3_util.client(self.url)

    def _key(self, name: str) -> str:
        return f"{self.prefix}/{name}"

    def another(self) -> StateBackend:
        from bpsync.state.s3 import S3Backend

        # Shares the test client: a new boto3 session costs ~0.2 s.
        return S3Backend(self._client, self.bucket, self.prefix)

    def raw(self, name: str) -> bytes | None:
        try:
            body = self._client.get_object(Bucket=self.bucket, Key=self._key(name))["Body"]
        except self._client.exceptions.NoSuchKey:
            return None
        return bytes(body.read())

    def put_raw(self, name: str, data: bytes) -> None:
        self._client.put_object(Bucket=self.bucket, Key=self._key(name), Body=data)

    def delete_raw(self, name: str) -> None:
        self._client.delete_object(Bucket=self.bucket, Key=self._key(name))

    def holder_argv(self, hold: str) -> list[str]:
        return s3_holder(self.url, self.bucket, self.prefix)(hold)


Harness = LocalHarness | S3Harness
