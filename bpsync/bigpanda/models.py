"""BigPanda's enrichment API as values: what to create, what BigPanda returned, upload jobs.

Plain data, no transport: the applier and the planner's refresh are typed against these
without loading httpx (only `bpsync.bigpanda.client` imports it).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from bpsync.bigpanda import facts
from bpsync.errors import ApiError

BODY_EXCERPT_CHARS = 500  # how much of an error body a message shows
ProgressCallback = Callable[["Job", float], None]
# A table read's progress: (rows read so far, the announced total or None).
ReadProgress = Callable[[int, "int | None"], None]


@dataclass(frozen=True)
class EnrichmentSpec:
    """What to create. Each field is wire-shaped: title, type, optional tag_name/override."""

    name: str
    fields: tuple[dict[str, Any], ...]
    active: bool = True
    description: str | None = None  # v2.1 `note`; v1 has no such key
    when: Any = None  # v2.1 BPQL condition (string or object, §4.2); v1 has no such key


@dataclass(frozen=True)
class Enrichment:
    """An enrichment schema as BigPanda returned it, parsed from either version's shape."""

    id: str
    active: bool
    version: int | None
    name: str | None
    fields: tuple[dict[str, Any], ...]
    description: str | None
    when: Any
    raw: dict[str, Any] = field(repr=False, compare=False)


@dataclass(frozen=True)
class UploadReceipt:
    """Proof of an accepted upload: the job to wait on and exactly what was sent."""

    enrichment_id: str
    job_id: str
    job_url: str
    sha256: str
    bytes_sent: int


@dataclass(frozen=True)
class TableRead:
    """What a paged read of a table's rows (SPEC §7) wrote and what it took."""

    rows: int
    total: int | None  # the count BigPanda announced (None: it announced none)
    requests: int  # page requests sent, the failed attempt of a restart included
    restarts: int  # 1 when the total moved mid-read and the read started over


class TableReader(Protocol):
    """The paged table read of the BigPanda client (SPEC §7), as its users type it."""

    def read_table(
        self,
        enrichment_id: str,
        columns: Sequence[str],
        dest: Path,
        *,
        table: str,
        on_progress: ReadProgress | None = None,
    ) -> TableRead: ...


def cell_text(value: Any) -> str:
    """A cell of a read row as CSV text (SPEC §7): a string as it is, null as an empty cell,
    a number or boolean as its JSON text. A list (BigPanda splits `|` values into lists,
    api doc §5.2) is joined back with `|`; any other JSON value is written as JSON."""
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    if isinstance(value, list):
        return facts.ARRAY_DELIMITER.join(cell_text(v) for v in value)
    return json.dumps(value, ensure_ascii=False)


@dataclass(frozen=True)
class Job:
    """One poll of an upload job (§7: pending, started, done, failed)."""

    job_id: str
    status: str
    raw: dict[str, Any] = field(repr=False, compare=False)

    @property
    def reason(self) -> str | None:
        return facts.job_reason(self.raw) if self.status == facts.JOB_FAILED else None


def parse_enrichment(raw: Mapping[str, Any]) -> Enrichment:
    """Read either version's object (§4.1, §4.2); tolerate missing keys and a `data` wrapper."""
    obj: Mapping[str, Any] = raw
    if "id" not in obj and isinstance(obj.get("data"), dict):
        obj = obj["data"]
    if not obj.get("id"):
        raise ApiError(f"BigPanda returned an enrichment without an id: {excerpt(obj)}")
    config = obj.get("config") if isinstance(obj.get("config"), dict) else {}
    assert isinstance(config, dict)
    name = config.get("name", config.get("map_name"))
    fields = config.get("fields") if isinstance(config.get("fields"), list) else []
    assert isinstance(fields, list)
    version = obj.get("version")
    return Enrichment(
        id=str(obj["id"]),
        active=bool(obj.get("active", True)),
        version=version if isinstance(version, int) and not isinstance(version, bool) else None,
        name=str(name) if name is not None else None,
        fields=tuple(dict(f) for f in fields if isinstance(f, dict)),
        description=obj.get("note", obj.get("description")),
        when=obj.get("when"),
        raw=dict(obj),
    )


def excerpt(value: object, limit: int = BODY_EXCERPT_CHARS) -> str:
    """`value` on one line, cut to `limit` characters (for error messages)."""
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + f"… ({len(text) - limit} more chars)"
