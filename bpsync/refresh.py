"""Plan-time reads of BigPanda: what each known enrichment looks like now (drift detection),
and on v2.1 the rows of the smaller managed tables (row refresh, SPEC §7).

Runs before the planner, which only compares; nothing here writes to BigPanda or the state.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol, cast

from bpsync.bigpanda.models import Enrichment, ReadProgress, TableReader
from bpsync.errors import ApiError, AuthError, EnrichmentsMissing, NotFoundError
from bpsync.manifest import Manifest
from bpsync.remote import ROWS_NOT_READ, Remote, same_fields
from bpsync.state import State, TableState


class EnrichmentReader(Protocol):
    """The part of the BigPanda client a refresh uses."""

    def get_enrichment(self, enrichment_id: str) -> Enrichment: ...
    def list_enrichments(self) -> list[Enrichment]: ...


class RowReader(EnrichmentReader, TableReader, Protocol):
    """... and, for a row refresh, the paged table read."""

    @property
    def can_read_rows(self) -> bool: ...


@dataclass(frozen=True)
class RowRefresh:
    """How a refresh reads rows: tables of at most `max_rows` rows (0: none), into files in
    `directory` (the caller's temporary directory, alive while the plan is made)."""

    max_rows: int
    directory: Path
    progress: Callable[[str], ReadProgress | None] = lambda name: None


def refresh_remote(
    client: EnrichmentReader,
    state: State,
    manifests: list[Manifest],
    only: Collection[str],
    note: Callable[[str], None],
    *,
    rows: RowRefresh | None = None,
) -> dict[str, Remote]:
    """Read every known enrichment from BigPanda, for drift detection; with `rows`, also the
    rows of every managed table small enough (v2.1)."""
    ids: dict[str, str] = {}
    for ts in state.tables.values():
        if ts.enrichment_id and (not only or ts.name in only):
            ids[ts.name] = ts.enrichment_id
    for m in manifests:
        if m.enrichment_id and m.name not in ids:
            ids[m.name] = m.enrichment_id
    out: dict[str, Remote] = {}
    for name, eid in sorted(ids.items()):
        try:
            e = client.get_enrichment(eid)
        except NotFoundError:
            out[name] = Remote(exists=False)
            continue
        out[name] = Remote(
            exists=True,
            active=e.active,
            version=e.version,
            fields=tuple(e.fields) if e.fields else None,
            name=e.name,
        )
    _resolve_intents(client, state, only, out)
    if ids:
        note(f"Refreshed {len(ids)} enrichment(s) from BigPanda.")
    if rows is not None and rows.max_rows > 0:
        present = {m.name for m in manifests}
        read = 0
        reader = cast(RowReader, client)  # a row refresh is asked of the full client
        for name, remote in sorted(out.items()):
            managed = state.table(name)
            if name in present and managed is not None and remote.exists and remote.fields:
                try:
                    out[name] = _read_rows(reader, managed, remote, rows)
                except AuthError as e:
                    # A key without the read permission: plan as before, by version.
                    note(
                        f"Note: the token may not read tables' rows ({e.message}); the refresh "
                        "checks each enrichment's version only (--refresh-rows 0 stops trying)"
                    )
                    break
                except ApiError as e:
                    out[name] = replace(
                        remote,
                        rows_note=f"{ROWS_NOT_READ}: the read failed ({e.message}), so "
                        "BigPanda was checked by version only",
                    )
                read += out[name].table is not None
        if read:
            note(f"Read back the rows of {read} table(s) from BigPanda.")
    return out


def _intent(ts: TableState) -> bool:
    """The state records an intent to create an enrichment, and no id for it."""
    p = ts.pending
    return p is not None and not p.job_id and not p.enrichment_id


def _resolve_intents(
    client: EnrichmentReader, state: State, only: Collection[str], out: dict[str, Remote]
) -> None:
    """Find what each recorded intent to create became in BigPanda.

    Looked up by what the intent recorded (its name and fields), never by the manifest's
    current ones: the manifest may have been edited or deleted since the create was killed.
    """
    intents = [ts for ts in state.tables.values() if _intent(ts) and (not only or ts.name in only)]
    if not intents:
        return
    known: set[str] = set()
    for ts in state.tables.values():
        known.update(x for x in (ts.enrichment_id, ts.pending and ts.pending.enrichment_id) if x)
    listed = [e for e in client.list_enrichments() if e.active and e.id not in known]
    for ts in intents:
        assert ts.pending is not None
        schema = ts.pending.schema
        found = tuple(
            sorted(
                e.id
                for e in listed
                if e.name == schema.get("map_name")
                and same_fields(e.fields, schema.get("fields", []))
            )
        )
        current = out.get(ts.name, Remote(exists=False))
        out[ts.name] = replace(current, intent_found=found)


def _read_rows(client: RowReader, ts: TableState, remote: Remote, rows: RowRefresh) -> Remote:
    if not client.can_read_rows or not ts.enrichment_id or ts.rows is None:
        return remote
    if ts.rows > rows.max_rows:
        return replace(
            remote,
            rows_note=f"{ROWS_NOT_READ}: {ts.rows:,} rows is more than the row refresh's "
            f"budget ({rows.max_rows:,}, refresh.max_rows or --refresh-rows), so BigPanda was "
            "checked by version only",
        )
    columns = tuple(str(f.get("title", "")) for f in remote.fields or ())
    dest = rows.directory / f"{ts.name}.csv"
    read = client.read_table(
        ts.enrichment_id, columns, dest, table=ts.name, on_progress=rows.progress(ts.name)
    )
    return replace(remote, table=dest, table_rows=read.rows)


def check_found(
    state: State,
    remote: Mapping[str, Remote],
    *,
    where: str,
    token_env: str,
    allow_missing: bool,
) -> None:
    """Stop before planning when not one enrichment that state records (at least one) was
    found: the token most likely belongs to another organisation or region, and planning
    on would create every table there again (SPEC §5). `allow_missing`: they really were
    all deleted."""
    recorded = [n for n, ts in state.tables.items() if ts.enrichment_id and n in remote]
    if allow_missing or not recorded or any(remote[n].exists for n in recorded):
        return
    raise EnrichmentsMissing(
        f"none of the {len(recorded)} enrichment(s) that the state records exist at {where}: "
        "the token probably belongs to another organisation or region",
        hint=f"check {token_env} (and --env); if they really were all deleted in BigPanda, "
        "run again with --allow-missing to create them again",
    )
