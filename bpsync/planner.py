"""Builds the Plan from manifests, tables and state (SPEC §3). Reads; never writes.

Per table the work is: compare the desired schema with the applied one (deepdiff, over
small dicts), then the table with its snapshot. A table whose bytes hash to the applied
digest is `no-op` after one SHA-256 pass; only a changed table is scanned and diffed.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from bpsync.bigpanda import facts
from bpsync.config import Config
from bpsync.errors import InvalidInput, Problem
from bpsync.manifest import Manifest
from bpsync.plan import (
    ADD,
    CREATE,
    DEACTIVATE,
    NO_OP,
    REPLACE,
    UPDATE,
    UPDATE_IN_PLACE,
    Inputs,
    Plan,
    RowChange,
    RowChanges,
    SchemaChange,
    TablePlan,
    remote_findings,
)
from bpsync.remote import ROWS_NOT_READ, Remote
from bpsync.rowdiff import RowDiff, diff_table
from bpsync.state import State, StateBackend, TableState, state_to_dict
from bpsync.table import (
    FileDigests,
    ProblemSink,
    RowBlock,
    TableInfo,
    TableLayout,
    TableScan,
    file_stamp,
    is_gzip_path,
    parse_line,
    read_blocks,
    sha256_file,
)

# Below this many rows a create plan holds its rows sorted by key; above, it reads them
# from the CSV on demand in file order (five million row objects would take gigabytes).
MATERIALISE_ROWS = 200_000
METADATA_KEYS = ("map_name", "description", "active", "when")


@dataclass
class _Rows:
    info: TableInfo | None
    changes: RowChanges
    added: int = 0
    changed: int = 0
    removed: int = 0
    unchanged: int = 0
    old_rows: int | None = None
    old_columns: tuple[str, ...] = ()
    columns: tuple[str, ...] = ()
    baseline: str = "snapshot"
    same: bool = False  # the table equals the applied snapshot
    # Without a scan (`info` None): the digest and row count the table is known to have.
    known_sha256: str | None = None
    known_rows: int | None = None


class RowsMemo:
    """The rows of each table planned, for a second plan in the same command to reuse.

    `apply` plans before any request and again after the refresh; the rows of a table are
    the same both times unless its CSV, manifest layout or state entry moved, and reading
    them (a full scan and diff) is most of a plan's time. Whether the CSV moved is decided
    by the SHA-256 of its bytes (as the first plan's digest thread took it, and again for
    the second plan), after a cheap look at its size and modification time (ns): a table
    can never be reused as unchanged when its bytes differ.
    """

    def __init__(self) -> None:
        self._kept: dict[str, tuple[tuple[Any, ...], TableState | None, _Rows, dict[str, Any]]] = {}

    def rows(
        self,
        m: Manifest,
        ts: TableState | None,
        enrichment_id: str | None,
        sink: ProblemSink,
        compute: Callable[[], _Rows],
        digest: Callable[[Path], str] = sha256_file,
        read: _Read | None = None,
    ) -> _Rows:
        # `read`: BigPanda's rows read back by a refresh, the baseline when present.
        inputs = (m.csv_path, _stamp_or_none(m.csv_path), m.layout, enrichment_id is None, read)
        kept = self._kept.pop(m.name, None)
        if (
            kept is not None
            and kept[0][:-1] == inputs
            and kept[1] == ts
            and _digest_or_none(digest, m.csv_path) == kept[0][-1]
        ):
            # The fresh sink gets what the first read reported (warnings; an error would
            # have stopped the first plan).
            for name, value in kept[3].items():
                setattr(sink, name, list(value) if isinstance(value, list) else value)
            return kept[2]
        rows = compute()
        file_sha = _digest_or_none(digest, m.csv_path)  # the digest thread's, by now
        if file_sha is not None:
            self._kept[m.name] = ((*inputs, file_sha), ts, rows, _sink_fields(sink))
        return rows


def _digest_or_none(digest: Callable[[Path], str], path: Path) -> str | None:
    try:
        return digest(path)
    except OSError:
        return None


_SINK_FIELDS = ("problems", "errors", "warnings", "suppressed_errors", "suppressed_warnings")


def _sink_fields(sink: ProblemSink) -> dict[str, Any]:
    return {name: copy.copy(getattr(sink, name)) for name in _SINK_FIELDS}


def _stamp_or_none(path: Path) -> tuple[int, int] | None:
    try:
        return file_stamp(path)
    except OSError:
        return None


def make_plan(
    config: Config,
    manifests: list[Manifest],
    state: State,
    backend: StateBackend,
    *,
    only: Collection[str] = (),
    remote: Mapping[str, Remote] | None = None,
    now: str,
    digests: FileDigests | None = None,
    memo: RowsMemo | None = None,
) -> Plan:
    """The plan for `manifests` (already selected) and the deleted tables of `state`."""
    problems: list[Problem] = []
    tables: list[TablePlan] = []
    manifest_digests: dict[str, str] = {}
    digest = (digests or FileDigests()).get
    table_digests: dict[str, str] = {}
    for m in manifests:
        manifest_digests[m.display] = sha256_file(m.path)
        tp = _plan_table(
            m,
            state.table(m.name),
            backend,
            problems,
            (remote or {}).get(m.name),
            digest,
            config.api.version,
            memo,
        )
        if tp is not None:
            tables.append(tp)
            table_digests[m.csv_display] = tp.new_sha256 or ""
    present = {m.name for m in manifests}
    deleted = [
        ts
        for ts in state.tables.values()
        if ts.name not in present and (not only or ts.name in only)
    ]
    if only:
        unknown = set(only) - present - {ts.name for ts in deleted}
        if unknown:
            from bpsync.errors import UsageError

            raise UsageError(f"unknown table(s): {', '.join(sorted(unknown))}")
    tables += [_plan_deleted(ts, (remote or {}).get(ts.name)) for ts in deleted]
    if any(p.severity == "error" for p in problems):
        raise InvalidInput(problems)
    covered = sorted({t.name for t in tables})
    inputs = Inputs(
        manifest_digests,
        table_digests,
        _state_digest(state, covered),
        tuple(sorted(ts.name for ts in deleted)),
    )
    tables.sort(key=lambda t: t.name)
    endpoint = str(config.endpoint)
    return Plan(
        fingerprint=fingerprint(inputs, remote_findings(tables), config.environment, endpoint),
        tables=tuple(tables),
        inputs=inputs,
        api_version=config.api.version,
        refreshed=remote is not None,
        created_at=now,
        warnings=tuple(str(p) for p in problems if p.severity == "warning") + _unread_notes(tables),
        environment=config.environment,
        endpoint=endpoint,
    )


def _unread_notes(tables: list[TablePlan]) -> tuple[str, ...]:
    """Tables the row refresh did not read, said plan-wide: an unchanged table's notes are
    not rendered, and "checked by version only" must not go unseen (SPEC §7)."""
    return tuple(
        f"{t.name}: {n}"
        for t in tables
        if not t.has_changes
        for n in t.notes
        if n.startswith(ROWS_NOT_READ)
    )


def fingerprint(
    inputs: Inputs,
    findings: tuple[str, ...] = (),
    environment: str | None = None,
    endpoint: str = "",
) -> str:
    """Digest of the state planned against, of every manifest and table covered, of what
    the refresh found in BigPanda (drift; left-overs to adopt or deactivate): an apply bound
    to it refuses when BigPanda's side moved since the review (SPEC §2); and of where it
    applies (environment and endpoint): a plan reviewed for sandbox never approves an apply
    to prod (SPEC §8)."""
    doc: dict[str, Any] = {
        "environment": environment,
        "endpoint": endpoint,
        "manifests": dict(inputs.manifests),
        "tables": dict(inputs.tables),
        "state": inputs.state,
        "deleted": list(inputs.deleted),
    }
    if findings:  # without any, the digest is the one plans had before it covered them
        doc["remote"] = list(findings)
    raw = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    return "sha256:" + hashlib.sha256(raw).hexdigest()


def _state_digest(state: State, names: list[str]) -> str:
    tables = state_to_dict(state).get("tables", {})
    covered = {n: tables[n] for n in names if n in tables}
    raw = json.dumps(covered, sort_keys=True, separators=(",", ":")).encode()
    return "sha256:" + hashlib.sha256(raw).hexdigest()


# -- one table ----------------------------------------------------------------------------


def _plan_table(
    m: Manifest,
    ts: TableState | None,
    backend: StateBackend,
    problems: list[Problem],
    remote: Remote | None,
    digest: Callable[[Path], str],
    api_version: str = "v1",
    memo: RowsMemo | None = None,
) -> TablePlan | None:
    notes: list[str] = []
    ts, adopt = _settle_intent(ts, remote, notes)
    if adopt and ts and ts.enrichment_id == adopt:
        remote = None  # the refresh read no enrichment for the table: nothing to compare
    enrichment_id = ts.enrichment_id if ts and ts.enrichment_id else m.enrichment_id
    if ts and ts.enrichment_id and m.enrichment_id and m.enrichment_id != ts.enrichment_id:
        problems.append(
            Problem(
                m.display,
                None,
                None,
                f"enrichment_id {m.enrichment_id} differs from the one in state "
                f"({ts.enrichment_id})",
                "remove enrichment_id from the manifest, or `bpsync import` the other enrichment",
            )
        )
        return None
    old_schema = ts.schema if ts and ts.schema else None
    if old_schema is None and remote is not None and remote.exists and remote.fields is not None:
        old_schema = {"map_name": remote.name, "fields": list(remote.fields)}
    schema = m.schema()
    changes = schema_changes(old_schema, schema) if old_schema else ()
    changes = _renames_structural(changes, api_version, notes)
    sink = ProblemSink(m.csv_display)
    read = _read_back(m, ts, remote, notes)
    if memo is None:
        rows = _rows(m, ts, enrichment_id, backend, sink, digest, read)
    else:
        rows = memo.rows(
            m,
            ts,
            enrichment_id,
            sink,
            lambda: _rows(m, ts, enrichment_id, backend, sink, digest, read),
            digest,
            read,
        )
    problems += sink.finish()
    if rows.info is not None and not rows.info.ok:
        return None
    drift = _drift(ts, remote) if ts and ts.enrichment_id else ()
    if (
        rows.old_columns
        and rows.columns != rows.old_columns
        and sorted(rows.columns) == sorted(rows.old_columns)
    ):
        notes.append(
            "the columns are in a new order; rows are compared cell by title, and apply "
            "uploads the table in its new column order"
        )
    row_drift = _row_drift(m, ts, backend, read) if ts is not None and read else None
    if row_drift is not None:
        drift += (describe_row_drift(row_drift),)
    action = _action(m, enrichment_id, changes, rows, ts, remote, notes)
    retire = _leftover(ts, action, schema, notes)
    if ts and ts.pending and ts.pending.job_id:
        notes.append(
            f"an interrupted apply left job {ts.pending.job_id} pending; apply checks "
            "it before uploading again"
        )
    if action == CREATE:
        enrichment_id = None
    upload = action in (CREATE, UPDATE, REPLACE)
    return _table_plan(
        _Table(m.name, m.display, m.csv_display, m.key_titles, m.max_delete_fraction),
        ts,
        action,
        enrichment_id,
        schema,
        old_schema,
        changes,
        drift,
        tuple(notes),
        rows,
        upload,
        retire,
        adopt,
        row_drift,
    )


@dataclass(frozen=True)
class _Read:
    """BigPanda's rows as a row refresh read them (SPEC §7)."""

    path: Path
    sha256: str
    rows: int


def _read_back(
    m: Manifest, ts: TableState | None, remote: Remote | None, notes: list[str]
) -> _Read | None:
    """The rows read back, when they can stand in for the snapshot as the baseline."""
    if remote is None or ts is None:
        return None
    if remote.rows_note:
        notes.append(remote.rows_note)
    if remote.table is None:
        return None
    titles = tuple(str(f.get("title")) for f in remote.fields or ())
    if titles != m.layout.titles:
        notes.append(
            "BigPanda's rows were read back but not compared: its columns "
            f"({', '.join(titles)}) differ from the manifest's"
        )
        return None
    return _Read(remote.table, sha256_file(remote.table), remote.table_rows or 0)


ROW_DRIFT_KEYS = 20  # keys of drifted rows a plan lists per table (JSON); the text shows 3


def _row_drift(
    m: Manifest, ts: TableState, backend: StateBackend, read: _Read
) -> dict[str, Any] | None:
    """How BigPanda's rows differ from the snapshot, or None when they do not (or when no
    snapshot is there to compare with)."""
    sha = ts.sha256
    if sha is None or sha == read.sha256 or not backend.has_snapshot(sha):
        return None
    sink = ProblemSink(str(read.path))
    d = diff_table(read.path, m.layout, sink, lambda: backend.open_snapshot(sha, table=m.name))
    keys = [
        {"op": c.op, "key": dict(zip(m.key_titles, c.key, strict=True))}
        for c in d.changes[:ROW_DRIFT_KEYS]
    ]
    if not d.info.ok and not (d.added or d.changed or d.removed):
        # BigPanda's table breaks a CSV rule (an emptied table, duplicate keys): it differs,
        # but not row by row.
        return {"added": 0, "changed": 0, "removed": 0, "keys": [], "comparable": False}
    return {"added": d.added, "changed": d.changed, "removed": d.removed, "keys": keys}


def describe_row_drift(row_drift: Mapping[str, Any]) -> str:
    """The drift line: "3 rows changed in BigPanda outside bpsync: 1 added, … (e.g. …)"."""
    if row_drift.get("comparable") is False:
        return (
            "the rows in BigPanda were changed outside bpsync (they cannot be compared row by row)"
        )
    a, c, r = row_drift["added"], row_drift["changed"], row_drift["removed"]
    n = a + c + r
    keys = [", ".join(f"{k}={v}" for k, v in item["key"].items()) for item in row_drift["keys"][:3]]
    more = f" (e.g. {'; '.join(keys)}{'; …' if n > len(keys) else ''})" if keys else ""
    return (
        f"{n} row{'' if n == 1 else 's'} changed in BigPanda outside bpsync: {a} added, "
        f"{c} changed, {r} removed{more}; the plan below is against BigPanda's rows"
    )


def _settle_intent(
    ts: TableState | None, remote: Remote | None, notes: list[str]
) -> tuple[TableState | None, str | None]:
    """The table's state once a recorded intent to create is resolved (SPEC §5).

    A create killed while its request was in flight leaves an intent with no id. What it
    became is looked up in BigPanda by the name and fields the intent recorded (the refresh
    does that), so the plan starts from the truth whatever the manifest says now: the
    enrichment found is adopted (and then updated, replaced or deactivated like any other);
    none found means nothing was created.
    """
    p = ts.pending if ts else None
    if ts is None or p is None or p.job_id or p.enrichment_id:
        return ts, None
    found = remote.intent_found if remote else None
    if found is None:
        notes.append(
            "an earlier apply stopped while creating the enrichment; apply looks it up in "
            "BigPanda (by the name and fields it recorded) and adopts it rather than "
            "creating another"
        )
        return ts, None
    if len(found) > 1:
        notes.append(
            f"an earlier apply stopped while creating the enrichment, and BigPanda has "
            f"{len(found)} active enrichments unknown to the state with its name and fields "
            f"({', '.join(found)}); apply refuses to guess: `bpsync import` the right one"
        )
        return ts, None
    if not found:
        notes.append(
            "an earlier apply stopped while creating the enrichment; BigPanda has none with "
            "the name and fields it recorded, so nothing was created"
        )
        return replace(ts, pending=None), None
    eid = found[0]
    notes.append(
        f"enrichment {eid} was created by an interrupted apply (found in BigPanda by the "
        f"name {p.schema.get('map_name')!r} and the fields it recorded); apply adopts it"
    )
    return adopted(ts, eid), eid


def adopted(ts: TableState, eid: str) -> TableState:
    """`ts` with the enrichment its intent to create made, `eid`, recorded."""
    p = ts.pending
    assert p is not None
    if p.kind == REPLACE and ts.enrichment_id:
        return replace(ts, pending=replace(p, enrichment_id=eid))
    return TableState(ts.name, eid, ts.api_version, p.schema)


def _leftover(
    ts: TableState | None, action: str, schema: Mapping[str, Any] | None, notes: list[str]
) -> tuple[str, ...]:
    """The new enrichment of a replace that did not finish, unless this plan reuses it.

    A replace whose job failed, or that was killed before its upload, leaves its new
    enrichment recorded in state. A plan that replaces with the same schema uploads to it;
    any other plan (manifest restored, changed again, or deleted) deactivates it, so it is
    never left active and forgotten.
    """
    p = ts.pending if ts else None
    if p is None or p.job_id or not p.enrichment_id:
        return ()
    if action == REPLACE and schema is not None and p.schema == dict(schema):
        notes.append(
            f"enrichment {p.enrichment_id} was created for this replace by an earlier "
            "apply; apply uploads to it rather than creating another"
        )
        return ()
    notes.append(
        f"enrichment {p.enrichment_id}, created by an earlier replace that did not finish, "
        "is not used by this plan: apply deactivates it"
    )
    return (p.enrichment_id,)


@dataclass(frozen=True)
class _Table:
    """Which table a plan is for: from its manifest, or from the state once it is deleted."""

    name: str
    manifest: str | None
    csv: str | None
    key_columns: tuple[str, ...]
    max_delete_fraction: float


def _table_plan(
    table: _Table,
    ts: TableState | None,
    action: str,
    enrichment_id: str | None,
    schema: Mapping[str, Any] | None,
    old_schema: Mapping[str, Any] | None,
    changes: tuple[SchemaChange, ...],
    drift: tuple[str, ...],
    notes: tuple[str, ...],
    rows: _Rows,
    upload: bool,
    retire: tuple[str, ...] = (),
    adopt: str | None = None,
    row_drift: Mapping[str, Any] | None = None,
) -> TablePlan:
    """The one place a TablePlan is assembled from the planner's findings."""
    old_rows = rows.old_rows
    mass = bool(
        rows.baseline in ("snapshot", "bigpanda")
        and old_rows
        and rows.removed > table.max_delete_fraction * old_rows
    )
    info = rows.info
    return TablePlan(
        name=table.name,
        action=action,
        enrichment_id=enrichment_id,
        manifest=table.manifest,
        csv=table.csv,
        columns=rows.columns,
        old_columns=rows.old_columns,
        key_columns=table.key_columns,
        schema=schema,
        old_schema=old_schema,
        schema_changes=changes,
        drift=drift,
        notes=notes,
        rows_added=rows.added,
        rows_changed=rows.changed,
        rows_removed=rows.removed,
        rows_unchanged=rows.unchanged,
        row_changes=rows.changes,
        baseline=rows.baseline,
        new_sha256=info.canonical_sha256 if info else rows.known_sha256,
        new_rows=info.rows if info else rows.known_rows,
        old_sha256=ts.sha256 if ts else None,
        old_rows=old_rows,
        max_delete_fraction=table.max_delete_fraction,
        mass_delete=mass,
        upload=upload,
        retire=retire,
        adopt=adopt,
        row_drift=row_drift,
    )


def _action(
    m: Manifest,
    enrichment_id: str | None,
    changes: tuple[SchemaChange, ...],
    rows: _Rows,
    ts: TableState | None,
    remote: Remote | None,
    notes: list[str],
) -> str:
    if enrichment_id is None:
        return CREATE
    if remote is not None and not remote.exists:
        notes.append(
            f"enrichment {enrichment_id} no longer exists in BigPanda; apply creates a new one"
        )
        return CREATE
    if any(c.structural for c in changes):
        return REPLACE
    if (
        remote is not None
        and remote.fields is not None
        and ts
        and ts.schema
        and _field_map(list(remote.fields)) != _field_map(ts.schema.get("fields", []))
    ):
        notes.append("the remote schema was changed outside bpsync; apply replaces it")
        return REPLACE
    if not rows.same:
        return UPDATE
    if (
        ts
        and remote
        and remote.version is not None
        and ts.remote_version is not None
        and remote.version != ts.remote_version
    ):
        notes.append("the remote table was changed outside bpsync; apply re-uploads it")
        return UPDATE
    if changes or (remote is not None and remote.active is not None and remote.active != m.active):
        return UPDATE_IN_PLACE
    return NO_OP


def _drift(ts: TableState, remote: Remote | None) -> tuple[str, ...]:
    if remote is None:
        return ()
    eid = ts.enrichment_id
    if not remote.exists:
        return (f"enrichment {eid} is missing in BigPanda (deleted outside bpsync?)",)
    out = []
    if remote.active is False and ts.schema.get("active", True):
        out.append(f"enrichment {eid} was deactivated outside bpsync")
    if (
        remote.version is not None
        and ts.remote_version is not None
        and remote.version != ts.remote_version
    ):
        out.append(
            f"enrichment {eid} moved from version {ts.remote_version} to "
            f"{remote.version} since the last apply (changed outside bpsync)"
        )
    if remote.fields is not None and _field_map(list(remote.fields)) != _field_map(
        ts.schema.get("fields", [])
    ):
        out.append(f"the fields of enrichment {eid} differ from the last applied schema")
    return tuple(out)


def _plan_deleted(ts: TableState, remote: Remote | None) -> TablePlan:
    notes = ["manifest deleted: the enrichment is deactivated (its rows stay in BigPanda, unused)"]
    settled, adopt = _settle_intent(ts, remote, notes)
    ts = settled or ts
    retire = _leftover(ts, DEACTIVATE, None, notes)
    old_columns = tuple(f["title"] for f in ts.schema.get("fields", []))
    keys = tuple(f["title"] for f in ts.schema.get("fields", []) if f.get("type") == "query_tag")
    rows = _Rows(
        None,
        RowChanges(),
        unchanged=ts.rows or 0,
        old_rows=ts.rows,
        old_columns=old_columns,
        columns=old_columns,
    )
    return _table_plan(
        _Table(ts.name, None, None, keys, 1.0),
        ts,
        DEACTIVATE,
        ts.enrichment_id,
        None,
        ts.schema,
        (),
        _drift(ts, remote) if ts.enrichment_id and not adopt else (),
        tuple(notes),
        rows,
        False,
        retire,
        adopt,
    )


# -- rows ---------------------------------------------------------------------------------


def _rows(
    m: Manifest,
    ts: TableState | None,
    enrichment_id: str | None,
    backend: StateBackend,
    sink: ProblemSink,
    digest: Callable[[Path], str],
    read: _Read | None = None,
) -> _Rows:
    layout = m.layout
    if read is not None:
        return _against_bigpanda(m, read, sink, digest)
    if ts is not None and ts.sha256:
        applied_titles = [f.get("title") for f in ts.schema.get("fields", [])]
        same_keys = _applied_keys(ts) == m.key_titles
        # (A .csv.gz never holds the canonical bytes themselves: it is always read.)
        plain = not is_gzip_path(m.csv_path)
        same_columns = list(layout.titles) == applied_titles and same_keys
        if same_columns and plain and digest(m.csv_path) == ts.sha256:
            # Byte-identical to what was applied, and validated then against the same
            # columns and keys: nothing to read. (New columns need the full check of the
            # header; other keys, the duplicate check under them.)
            return _Rows(
                None,
                RowChanges(),
                unchanged=ts.rows or 0,
                old_rows=ts.rows,
                old_columns=layout.titles,
                columns=layout.titles,
                same=True,
                known_sha256=ts.sha256,
                known_rows=ts.rows,
            )
        if backend.has_snapshot(ts.sha256):
            return _diffed(m, ts, backend, sink, digest)
    # No snapshot: a new table, or an adopted/interrupted one whose remote content is unknown.
    return _all_added(m, layout, sink, "none" if enrichment_id is None else "unknown", digest)


def _diffed(
    m: Manifest,
    ts: TableState,
    backend: StateBackend,
    sink: ProblemSink,
    digest: Callable[[Path], str],
) -> _Rows:
    sha = ts.sha256
    assert sha is not None
    d = diff_table(
        m.csv_path,
        m.layout,
        sink,
        lambda: backend.open_snapshot(sha, table=m.name),
        trusted=True,  # applied rows, validated then; their header is checked against ours
        old_keys_unique=_applied_keys(ts) == m.key_titles,
        file_digest=lambda: digest(m.csv_path),
    )
    return _rows_of(d, sha, "snapshot")


def _applied_keys(ts: TableState) -> tuple[str, ...]:
    """The key columns the table was applied with: its rows' keys are unique under these."""
    fields = ts.schema.get("fields", [])
    return tuple(f.get("title") for f in fields if f.get("type") == facts.QUERY_TAG)


def _rows_of(d: RowDiff, baseline_sha256: str, baseline: str) -> _Rows:
    """A diff's counts and changes; `same`: the table equals its baseline byte for byte."""
    return _Rows(
        d.info,
        RowChanges(d.changes),
        d.added,
        d.changed,
        d.removed,
        d.unchanged,
        d.old_rows,
        d.old_columns,
        d.info.columns,
        baseline=baseline,
        same=d.info.ok and d.info.canonical_sha256 == baseline_sha256,
    )


def _against_bigpanda(
    m: Manifest, read: _Read, sink: ProblemSink, digest: Callable[[Path], str]
) -> _Rows:
    """The row diff against BigPanda's rows read back (SPEC §7): what apply changes there."""
    titles = m.layout.titles
    if digest(m.csv_path) == read.sha256:
        return _Rows(
            None,
            RowChanges(),
            unchanged=read.rows,
            old_rows=read.rows,
            old_columns=titles,
            columns=titles,
            baseline="bigpanda",
            same=True,
            known_sha256=read.sha256,
            known_rows=read.rows,
        )
    d = diff_table(
        m.csv_path,
        m.layout,
        sink,
        lambda: read.path.open("rb"),
        file_digest=lambda: digest(m.csv_path),
    )
    return _rows_of(d, read.sha256, "bigpanda")


def _all_added(
    m: Manifest,
    layout: TableLayout,
    sink: ProblemSink,
    baseline: str,
    digest: Callable[[Path], str] | None = None,
) -> _Rows:
    path = m.csv_path
    stamp = file_stamp(path)
    whole = (lambda: digest(path)) if digest is not None else None
    scan = TableScan(path, layout, sink, track_order=True, file_digest=whole)
    info = scan.run()
    if not info.ok:
        return _Rows(info, RowChanges(), baseline=baseline)
    columns = info.columns
    keys = tuple(columns.index(layout.titles[k]) for k in layout.key_indexes)
    canonical = info.is_canonical

    def blocks() -> Iterator[RowBlock]:
        # The file's own lines when they were canonical and the file has not moved since.
        return _add_blocks(path, layout, canonical and file_stamp(path) == stamp)

    def read() -> Iterator[RowChange]:
        return _iter_rows(blocks(), keys)

    if info.rows <= MATERIALISE_ROWS:
        changes = RowChanges(sorted(read(), key=lambda c: c.key))
    else:
        changes = RowChanges(
            lazy=read, count=info.rows, ordered=scan.keys_ascending, add_blocks=blocks
        )
    return _Rows(info, changes, added=info.rows, old_rows=None, columns=columns, baseline=baseline)


def _add_blocks(path: Path, layout: TableLayout, canonical: bool) -> Iterator[RowBlock]:
    """The data rows of a table the plan validated, block by block, pulled as read: a
    500 MB table is never held whole."""
    if not canonical:
        yield from TableScan(path, layout, ProblemSink(str(path)), keys="off").row_blocks()
        return
    # Canonical bytes: every line is a row as it will be uploaded; no checks to repeat.
    first = 1
    with path.open("rb") as f:
        for _offset, raw, _last in read_blocks(f):
            lines = raw.decode("utf-8").split("\n")
            lines.pop()  # a canonical file ends with a newline
            if first == 1:
                del lines[0]  # the header
                first = 2
            yield first, lines
            first += len(lines)


def _iter_rows(blocks: Iterator[RowBlock], keys: tuple[int, ...]) -> Iterator[RowChange]:
    for first, lines in blocks:
        for i, line in enumerate(lines, first):
            cells = tuple(parse_line(line))
            yield RowChange(ADD, tuple(cells[k] for k in keys), None, cells, i)


# -- schema -------------------------------------------------------------------------------


def _renames_structural(
    changes: tuple[SchemaChange, ...], api_version: str, notes: list[str]
) -> tuple[SchemaChange, ...]:
    """SPEC §3: where a schema PATCH ignores `config` (v2.1, api doc §15.2) a map_name change
    cannot be made in place, so it needs a new enrichment (replace), and the plan says why."""
    if facts.patch_applies(api_version, "config"):
        return changes
    out = []
    for c in changes:
        if c.subject == "map_name" and not c.structural:
            c = SchemaChange(c.subject, c.detail, True)
            notes.append(
                f"map_name cannot change in place on API {api_version} (BigPanda ignores "
                "config.name in a schema PATCH): apply creates a new enrichment with the new "
                "name, uploads the table to it and deactivates the old one"
            )
        out.append(c)
    return tuple(out)


_FIELD_KEYS = ("type", "tag_name", "override_existing")  # what a manifest's field manages


def _field_map(fields: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Fields by title, in the form a manifest writes them: only the keys bpsync manages, no
    null values, no `tag_name` equal to the title (the same tag), so BigPanda's own spelling
    of an equal field (as `import --generate` reads it) compares equal."""
    out: dict[str, dict[str, Any]] = {}
    for f in fields:
        title = f["title"]
        out[title] = {
            k: f[k]
            for k in _FIELD_KEYS
            if f.get(k) is not None and not (k == "tag_name" and f[k] == title)
        }
    return out


def schema_changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> tuple[SchemaChange, ...]:
    """Schema differences in words; any change to the fields is structural (SPEC §3)."""
    if dict(old) == dict(new):
        return ()
    from deepdiff import DeepDiff  # ~50 ms to import; only when a schema really changed

    out: list[SchemaChange] = []
    for key in METADATA_KEYS:
        if key in old and old.get(key) != new.get(key):
            out.append(SchemaChange(key, f"{_show(old.get(key))} → {_show(new.get(key))}", False))
    before = _field_map(list(old.get("fields", [])))
    after = _field_map(list(new.get("fields", [])))
    diff = DeepDiff(before, after, ignore_order=True, verbose_level=2)
    for path, value in sorted(diff.get("dictionary_item_added", {}).items()):
        out.append(_field_change(path, "added", value))
    for path, value in sorted(diff.get("dictionary_item_removed", {}).items()):
        out.append(_field_change(path, "removed", value))
    for path, change in sorted(diff.get("values_changed", {}).items()):
        out.append(
            _field_change(
                path, f"{_show(change['old_value'])} → {_show(change['new_value'])}", None
            )
        )
    for path, change in sorted(diff.get("type_changes", {}).items()):
        out.append(
            _field_change(
                path, f"{_show(change['old_value'])} → {_show(change['new_value'])}", None
            )
        )
    return tuple(out)


def _field_change(path: str, what: str, value: Any) -> SchemaChange:
    # deepdiff paths look like root['owner'] or root['owner']['tag_name'].
    parts = [p.strip("'\"") for p in path.removeprefix("root").strip("[]").split("][")]
    subject = f'field "{parts[0]}"'
    if len(parts) == 1:
        detail = what if value is None else f"{what} ({_describe_field(value)})"
    else:
        detail = f"{parts[1]} {what}" if value is None else f"{parts[1]} {what}: {_show(value)}"
    return SchemaChange(subject, detail, True)


def _describe_field(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k} {_show(v)}" for k, v in sorted(value.items()))
    return _show(value)


def _show(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    return str(value)
