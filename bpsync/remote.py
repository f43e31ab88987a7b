"""What a refresh learned about one enrichment in BigPanda: input to the planner."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Remote:
    """What a refresh learned about one enrichment (None fields: not known)."""

    exists: bool
    active: bool | None = None
    version: int | None = None
    fields: tuple[dict[str, Any], ...] | None = None
    name: str | None = None
    # Row refresh (SPEC §7): BigPanda's rows, read back into a canonical CSV whose header is
    # `fields`' titles; None when they were not read (`rows_note` then says why, if it is
    # worth saying).
    table: Path | None = None
    table_rows: int | None = None
    rows_note: str | None = None
