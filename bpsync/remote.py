"""What a refresh learned about one enrichment in BigPanda: input to the planner."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROWS_NOT_READ = "rows not read back"  # a `rows_note`'s opening words (planner: plan warning)


@dataclass(frozen=True)
class Remote:
    """What a refresh learned about one enrichment (None fields: not known).

    `exists` is about the enrichment the state (or manifest) records; a table with only an
    intent to create has none, so it is False there. `intent_found` holds, for a table whose
    state records an intent to create with no id (a create killed in flight), the active
    enrichments unknown to the state that have the name and fields the intent recorded.
    """

    exists: bool
    active: bool | None = None
    version: int | None = None
    fields: tuple[dict[str, Any], ...] | None = None
    name: str | None = None
    intent_found: tuple[str, ...] | None = None
    # Row refresh (SPEC §7): BigPanda's rows, read back into a canonical CSV whose header is
    # `fields`' titles; None when they were not read (`rows_note` then says why, if it is
    # worth saying).
    table: Path | None = None
    table_rows: int | None = None
    rows_note: str | None = None


def same_fields(a: Iterable[Mapping[str, Any]], b: Iterable[Mapping[str, Any]]) -> bool:
    """Equal field lists, whatever their order and whether absent keys are given as null."""

    def by_title(fields: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
        return {f["title"]: {k: v for k, v in f.items() if v is not None} for f in fields}

    return by_title(a) == by_title(b)
