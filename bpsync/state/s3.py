"""The S3 state backend: state, snapshots and the lock in an S3-compatible bucket, so that
several CI runners and people share one state.

Layout under ``s3://<bucket>/<prefix>/``::

    state.json                  the state (the same bytes the local backend writes)
    state.json.bak              the state before the last write
    snapshots/<sha256>.csv.gz   applied tables, gzip level 1, mtime 0 (the same bytes as locally)
    lock.json                   the lock while a command holds it

Safety rests on S3 conditional writes (AWS S3 since 2024; MinIO, Ceph RGW, R2 and moto have
them too), never on timing:

* the lock is created with ``If-None-Match: *``, so of two commands exactly one creates it,
  and is removed with ``If-Match: <ETag>`` of the lock just read and found to be ours;
* ``state.json`` is written with ``If-Match: <ETag>`` of the document whose serial was checked
  (``If-None-Match: *`` when there was none), so a write in between can never be lost;
* a snapshot is hashed and compressed while it uploads, and the digest is checked before the
  gzip trailer reaches the uploader: a table that does not hash to its id never completes an
  upload (a multipart upload is aborted).

boto3 is optional (``pip install 'bpsync[s3]'``) and imported only when this backend is used,
through :mod:`importlib` so that its untyped API stays behind ``Any``. Credentials come from
the standard AWS chain only (environment, shared files, SSO, instance or task role); nothing
secret is read from bpsync.yaml.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import io
import json
import re
import struct
import time
import uuid
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, BinaryIO, cast

from bpsync.errors import ConfigError, StateCorrupt, StateError
from bpsync.state.lock import LockInfo, Notify, lock_held, notify_stderr
from bpsync.state.model import State, dumps_state, is_sha256_hex, parse_state
from bpsync.table import sha256_file

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

    from bpsync.config import StateConfig

STATE_KEY = "state.json"
BACKUP_KEY = "state.json.bak"
LOCK_KEY = "lock.json"
SNAPSHOT_DIR = "snapshots"
SNAPSHOT_SUFFIX = ".csv.gz"

NEEDS_BOTO3 = "state.backend s3 needs boto3: pip install 'bpsync[s3]'"
# A boto3 whose botocore knows PutObject's If-None-Match/If-Match and DeleteObject's If-Match
# (botocore 1.36.0's S3 model has all three; older ones may lack some).
MIN_BOTO3 = "1.36"

# 1 MiB reads from disk and from the network: hashing and zlib dominate, memory stays flat.
_CHUNK = 1 << 20
# Multipart parts: S3's minimum size. A non-seekable upload holds each part in memory until it
# is sent, so memory is bounded by part size x parts in flight (~16 MB measured), whatever the
# size of the table; even an incompressible 500 MB table is 100 parts of S3's 10,000.
_PART_SIZE = 5 << 20
_PARTS_IN_MEMORY = 2

_SNAPSHOT_NAME = re.compile(r"([0-9a-f]{64})\.csv\.gz")

# Error codes S3 (and compatible stores) answer with. A HEAD has no body, so its code is the
# bare HTTP status.
_MISSING = frozenset({"NoSuchKey", "404", "NotFound"})
_CONFLICT = frozenset({"PreconditionFailed", "412", "ConditionalRequestConflict", "409"})
_DENIED = frozenset(
    {
        "AccessDenied",
        "403",
        "Forbidden",
        "AllAccessDisabled",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "ExpiredToken",
        "InvalidToken",
        "TokenRefreshRequired",
    }
)
# Conditional deletes are newer than conditional writes, in stores and in botocore alike; when
# either lacks them, a lock is removed by read-compare-delete instead.
_TOO_OLD = "ParamValidation"
_NOT_IMPLEMENTED = frozenset({"NotImplemented", "501", _TOO_OLD})

# The header Python's gzip module writes for compresslevel=1, mtime=0 and no file name: magic,
# deflate, no flags, mtime 0, XFL 4 (fastest), OS 255 (unknown). With the same deflate settings
# the S3 snapshot is byte for byte the local one.
_GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x04\xff"


def _load_boto() -> tuple[Any, Any, Any]:
    """boto3, botocore.config and botocore.exceptions, as ``Any`` (they ship no types)."""
    try:
        boto3 = importlib.import_module("boto3")
        config = importlib.import_module("botocore.config")
        exceptions = importlib.import_module("botocore.exceptions")
    except ImportError:
        raise ConfigError(
            NEEDS_BOTO3,
            hint="or set `state.backend: local` in bpsync.yaml",
        ) from None
    return boto3, config, exceptions


def _code(exc: Any) -> str:
    """The S3 error code of a botocore ClientError (``NoSuchKey``, ``PreconditionFailed``…)."""
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code") or "")


class _Refused(Exception):
    """An S3 answer the caller expected and handles (missing object, failed precondition)."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


class _DigestMismatch(Exception):
    def __init__(self, actual: str) -> None:
        super().__init__(actual)
        self.actual = actual


class _CompressingReader(io.RawIOBase):
    """Reads a table file and yields it gzip-compressed, hashing the plain bytes on the way.

    When the table ends, the digest is compared with the expected id *before* the gzip trailer
    is handed out: a mismatch raises :class:`_DigestMismatch` from ``read``, which makes the
    uploader fail (and abort a multipart upload) instead of storing a wrong snapshot.
    """

    def __init__(self, source: IO[bytes], expected: str) -> None:
        super().__init__()
        self._source = source
        self._expected = expected
        self._digest = hashlib.sha256()
        self._crc = 0
        self._size = 0
        # The settings of gzip.GzipFile(compresslevel=1): same bytes as the local backend.
        self._deflate = zlib.compressobj(1, zlib.DEFLATED, -zlib.MAX_WBITS, zlib.DEF_MEM_LEVEL, 0)
        self._pending = bytearray(_GZIP_HEADER)
        self._done = False
        self.actual: str | None = None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer, /) -> int:
        while not self._pending and not self._done:
            chunk = self._source.read(_CHUNK)
            if chunk:
                self._digest.update(chunk)
                self._crc = zlib.crc32(chunk, self._crc)
                self._size += len(chunk)
                self._pending += self._deflate.compress(chunk)
                continue
            self._done = True
            self.actual = self._digest.hexdigest()
            if self.actual != self._expected:
                raise _DigestMismatch(self.actual)
            self._pending += self._deflate.flush()
            self._pending += struct.pack("<II", self._crc, self._size & 0xFFFFFFFF)
        with memoryview(buffer) as view:
            n = min(len(view), len(self._pending))
            view[:n] = self._pending[:n]
        del self._pending[:n]
        return n

    def close(self) -> None:
        if not self.closed:
            self._source.close()
        super().close()


class _VerifiedSnapshot(io.RawIOBase):
    """Decompresses a snapshot as it streams from S3 and, on reaching its end, checks the bytes
    against the id, so a damaged snapshot can never be diffed against silently."""

    def __init__(self, body: Any, sha256: str, url: str, backend: S3Backend) -> None:
        super().__init__()
        self._body = body
        self._gz = zlib.decompressobj(16 + zlib.MAX_WBITS)  # gzip wrapper, checks CRC and size
        self._expected = sha256
        self._digest = hashlib.sha256()
        self._url = url
        self._backend = backend
        self._pending = b""
        self._verified = False

    def readable(self) -> bool:
        return True

    def _corrupt(self, detail: str) -> StateCorrupt:
        return StateCorrupt(
            f"{self._url}: snapshot is damaged ({detail})",
            hint="restore an earlier version of the object if the bucket keeps versions, or "
            "delete it and run `bpsync apply` to upload the table again and record a fresh "
            "snapshot",
        )

    def _fill(self) -> None:
        """Decompress until there are bytes to hand out or the snapshot has ended."""
        while not self._pending and not self._verified:
            if self._gz.unconsumed_tail:
                compressed = self._gz.unconsumed_tail
            else:
                try:
                    compressed = self._body.read(_CHUNK)
                except self._backend.botocore_errors as exc:
                    raise self._backend.error(exc, "read snapshot", self._url) from exc
                except OSError as exc:
                    raise StateError(f"cannot read snapshot {self._url}: {exc}") from exc
            if not compressed:
                if not self._gz.eof:
                    raise self._corrupt("it ends too early")
                self._verified = True
                actual = self._digest.hexdigest()
                if actual != self._expected:
                    raise self._corrupt(f"its content hashes to {actual}")
                return
            if self._gz.eof:
                raise self._corrupt("unexpected bytes after the gzip stream")
            try:
                out = self._gz.decompress(compressed, _CHUNK)
            except zlib.error as exc:
                raise self._corrupt(str(exc)) from exc
            if self._gz.unused_data:
                raise self._corrupt("unexpected bytes after the gzip stream")
            self._digest.update(out)
            self._pending = out

    def readinto(self, buffer: WriteableBuffer, /) -> int:
        self._fill()
        with memoryview(buffer) as view:
            n = min(len(view), len(self._pending))
            view[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n

    def close(self) -> None:
        if not self.closed:
            with contextlib.suppress(Exception):
                self._body.close()
        super().close()


@dataclass(frozen=True)
class _Seen:
    """The state document as this backend last read or wrote it."""

    serial: int
    lineage: str
    etag: str | None


class S3Backend:
    """State in an S3-compatible bucket under ``prefix``.

    ``client`` is a boto3 S3 client; :meth:`from_config` builds one from bpsync.yaml's
    ``state:`` section and the standard AWS credential chain.
    """

    def __init__(
        self,
        client: Any,
        bucket: str,
        prefix: str = "",
        *,
        transfer_config: Any = None,
    ) -> None:
        _, _, exceptions = _load_boto()
        self._client = client
        self._exc = exceptions
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        if transfer_config is None:
            transfer = importlib.import_module("boto3.s3.transfer")
            transfer_config = transfer.TransferConfig(
                multipart_threshold=_PART_SIZE,
                multipart_chunksize=_PART_SIZE,
                max_concurrency=_PARTS_IN_MEMORY,
            )
            transfer_config.max_in_memory_upload_chunks = _PARTS_IN_MEMORY
        self._transfer = transfer_config
        self._seen: _Seen | None = None

    @classmethod
    def from_config(cls, config: StateConfig) -> S3Backend:
        boto3, botocore_config, exceptions = _load_boto()
        if not config.bucket:
            raise ConfigError(
                "state.backend is s3 but state.bucket is not set",
                hint="add `bucket: <name>` under `state:` in bpsync.yaml",
            )
        options: dict[str, Any] = {
            # Standard retries (max attempts from AWS_MAX_ATTEMPTS / the AWS config, else 3).
            "retries": {"mode": "standard"},
            "connect_timeout": 10,
            "read_timeout": 60,
        }
        if config.endpoint_url:
            # S3-compatible stores (MinIO, Ceph, moto) rarely resolve bucket subdomains.
            options["s3"] = {"addressing_style": "path"}
        try:
            session = boto3.session.Session(region_name=config.region or None)
            client = session.client(
                "s3",
                endpoint_url=config.endpoint_url or None,
                config=botocore_config.Config(**options),
            )
        except (exceptions.BotoCoreError, ValueError) as exc:
            raise ConfigError(
                f"cannot set up the S3 client for state s3://{config.bucket}: {exc}",
                hint="check state.region and state.endpoint_url in bpsync.yaml and the AWS "
                "configuration (AWS_PROFILE, ~/.aws/config)",
            ) from exc
        return cls(client, config.bucket, config.prefix)

    def __repr__(self) -> str:
        return f"S3Backend({self.location!r})"

    @property
    def location(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"

    def key(self, name: str) -> str:
        """The object key of ``name`` (``state.json``, ``lock.json``…) under the prefix."""
        return f"{self.prefix}/{name}" if self.prefix else name

    def url(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    def snapshot_key(self, sha256: str) -> str:
        if not is_sha256_hex(sha256):
            raise StateError(f"not a snapshot id (64 lowercase hex digits): {sha256!r}")
        return self.key(f"{SNAPSHOT_DIR}/{sha256}{SNAPSHOT_SUFFIX}")

    # -- talking to S3 --------------------------------------------------------------------

    @property
    def botocore_errors(self) -> tuple[type[BaseException], ...]:
        return (self._exc.ClientError, self._exc.BotoCoreError)

    def error(self, exc: BaseException, doing: str, where: str) -> StateError:
        """A botocore failure as a StateError naming the object and how to fix it."""
        E = self._exc
        endpoint = getattr(getattr(self._client, "meta", None), "endpoint_url", None) or "S3"
        if isinstance(exc, E.ClientError):
            code = _code(exc)
            message = str(exc.response.get("Error", {}).get("Message") or "").strip()
            if code == "NoSuchBucket":
                return StateError(
                    f"cannot {doing} {where}: the bucket {self.bucket} does not exist "
                    f"(at {endpoint})",
                    hint="create the bucket (with versioning on, so every state is kept), or "
                    "fix state.bucket, state.region or state.endpoint_url in bpsync.yaml",
                )
            if code in _DENIED:
                return StateError(
                    f"cannot {doing} {where}: access denied ({code})",
                    hint="check the AWS credentials bpsync runs with (AWS_PROFILE, "
                    "AWS_ACCESS_KEY_ID, the role of the runner) and that they allow "
                    "s3:GetObject, s3:PutObject, s3:DeleteObject and s3:ListBucket on "
                    f"s3://{self.bucket}/{self.prefix + '/' if self.prefix else ''}*",
                )
            detail = f"{code}: {message}" if message and message != code else code
            return StateError(
                f"cannot {doing} {where}: S3 answered {detail or 'an error'}",
                hint="check state.bucket, state.region and state.endpoint_url in bpsync.yaml",
            )
        if isinstance(exc, E.ParamValidationError):
            # IfMatch/IfNoneMatch on PutObject and DeleteObject arrived in botocore late 2024.
            return StateError(
                f"cannot {doing} {where}: this boto3/botocore is too old for S3 conditional "
                f"writes ({' '.join(str(exc).split())})",
                hint=f"upgrade it: pip install -U 'bpsync[s3]' (boto3 >= {MIN_BOTO3})",
            )
        credentials = (E.NoCredentialsError, E.PartialCredentialsError, E.CredentialRetrievalError)
        if isinstance(exc, credentials):
            return StateError(
                f"cannot {doing} {where}: no usable AWS credentials ({exc})",
                hint="bpsync uses the standard AWS credential chain: set AWS_PROFILE or "
                "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, or run where a role is attached; "
                "bpsync.yaml never holds secrets",
            )
        if isinstance(exc, (E.ConnectionError, E.HTTPClientError)):
            return StateError(
                f"cannot {doing} {where}: the S3 endpoint {endpoint} cannot be reached ({exc})",
                hint="check state.endpoint_url and state.region in bpsync.yaml, and the network "
                "or proxy between this machine and the bucket",
            )
        return StateError(f"cannot {doing} {where}: {exc}")

    def _request(
        self, method: str, doing: str, key: str, *, expect: frozenset[str] = frozenset(), **kw: Any
    ) -> Any:
        """``client.<method>(Bucket, Key, **kw)``; expected error codes raise :class:`_Refused`,
        every other failure a StateError."""
        try:
            return getattr(self._client, method)(Bucket=self.bucket, Key=key, **kw)
        except self._exc.ClientError as exc:
            code = _code(exc)
            if code in expect:
                raise _Refused(code) from exc
            raise self.error(exc, doing, self.url(key)) from exc
        except self._exc.ParamValidationError as exc:
            if _TOO_OLD in expect:  # an older botocore that lacks a conditional parameter
                raise _Refused(_TOO_OLD) from exc
            raise self.error(exc, doing, self.url(key)) from exc
        except self._exc.BotoCoreError as exc:
            raise self.error(exc, doing, self.url(key)) from exc

    def _get(self, key: str, doing: str) -> tuple[bytes, str] | None:
        """An object's bytes and ETag; None when it does not exist."""
        try:
            response = self._request("get_object", doing, key, expect=_MISSING)
        except _Refused:
            return None
        body = response["Body"]
        try:
            data = body.read()
        except self.botocore_errors as exc:
            raise self.error(exc, doing, self.url(key)) from exc
        finally:
            body.close()
        return bytes(data), str(response["ETag"])

    def _exists(self, key: str, doing: str) -> bool:
        try:
            self._request("head_object", doing, key, expect=_MISSING)
        except _Refused:
            return False
        return True

    def _put(self, key: str, data: bytes, doing: str, **conditions: str) -> str:
        """Store ``data``; returns the new ETag. A failed condition raises :class:`_Refused`."""
        response = self._request(
            "put_object",
            doing,
            key,
            expect=_CONFLICT | _MISSING if conditions else frozenset(),
            Body=data,
            ContentType="application/json",
            **conditions,
        )
        return str(response.get("ETag") or "")

    def _delete_if(self, key: str, etag: str, doing: str) -> bool:
        """Delete ``key`` if it is still the version ``etag``. False when it changed or went."""
        try:
            self._request(
                "delete_object",
                doing,
                key,
                expect=_CONFLICT | _MISSING | _NOT_IMPLEMENTED,
                IfMatch=etag,
            )
        except _Refused as refused:
            if refused.code not in _NOT_IMPLEMENTED:
                return False
            # A store without conditional deletes: the caller has just read the object and
            # compared it; delete it plainly.
            self._request("delete_object", doing, key)
        return True

    # -- state ----------------------------------------------------------------------------

    def _corrupt(self, detail: str, hint: str = "") -> StateCorrupt:
        state_url = self.url(self.key(STATE_KEY))
        backup_url = self.url(self.key(BACKUP_KEY))
        recover = (
            "bpsync never treats damaged state as empty. Restore an earlier version of "
            f"{state_url} (if the bucket keeps versions) or the state before the last write "
            f"(aws s3 cp {backup_url} {state_url}), then retry"
        )
        return StateCorrupt(
            f"{state_url}: state is damaged: {detail}",
            hint=f"{hint}; {recover}" if hint else recover,
        )

    def _parse(self, raw: bytes) -> State:
        return parse_state(raw, self._corrupt)

    def _read_current(self) -> tuple[State, bytes | None, str | None]:
        """The stored state, its bytes and ETag (None, None when there is none)."""
        got = self._get(self.key(STATE_KEY), "read state")
        if got is None:
            if self._exists(self.key(BACKUP_KEY), "read state"):
                raise self._corrupt(f"it is missing but {self.url(self.key(BACKUP_KEY))} exists")
            return State.empty(), None, None
        raw, etag = got
        return self._parse(raw), raw, etag

    def read(self) -> State:
        state, _, etag = self._read_current()
        self._seen = _Seen(state.serial, state.lineage, etag)
        return state

    def _conflict(self, detail: str) -> StateError:
        return StateError(
            f"refusing to overwrite {self.url(self.key(STATE_KEY))}: {detail}",
            hint="run the command again so it starts from the current state",
        )

    def write(self, state: State) -> State:
        current, raw, etag = self._read_current()
        state_url = self.url(self.key(STATE_KEY))
        if current.serial != state.serial:
            raise self._conflict(
                f"it is at serial {current.serial} but this state was read at serial "
                f"{state.serial} (another command wrote state meanwhile)"
            )
        if raw is not None and state.lineage != current.lineage:
            raise StateError(
                f"refusing to overwrite {state_url}: it belongs to lineage {current.lineage}, "
                f"this state to lineage {state.lineage or '(new)'}",
                hint="these are different state histories; check state.bucket and state.prefix",
            )
        seen = self._seen
        if (
            seen is not None
            and (seen.serial, seen.lineage) == (state.serial, state.lineage)
            and seen.etag != etag
        ):
            raise self._conflict(
                f"it was replaced since this command read it at serial {state.serial} "
                "(same serial, different content)"
            )
        new = State(
            serial=state.serial + 1,
            lineage=state.lineage or str(uuid.uuid4()),
            tables=state.tables,
        )
        data = dumps_state(new).encode("utf-8")
        if raw is not None:
            self._put(self.key(BACKUP_KEY), raw, "back up state to")
        condition = {"IfMatch": etag} if etag is not None else {"IfNoneMatch": "*"}
        try:
            new_etag = self._put(self.key(STATE_KEY), data, "write state to", **condition)
        except _Refused as refused:
            # A retry of our own write whose first answer was lost also lands here.
            again = self._get(self.key(STATE_KEY), "read state")
            if again is None or again[0] != data:
                raise self._conflict(
                    "another command wrote it at the same time (conditional write refused: "
                    f"{refused.code}); nothing was overwritten"
                ) from None
            new_etag = again[1]
        self._seen = _Seen(new.serial, new.lineage, new_etag)
        return new

    # -- snapshots ------------------------------------------------------------------------

    def has_snapshot(self, sha256: str) -> bool:
        return self._exists(self.snapshot_key(sha256), "look up snapshot")

    def put_snapshot(self, sha256: str, source: Path) -> None:
        key = self.snapshot_key(sha256)
        try:
            if self.has_snapshot(sha256):
                # Content-addressed: nothing to store, but still refuse a caller's wrong digest.
                actual = sha256_file(source)
            else:
                actual = self._upload_snapshot(source, key, sha256)
        except OSError as exc:
            raise StateError(
                f"cannot record snapshot of {source} in {self.url(key)}: {exc}"
            ) from exc
        if actual != sha256:
            raise StateError(
                f"refusing to record {source} as snapshot {sha256}: its bytes hash to {actual}",
                hint="the table changed while bpsync read it; run the command again",
            )

    def _upload_snapshot(self, source: Path, key: str, sha256: str) -> str:
        reader = _CompressingReader(open(source, "rb"), sha256)  # noqa: SIM115 - reader closes
        # Whole reads: the uploader takes one read() per part and parts must be full-sized.
        stream = io.BufferedReader(reader, _CHUNK)
        try:
            self._client.upload_fileobj(
                stream,
                self.bucket,
                key,
                ExtraArgs={"ContentType": "application/gzip"},
                Config=self._transfer,
            )
        except _DigestMismatch as exc:
            return exc.actual
        except self.botocore_errors as exc:
            raise self.error(exc, "upload snapshot to", self.url(key)) from exc
        finally:
            stream.close()
        if reader.actual is None:  # the uploader stopped reading early: never store that
            raise StateError(f"the upload of snapshot {self.url(key)} ended before the table")
        return reader.actual

    def open_snapshot(self, sha256: str, *, table: str | None = None) -> BinaryIO:
        key = self.snapshot_key(sha256)
        try:
            response = self._request("get_object", "read snapshot", key, expect=_MISSING)
        except _Refused:
            of_table = f" of table {table}" if table else ""
            raise StateError(
                f"the applied snapshot{of_table} ({sha256}) is missing: {self.url(key)} "
                "does not exist",
                hint="restore it from the bucket's object versions, or run `bpsync apply` to "
                "upload the table again and record a new snapshot",
            ) from None
        raw = _VerifiedSnapshot(response["Body"], sha256, self.url(key), self)
        return cast(BinaryIO, io.BufferedReader(raw, _CHUNK))

    def _snapshot_ids(self) -> Iterator[str]:
        prefix = self.key(f"{SNAPSHOT_DIR}/")
        try:
            pages = self._client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=prefix
            )
            for page in pages:
                for obj in page.get("Contents", []):
                    m = _SNAPSHOT_NAME.fullmatch(str(obj["Key"])[len(prefix) :])
                    if m is not None:
                        yield m.group(1)
        except self.botocore_errors as exc:
            raise self.error(exc, "list snapshots in", self.url(prefix)) from exc

    def prune_snapshots(self, keep: Iterable[str]) -> list[str]:
        keep_set = set(keep)
        doomed = sorted(sha for sha in self._snapshot_ids() if sha not in keep_set)
        for start in range(0, len(doomed), 1000):  # DeleteObjects takes at most 1,000 keys
            batch = doomed[start : start + 1000]
            try:
                response = self._client.delete_objects(
                    Bucket=self.bucket,
                    Delete={
                        "Objects": [{"Key": self.snapshot_key(sha)} for sha in batch],
                        "Quiet": True,
                    },
                )
            except self.botocore_errors as exc:
                raise self.error(
                    exc, "delete snapshots in", self.url(self.key(f"{SNAPSHOT_DIR}/"))
                ) from exc
            failed = response.get("Errors") or []
            if failed:
                first = failed[0]
                raise StateError(
                    f"cannot delete snapshot s3://{self.bucket}/{first.get('Key')}: "
                    f"{first.get('Code')}: {first.get('Message')} "
                    f"({len(failed)} of {len(batch)} deletions failed)",
                    hint="check that the credentials allow s3:DeleteObject",
                )
        return doomed

    # -- lock -----------------------------------------------------------------------------

    def _lock_corrupt(self, detail: str) -> StateCorrupt:
        url = self.url(self.key(LOCK_KEY))
        return StateCorrupt(
            f"{url}: lock is damaged ({detail})",
            hint="bpsync does not remove a lock it cannot read: if no bpsync command is running "
            f"against this state, delete it by hand (aws s3 rm {url})",
        )

    def _read_lock(self) -> tuple[LockInfo, str] | None:
        got = self._get(self.key(LOCK_KEY), "read the state lock")
        if got is None:
            return None
        raw, etag = got
        try:
            data = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise self._lock_corrupt(f"not valid JSON: {exc}") from exc
        try:
            return LockInfo.from_dict(data), etag
        except StateCorrupt as exc:
            raise self._lock_corrupt(exc.message) from exc

    def _acquire(
        self,
        command: str,
        *,
        timeout: float,
        clock: Callable[[], float],
        sleep: Callable[[float], None],
        poll_interval: float,
    ) -> LockInfo:
        key = self.key(LOCK_KEY)
        start = clock()
        deadline = start + max(0.0, timeout)
        mine = LockInfo.new(command)
        data = (json.dumps(mine.to_dict(), indent=2, sort_keys=True) + "\n").encode("utf-8")
        vanished = 0
        while True:
            try:
                self._put(key, data, "take the state lock", IfNoneMatch="*")
                return mine
            except _Refused:
                pass
            held = self._read_lock()
            if held is None:
                # Released between our create and our read: try again at once, but never spin
                # forever on a store that refuses creates without showing a lock.
                vanished += 1
                if vanished < 20:
                    continue
                raise StateError(
                    f"cannot take the state lock {self.url(key)}: the store refuses to create "
                    "it but shows no lock",
                    hint="the store must support conditional writes (If-None-Match)",
                )
            info = held[0]
            if info.id == mine.id:
                return mine  # our own create, retried after its answer was lost
            now = clock()
            if now >= deadline:
                raise lock_held(info, where=self.location, waited=now - start)
            sleep(min(poll_interval, deadline - now))

    def _release(self, info: LockInfo, notify: Notify) -> None:
        """Remove the lock only if it is still ours: a lock that was force-unlocked and taken
        by another command must survive our exit."""
        held = self._read_lock()
        removed = (
            held is not None
            and held[0].id == info.id
            and self._delete_if(self.key(LOCK_KEY), held[1], "release the state lock")
        )
        if not removed:
            notify(
                f"the state lock {info.id} was no longer ours when `{info.command}` ended "
                "(force-unlocked?); left the current lock in place"
            )

    @contextlib.contextmanager
    def lock(
        self,
        command: str,
        *,
        timeout: float = 0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        notify: Notify | None = None,
        poll_interval: float = 0.5,
    ) -> Iterator[LockInfo]:
        """Hold the lock for the ``with`` block. A lock left by a dead process is never taken
        over here: hosts sharing a bucket may share a host name (CI containers), so a pid
        cannot be checked; ``bpsync force-unlock ID`` clears it."""
        notify = notify or notify_stderr
        info = self._acquire(
            command, timeout=timeout, clock=clock, sleep=sleep, poll_interval=poll_interval
        )
        try:
            yield info
        finally:
            try:
                self._release(info, notify)
            except StateError as exc:
                # Never mask the command's own error with a failure to tidy up.
                notify(f"could not release the state lock {info.id}: {exc}")

    def force_unlock(self, lock_id: str) -> LockInfo:
        held = self._read_lock()
        if held is None:
            raise StateError(f"state {self.location} is not locked; nothing to unlock")
        info, etag = held
        if info.id != lock_id:
            raise StateError(
                f"lock id {lock_id} does not match the current lock: "
                f"state {self.location} is locked by {info.describe()}",
                hint="pass the id shown in the lock error; bpsync left the lock in place",
            )
        if not self._delete_if(self.key(LOCK_KEY), etag, "remove the state lock"):
            raise StateError(
                f"the lock of state {self.location} changed while it was being removed",
                hint="run `bpsync force-unlock` again with the id of the current lock",
            )
        return info

    def current_lock(self) -> LockInfo | None:
        held = self._read_lock()
        return None if held is None else held[0]
