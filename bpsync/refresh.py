"""Plan-time reads of BigPanda: what each known enrichment looks like now (drift detection).

Runs before the planner, which only compares; nothing here writes to BigPanda or the state.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import replace
from typing import Protocol

from bpsync.bigpanda.models import Enrichment
from bpsync.errors import EnrichmentsMissing, NotFoundError
from bpsync.manifest import Manifest
from bpsync.remote import Remote, same_fields
from bpsync.state import State, TableState


class EnrichmentReader(Protocol):
    """The part of the BigPanda client a refresh uses."""

    def get_enrichment(self, enrichment_id: str) -> Enrichment: ...
    def list_enrichments(self) -> list[Enrichment]: ...


def refresh_remote(
    client: EnrichmentReader,
    state: State,
    manifests: list[Manifest],
    only: Collection[str],
    note: Callable[[str], None],
) -> dict[str, Remote]:
    """Read every known enrichment from BigPanda, for drift detection."""
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
