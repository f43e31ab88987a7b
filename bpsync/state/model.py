"""What bpsync remembers between runs, as immutable values, and their JSON form.

The JSON form is the on-disk format of every backend (``state.json`` locally, one object in a
bucket for S3) and the input of :func:`state_digest`, which plan fingerprints are built from.
Keys are always sorted so the bytes depend only on the content, never on dict order.
"""

from __future__ import annotations

import hashlib
import json
import re
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from bpsync.endpoint import Endpoint
from bpsync.errors import StateCorrupt

FORMAT_VERSION = 1

JOB_KINDS = ("create", "update", "replace")

_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


def is_sha256_hex(value: str) -> bool:
    """True for a lowercase 64-digit SHA-256 hex digest (the form snapshot ids take)."""
    return _SHA256_HEX.fullmatch(value) is not None


def _json_copy(value: Mapping[str, Any], what: str) -> dict[str, Any]:
    # A deep copy that also proves the value is plain JSON, so a state we accept in memory is
    # always one we can write, and the caller's dict can no longer change it behind our back.
    try:
        copied = json.loads(json.dumps(dict(value), allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{what} is not plain JSON: {exc}") from exc
    assert isinstance(copied, dict)
    return copied


@dataclass(frozen=True)
class PendingJob:
    """An upload job that BigPanda accepted but that has not been seen `done` yet.

    Recorded before waiting on the job so that an interrupted apply re-attaches to it instead
    of uploading again. ``sha256``/``rows``/``schema`` describe the table that was uploaded; they
    become the table's applied state once the job is done.
    """

    job_id: str
    job_url: str | None
    enrichment_id: str
    sha256: str
    rows: int
    kind: str  # "create" | "update" | "replace"
    started_at: str  # ISO-8601 UTC
    replaces: str | None  # enrichment to deactivate once the job is done (kind "replace")
    schema: dict[str, Any]

    def __post_init__(self) -> None:
        if self.kind not in JOB_KINDS:
            raise ValueError(f"job kind must be one of {', '.join(JOB_KINDS)}, not {self.kind!r}")
        if not is_sha256_hex(self.sha256):
            raise ValueError(f"sha256 must be 64 lowercase hex digits, not {self.sha256!r}")
        object.__setattr__(self, "schema", _json_copy(self.schema, "pending job schema"))


@dataclass(frozen=True)
class TableState:
    """One table as last applied. ``sha256`` is the digest of the applied canonical CSV and
    names its snapshot; ``schema`` is the enrichment schema as applied::

        {"map_name", "description", "active", "when",
         "fields": [{"title", "type", "tag_name"?, "override_existing"?}]}

    ``schema`` is a private deep copy: treat it as read-only.
    """

    name: str
    enrichment_id: str | None
    api_version: str
    schema: dict[str, Any]
    remote_version: int | None = None
    sha256: str | None = None
    rows: int | None = None
    applied_at: str | None = None  # ISO-8601 UTC
    pending: PendingJob | None = None

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("table name must not be empty")
        if self.sha256 is not None and not is_sha256_hex(self.sha256):
            raise ValueError(f"sha256 must be 64 lowercase hex digits, not {self.sha256!r}")
        object.__setattr__(self, "schema", _json_copy(self.schema, f"schema of {self.name}"))


@dataclass(frozen=True)
class State:
    """Every table bpsync manages, plus the counters that detect lost updates.

    ``serial`` grows by one on every write; ``lineage`` (a uuid4 given on the first write) tells
    one state history from another. ``tables`` is a read-only mapping sorted by name.
    ``endpoint`` is the BigPanda endpoint the state belongs to (SPEC §5); None in state
    written before bpsync recorded it, or never applied.
    """

    serial: int = 0
    lineage: str = ""
    tables: Mapping[str, TableState] = field(default_factory=dict)
    endpoint: Endpoint | None = None

    def __post_init__(self) -> None:
        if self.serial < 0:
            raise ValueError("serial must not be negative")
        tables: dict[str, TableState] = {}
        for key in sorted(self.tables):
            ts = self.tables[key]
            if ts.name != key:
                raise ValueError(f"table stored under {key!r} is named {ts.name!r}")
            tables[key] = ts
        object.__setattr__(self, "tables", types.MappingProxyType(tables))

    @classmethod
    def empty(cls) -> State:
        return cls(serial=0, lineage="", tables={})

    def table(self, name: str) -> TableState | None:
        return self.tables.get(name)

    def with_table(self, ts: TableState) -> State:
        """This state with ``ts`` added or replacing the table of the same name."""
        return State(self.serial, self.lineage, {**self.tables, ts.name: ts}, self.endpoint)

    def without_table(self, name: str) -> State:
        kept = {k: v for k, v in self.tables.items() if k != name}
        return State(self.serial, self.lineage, kept, self.endpoint)

    def bound_to(self, endpoint: Endpoint) -> State:
        """This state, recorded as belonging to ``endpoint``."""
        return State(self.serial, self.lineage, self.tables, endpoint)


# --- JSON form ------------------------------------------------------------------------------


def _pending_to_dict(job: PendingJob) -> dict[str, Any]:
    return {
        "job_id": job.job_id,
        "job_url": job.job_url,
        "enrichment_id": job.enrichment_id,
        "sha256": job.sha256,
        "rows": job.rows,
        "kind": job.kind,
        "started_at": job.started_at,
        "replaces": job.replaces,
        "schema": job.schema,
    }


def _table_to_dict(ts: TableState) -> dict[str, Any]:
    # The name is the key in "tables"; it is not repeated inside.
    return {
        "enrichment_id": ts.enrichment_id,
        "api_version": ts.api_version,
        "schema": ts.schema,
        "remote_version": ts.remote_version,
        "sha256": ts.sha256,
        "rows": ts.rows,
        "applied_at": ts.applied_at,
        "pending": None if ts.pending is None else _pending_to_dict(ts.pending),
    }


def state_to_dict(state: State) -> dict[str, Any]:
    out: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "serial": state.serial,
        "lineage": state.lineage,
        "tables": {name: _table_to_dict(ts) for name, ts in state.tables.items()},
    }
    # Written only once known, so unbound state keeps the bytes (and digest) it always had;
    # a reader that predates the key ignores it.
    if state.endpoint is not None:
        out["endpoint"] = {
            "base_url": state.endpoint.base_url,
            "api_version": state.endpoint.api_version,
        }
    return out


def dumps_state(state: State) -> str:
    """The human-readable file form: indent 2, sorted keys, UTF-8 text, trailing newline."""
    return json.dumps(state_to_dict(state), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def canonical_state_bytes(state: State) -> bytes:
    """The compact canonical form that :func:`state_digest` hashes."""
    text = json.dumps(
        state_to_dict(state),
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        allow_nan=False,
    )
    return text.encode("utf-8")


def state_digest(state: State) -> str:
    """``sha256:<hex>`` of the whole state (serial and lineage included: a state written since a
    plan was made is a different state, as in Terraform's plan files)."""
    return "sha256:" + hashlib.sha256(canonical_state_bytes(state)).hexdigest()


class _Reader:
    """Typed access to one JSON object; every complaint names the path of the bad value."""

    def __init__(self, data: object, where: str) -> None:
        if not isinstance(data, dict):
            raise StateCorrupt(f"{where} should be an object, found {_kind(data)}")
        self.data: dict[str, Any] = data
        self.where = where

    def _get(self, key: str) -> object:
        if key not in self.data:
            raise StateCorrupt(f"{self.where} lacks {key!r}")
        return self.data[key]

    def _bad(self, key: str, want: str, value: object) -> StateCorrupt:
        return StateCorrupt(f"{self.where}.{key} should be {want}, found {_kind(value)}")

    def str_(self, key: str) -> str:
        value = self._get(key)
        if not isinstance(value, str):
            raise self._bad(key, "a string", value)
        return value

    def opt_str(self, key: str) -> str | None:
        value = self._get(key)
        if value is not None and not isinstance(value, str):
            raise self._bad(key, "a string or null", value)
        return value

    def int_(self, key: str) -> int:
        value = self._get(key)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self._bad(key, "an integer", value)
        return value

    def opt_int(self, key: str) -> int | None:
        value = self._get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise self._bad(key, "an integer or null", value)
        return value

    def obj(self, key: str) -> dict[str, Any]:
        value = self._get(key)
        if not isinstance(value, dict):
            raise self._bad(key, "an object", value)
        return value

    def sha(self, key: str, *, optional: bool) -> str | None:
        value = self.opt_str(key) if optional else self.str_(key)
        if value is not None and not is_sha256_hex(value):
            raise StateCorrupt(f"{self.where}.{key} is not a SHA-256 hex digest: {value!r}")
        return value


def _kind(value: object) -> str:
    if value is None:
        return "null"
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}.get(
        type(value), type(value).__name__
    )


def _pending_from_dict(data: object, where: str) -> PendingJob | None:
    if data is None:
        return None
    r = _Reader(data, where)
    kind = r.str_("kind")
    if kind not in JOB_KINDS:
        raise StateCorrupt(f"{where}.kind should be one of {', '.join(JOB_KINDS)}, found {kind!r}")
    sha = r.sha("sha256", optional=False)
    assert sha is not None
    return PendingJob(
        job_id=r.str_("job_id"),
        job_url=r.opt_str("job_url"),
        enrichment_id=r.str_("enrichment_id"),
        sha256=sha,
        rows=r.int_("rows"),
        kind=kind,
        started_at=r.str_("started_at"),
        replaces=r.opt_str("replaces"),
        schema=r.obj("schema"),
    )


def state_from_dict(data: object) -> State:
    """Parse the JSON form strictly. Raises StateCorrupt naming the first bad value; callers
    add which file it came from and how to recover."""
    top = _Reader(data, "state")
    if "format_version" not in top.data:
        raise StateCorrupt("not a bpsync state: no 'format_version'")
    version = top.data["format_version"]
    if version != FORMAT_VERSION or isinstance(version, bool):
        raise StateCorrupt(
            f"state format_version is {version!r}; this bpsync reads only {FORMAT_VERSION}",
            hint="a newer bpsync may have written it: upgrade bpsync",
        )
    serial = top.int_("serial")
    if serial < 0:
        raise StateCorrupt(f"state.serial is negative: {serial}")
    lineage = top.str_("lineage")
    tables: dict[str, TableState] = {}
    for name, raw in top.obj("tables").items():
        where = f"state.tables[{name!r}]"
        if not name:
            raise StateCorrupt("state.tables has an entry with an empty name")
        r = _Reader(raw, where)
        tables[name] = TableState(
            name=name,
            enrichment_id=r.opt_str("enrichment_id"),
            api_version=r.str_("api_version"),
            schema=r.obj("schema"),
            remote_version=r.opt_int("remote_version"),
            sha256=r.sha("sha256", optional=True),
            rows=r.opt_int("rows"),
            applied_at=r.opt_str("applied_at"),
            pending=_pending_from_dict(r.data.get("pending"), f"{where}.pending"),
        )
    return State(serial=serial, lineage=lineage, tables=tables, endpoint=_endpoint_from(top.data))


def _endpoint_from(data: dict[str, Any]) -> Endpoint | None:
    """The recorded endpoint; absent (or null) in state written before it was recorded."""
    raw = data.get("endpoint")
    if raw is None:
        return None
    r = _Reader(raw, "state.endpoint")
    return Endpoint(r.str_("base_url"), r.str_("api_version"))


def referenced_snapshots(state: State) -> set[str]:
    """Every snapshot id the state still needs: each table's applied one and, while a job runs,
    the one being uploaded. Pass this to ``prune_snapshots``."""
    ids: set[str] = set()
    for ts in state.tables.values():
        if ts.sha256 is not None:
            ids.add(ts.sha256)
        if ts.pending is not None:
            ids.add(ts.pending.sha256)
    return ids


def parse_state(raw: bytes, corrupt: Callable[[str, str], StateCorrupt]) -> State:
    """The state in a state file's bytes; `corrupt(detail, hint)` builds the error that names
    the backend's file and how to recover (damaged state is never read as empty)."""
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise corrupt(f"not UTF-8 text (byte {exc.start})", "") from exc
    except json.JSONDecodeError as exc:
        what = "empty" if not raw.strip() else f"not valid JSON ({exc})"
        raise corrupt(what, "") from exc
    try:
        return state_from_dict(data)
    except StateCorrupt as exc:
        raise corrupt(exc.message, exc.hint) from exc
