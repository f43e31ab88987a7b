"""The S3 state backend: state, snapshots and the lock in an S3-compatible bucket, so that
several CI runners and people share one state.

Layout under ``s3://<bucket>/<prefix>/``::

    state.json                  the state (the same bytes the local backend writes)
    state.json.bak              the state before the last write
    snapshots/<sha256>.csv.zst  applied tables, zstd level 1 (the same bytes as locally; an older
                                state's <sha256>.csv.gz, gzip, is still read)
    lock.json                   the lock while a command holds it

Safety rests on S3 conditional writes (AWS S3 since 2024; MinIO, Ceph RGW, R2 and moto have
them too), never on timing:

* the lock is created with ``If-None-Match: *``, so of two commands exactly one creates it,
  and is removed with ``If-Match: <ETag>`` of the lock just read and found to be ours;
* ``state.json`` is written with ``If-Match: <ETag>`` of the document whose serial was checked
  (``If-None-Match: *`` when there was none), so a write in between can never be lost;
* a snapshot is hashed and compressed while it uploads, and the digest is checked before the
  zstd frame's last block reaches the uploader: a table that does not hash to its id never
  completes an upload (a multipart upload is aborted).

The serial check, snapshot verification and the lock's wait loop are the base's
(:mod:`bpsync.state.base`); this module is only how S3 stores, lists and conditionally writes.

boto3 is optional (``pip install 'bpsync[s3]'``) and imported only when this backend is used,
through :mod:`importlib` so that its untyped API stays behind ``Any``. Credentials come from
the standard AWS chain only (environment, shared files, SSO, instance or task role); nothing
secret is read from bpsync.yaml.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, BinaryIO

from bpsync.errors import ConfigError, StateError
from bpsync.state.base import StateBackend, Wording
from bpsync.state.lock import LockInfo, encode_lock, parse_lock
from bpsync.state.snapshot import (
    SNAPSHOT_DIR,
    SNAPSHOT_SUFFIXES,
    snapshot_id,
    snapshot_name,
    snapshot_names,
)

if TYPE_CHECKING:
    from bpsync.config import StateConfig

STATE_KEY = "state.json"
BACKUP_KEY = "state.json.bak"
LOCK_KEY = "lock.json"
NEEDS_BOTO3 = "state.backend s3 needs boto3: pip install 'bpsync[s3]'"
# A boto3 whose botocore knows PutObject's If-None-Match/If-Match and DeleteObject's If-Match
# (botocore 1.36.0's S3 model has all three; older ones may lack some).
MIN_BOTO3 = "1.36"

# Multipart parts: S3's minimum size. A non-seekable upload holds each part in memory until it
# is sent, so memory is bounded by part size x parts in flight (~16 MB measured), whatever the
# size of the table; even an incompressible 500 MB table is 100 parts of S3's 10,000.
_PART_SIZE = 5 << 20
_PARTS_IN_MEMORY = 2

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


class _Body:
    """A snapshot's body as it streams from S3, with botocore's failures as StateErrors."""

    def __init__(self, body: Any, url: str, backend: S3Backend) -> None:
        self._body = body
        self._url = url
        self._backend = backend

    def read(self, size: int = -1, /) -> bytes:
        try:
            return bytes(self._body.read(size))
        except self._backend.botocore_errors as exc:
            raise self._backend.error(exc, "read snapshot", self._url) from exc

    def close(self) -> None:
        self._body.close()


class S3Backend(StateBackend):
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
        super().__init__()
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
        state_url, backup_url = self.url(self.key(STATE_KEY)), self.url(self.key(BACKUP_KEY))
        self._wording = Wording(
            state_noun="state",
            restore_state=(
                f"Restore an earlier version of {state_url} (if the bucket keeps versions) or "
                f"the state before the last write (aws s3 cp {backup_url} {state_url}), then "
                "retry. The backup is one write older: what that write recorded (the last "
                "table applied, or a pending job or enrichment it noted) is missing from it; "
                "the next `bpsync plan` shows such a table as changed again, and apply adopts "
                "or re-attaches what BigPanda already has"
            ),
            lineage_hint="these are different state histories; check state.bucket and state.prefix",
            snapshot_missing="restore it from the bucket's object versions, or run `bpsync "
            "apply` to upload the table again and record a new snapshot",
            snapshot_damaged="restore an earlier version of the object if the bucket keeps "
            "versions, or delete it and run `bpsync apply` to upload the table again and "
            "record a fresh snapshot",
            lock_noun="lock",
            lock_damaged=f"delete it by hand (aws s3 rm {self.lock_where})",
            no_lock="the store must support conditional writes (If-None-Match)",
        )

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
        """The key snapshot ``sha256`` is written as (``.csv.zst``)."""
        return self.key(f"{SNAPSHOT_DIR}/{snapshot_name(sha256)}")

    def snapshot_keys(self, sha256: str) -> list[str]:
        """Every key snapshot ``sha256`` may be stored as, in the order to look for them."""
        return [self.key(f"{SNAPSHOT_DIR}/{name}") for name in snapshot_names(sha256)]

    @property
    def wording(self) -> Wording:
        return self._wording

    @property
    def state_where(self) -> str:
        return self.url(self.key(STATE_KEY))

    @property
    def backup_where(self) -> str:
        return self.url(self.key(BACKUP_KEY))

    @property
    def lock_where(self) -> str:
        return self.url(self.key(LOCK_KEY))

    def snapshot_where(self, sha256: str) -> str:
        return self.url(self.snapshot_key(sha256))

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

    def _load_state(self) -> tuple[bytes, str | None] | None:
        return self._get(self.key(STATE_KEY), "read state")

    def _backup_exists(self) -> bool:
        return self._exists(self.key(BACKUP_KEY), "read state")

    def _store_state(self, data: bytes, *, previous: bytes | None, version: str | None) -> str:
        if previous is not None:
            self._put(self.key(BACKUP_KEY), previous, "back up state to")
        # The serial was checked on the document of this ETag; the condition makes sure
        # nobody wrote in between (If-None-Match: * when there was none).
        condition = {"IfMatch": version} if version is not None else {"IfNoneMatch": "*"}
        try:
            return self._put(self.key(STATE_KEY), data, "write state to", **condition)
        except _Refused as refused:
            # A retry of our own write whose first answer was lost also lands here.
            again = self._get(self.key(STATE_KEY), "read state")
            if again is None or again[0] != data:
                raise self.conflict(
                    "another command wrote it at the same time (conditional write refused: "
                    f"{refused.code}); nothing was overwritten"
                ) from None
            return again[1]

    # -- snapshots ------------------------------------------------------------------------

    def _snapshot_exists(self, sha256: str) -> bool:
        return any(self._exists(key, "look up snapshot") for key in self.snapshot_keys(sha256))

    def _store_snapshot(self, sha256: str, stream: BinaryIO) -> None:
        key = self.snapshot_key(sha256)
        try:
            self._client.upload_fileobj(
                stream,
                self.bucket,
                key,
                ExtraArgs={"ContentType": "application/zstd"},
                Config=self._transfer,
            )
        except self.botocore_errors as exc:
            raise self.error(exc, "upload snapshot to", self.url(key)) from exc

    def _open_snapshot_bytes(self, sha256: str) -> tuple[_Body, str] | None:
        for key in self.snapshot_keys(sha256):
            try:
                response = self._request("get_object", "read snapshot", key, expect=_MISSING)
            except _Refused:
                continue
            return _Body(response["Body"], self.url(key), self), self.url(key)
        return None

    def _snapshot_ids(self) -> Iterator[str]:
        prefix = self.key(f"{SNAPSHOT_DIR}/")
        seen: set[str] = set()
        try:
            pages = self._client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=prefix
            )
            for page in pages:
                for obj in page.get("Contents", []):
                    sha = snapshot_id(str(obj["Key"])[len(prefix) :])
                    if sha is not None and sha not in seen:
                        seen.add(sha)
                        yield sha
        except self.botocore_errors as exc:
            raise self.error(exc, "list snapshots in", self.url(prefix)) from exc

    def _delete_snapshots(self, ids: list[str]) -> list[str]:
        # Every name of each: DeleteObjects takes at most 1,000 keys, and deleting a key that
        # is not there succeeds.
        per_batch = 1000 // len(SNAPSHOT_SUFFIXES)
        for start in range(0, len(ids), per_batch):
            batch = ids[start : start + per_batch]
            keys = [key for sha in batch for key in self.snapshot_keys(sha)]
            try:
                response = self._client.delete_objects(
                    Bucket=self.bucket,
                    Delete={"Objects": [{"Key": key} for key in keys], "Quiet": True},
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
                    f"({len(failed)} of {len(keys)} deletions failed)",
                    hint="check that the credentials allow s3:DeleteObject",
                )
        return ids

    # -- lock -----------------------------------------------------------------------------
    # A lock left by a dead process is never taken over (the base's _take_over): hosts sharing
    # a bucket may share a host name (CI containers), so a pid cannot be checked;
    # ``bpsync force-unlock ID`` clears it.

    def _read_lock_version(self) -> tuple[LockInfo, str] | None:
        got = self._get(self.key(LOCK_KEY), "read the state lock")
        if got is None:
            return None
        raw, etag = got
        return parse_lock(raw, self.lock_corrupt), etag

    def _read_lock(self) -> LockInfo | None:
        held = self._read_lock_version()
        return None if held is None else held[0]

    def _create_lock(self, info: LockInfo) -> bool:
        try:
            self._put(self.key(LOCK_KEY), encode_lock(info), "take the state lock", IfNoneMatch="*")
        except _Refused:
            return False
        return True

    def _remove_lock(self, lock_id: str) -> bool:
        held = self._read_lock_version()
        return (
            held is not None
            and held[0].id == lock_id
            and self._delete_if(self.key(LOCK_KEY), held[1], "remove the state lock")
        )
