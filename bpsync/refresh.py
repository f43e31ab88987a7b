"""Plan-time reads of BigPanda: what each known enrichment looks like now (drift detection).

Runs before the planner, which only compares; nothing here writes to BigPanda or the state.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Protocol

from bpsync.bigpanda.models import Enrichment
from bpsync.errors import NotFoundError
from bpsync.manifest import Manifest
from bpsync.remote import Remote
from bpsync.state import State


class EnrichmentReader(Protocol):
    """The part of the BigPanda client a refresh uses."""

    def get_enrichment(self, enrichment_id: str) -> Enrichment: ...


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
    if ids:
        note(f"Refreshed {len(ids)} enrichment(s) from BigPanda.")
    return out
