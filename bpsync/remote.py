"""What a refresh learned about one enrichment in BigPanda: input to the planner."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Remote:
    """What a refresh learned about one enrichment (None fields: not known)."""

    exists: bool
    active: bool | None = None
    version: int | None = None
    fields: tuple[dict[str, Any], ...] | None = None
    name: str | None = None
