"""The plan: an immutable value that renderers and the applier only read (SPEC §2, §3)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import MISSING, dataclass, field, fields
from functools import partial
from itertools import repeat
from typing import Any, NamedTuple, cast, overload

FORMAT_VERSION = "1"

CREATE = "create"
UPDATE = "update"
REPLACE = "replace"
UPDATE_IN_PLACE = "update-in-place"
DEACTIVATE = "deactivate"
NO_OP = "no-op"
ACTIONS = (CREATE, UPDATE, REPLACE, UPDATE_IN_PLACE, DEACTIVATE, NO_OP)

ADD = "add"
CHANGE = "change"
REMOVE = "remove"


class RowChange(NamedTuple):
    """One row's change. A named tuple, not a dataclass: a half-changed table makes millions
    of them, and a tuple is built in C (`tuple.__new__` over zipped columns, see `rowdiff`)
    at a tenth of a frozen dataclass's cost; it is immutable all the same."""

    op: str  # add | change | remove
    key: tuple[str, ...]
    before: tuple[str, ...] | None  # cells in the snapshot's column order
    after: tuple[str, ...] | None  # cells in the new table's column order
    line: int  # line in the new CSV; for removals, in the snapshot
    old_line: int | None = None  # line in the snapshot (change, remove)


Cells = tuple[str, ...]


class ChangeColumns(Sequence[RowChange]):
    """Row changes held column by column, in key order: each row's old and new canonical
    line, not its cells, and no object per change until one is read.

    A plan of half a table changed holds millions of changes; as `RowChange`s with their
    cells split they took ~1 KB each and most of the plan's time to build. Here a change is
    its two lines (already read), its key and line numbers; cells are split a batch at a
    time when the changes are iterated, and the digest (`render.digest`) reads the columns
    themselves. `split` turns canonical lines into their cells (`rowdiff` gives it).
    Immutable: built once by the diff, then only read.
    """

    BATCH = 4096

    def __init__(
        self,
        ops: list[str],
        keys: list[Cells],
        before: list[str | None],
        after: list[str | None],
        lines: list[int],
        old_lines: list[int | None],
        split: Callable[[list[str]], list[Cells]],
    ) -> None:
        self.ops, self.keys, self.before, self.after = ops, keys, before, after
        self.lines, self.old_lines, self.split = lines, old_lines, split

    def __len__(self) -> int:
        return len(self.ops)

    @overload
    def __getitem__(self, at: int) -> RowChange: ...

    @overload
    def __getitem__(self, at: slice) -> list[RowChange]: ...

    def __getitem__(self, at: int | slice) -> RowChange | list[RowChange]:
        if isinstance(at, slice):
            return self.rows(range(len(self))[at])
        (rc,) = self.rows([range(len(self))[at]])
        return rc

    def __iter__(self) -> Iterator[RowChange]:
        for i in range(0, len(self), self.BATCH):
            yield from self.rows(range(i, min(i + self.BATCH, len(self))))

    def rows(self, at: Sequence[int]) -> list[RowChange]:
        """The row changes at these positions, their cells split."""
        pick = partial(map, list.__getitem__)
        return list(
            map(
                _row_change,
                zip(
                    pick(repeat(self.ops), at),
                    pick(repeat(self.keys), at),
                    self.cells(list(pick(repeat(self.before), at))),
                    self.cells(list(pick(repeat(self.after), at))),
                    pick(repeat(self.lines), at),
                    pick(repeat(self.old_lines), at),
                    strict=True,
                ),
            )
        )

    def cells(self, lines: list[str | None]) -> list[Cells | None]:
        """Each line's cells (None for None), split in one call."""
        if None not in lines:
            return list(self.split(cast(list[str], lines)))
        split = iter(self.split([x for x in lines if x is not None]))
        return [None if x is None else next(split) for x in lines]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Sequence) or isinstance(other, str):
            return NotImplemented
        return len(self) == len(other) and tuple(self) == tuple(other)

    def __hash__(self) -> int:
        return hash(tuple(self))  # as the tuple it equals

    def __repr__(self) -> str:
        return f"ChangeColumns({len(self)} changes)"


# A RowChange from a tuple of its fields, in C (no Python frame per row).
_row_change = cast(Callable[[tuple[object, ...]], RowChange], partial(tuple.__new__, RowChange))


class RowChanges:
    """The row changes of one table: a tuple, or all rows of a CSV read lazily.

    A first apply of a 500 MB table adds five million rows; holding them as objects would
    take gigabytes, so `create` plans keep only where the rows are and read them on demand.
    """

    def __init__(
        self,
        changes: Iterable[RowChange] = (),
        *,
        lazy: Any = None,
        count: int = 0,
        ordered: bool = False,
        add_blocks: Any = None,
    ):
        # Changes held by column (a diff's): read lazily, in key order, and the digest may
        # read the columns themselves.
        self.columns = changes if isinstance(changes, ChangeColumns) else None
        if self.columns is not None:
            lazy, count, ordered, changes = self.columns.__iter__, len(self.columns), True, ()
        self._changes = tuple(changes)
        self._lazy = lazy  # a callable returning an iterator of RowChange
        self._count = count if lazy is not None else len(self._changes)
        # The lazy changes come in `change_order` already (a new table whose rows are in
        # key order): renderings take them as they come, with no sort.
        self.ordered = ordered and lazy is not None
        # For lazy changes that are all `add`s: a callable returning the rows as blocks of
        # (line of the first, canonical lines), so a rendering can skip RowChange objects.
        self.add_blocks = add_blocks if lazy is not None else None

    def __iter__(self) -> Iterator[RowChange]:
        if self._lazy is not None:
            return iter(self._lazy())
        return iter(self._changes)

    def __len__(self) -> int:
        return self._count

    @property
    def in_memory(self) -> bool:
        """Held as objects: sorting them costs memory for references only, not a re-read."""
        return self._lazy is None

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RowChanges) and list(self) == list(other)

    def __hash__(self) -> int:
        return hash(self._count)  # equal by rows, whichever way they are held

    def __repr__(self) -> str:
        return f"RowChanges({self._count} changes)"


@dataclass(frozen=True)
class SchemaChange:
    subject: str  # e.g. 'field "owner"' or 'map_name'
    detail: str  # e.g. "override_existing false → true"
    structural: bool  # needs a new enrichment (replace)

    def __str__(self) -> str:
        return f"{self.subject}: {self.detail}"


@dataclass(frozen=True)
class TablePlan:
    name: str
    action: str
    enrichment_id: str | None
    manifest: str | None  # display path of the manifest (None for deactivate)
    csv: str | None  # display path of the CSV
    columns: tuple[str, ...]  # column titles of the new table (or of the snapshot)
    old_columns: tuple[str, ...]
    key_columns: tuple[str, ...]
    schema: Mapping[str, Any] | None  # desired schema (None for deactivate)
    old_schema: Mapping[str, Any] | None  # schema as last applied
    schema_changes: tuple[SchemaChange, ...]
    drift: tuple[str, ...]
    notes: tuple[str, ...]
    rows_added: int
    rows_changed: int
    rows_removed: int
    rows_unchanged: int
    row_changes: RowChanges
    # "snapshot" | "bigpanda" (rows read back, SPEC §7) | "none" (create) | "unknown"
    # (adopted, content unknown)
    baseline: str
    new_sha256: str | None
    new_rows: int | None
    old_sha256: str | None
    old_rows: int | None
    max_delete_fraction: float
    mass_delete: bool
    upload: bool  # apply uploads the table
    # Enrichments an interrupted apply created for this table that this plan does not use:
    # apply deactivates them first (a failed or killed replace, a create whose id was lost).
    retire: tuple[str, ...] = ()
    # An enrichment an interrupted create made but never recorded, found in BigPanda by the
    # name and fields its recorded intent holds: apply records it as the table's first.
    adopt: str | None = None
    # Row refresh (SPEC §7): BigPanda's rows relative to the snapshot, when they differ:
    # {"added", "changed", "removed", "keys": [{"op", "key": {title: value}}, …] (bounded)}.
    row_drift: Mapping[str, Any] | None = None

    @property
    def has_changes(self) -> bool:
        return self.action != NO_OP or bool(self.retire)

    @property
    def deactivates(self) -> bool:
        """The manifest sets `active: false` on an active enrichment: alerts stop being
        enriched, as with a deactivate (SPEC §3)."""
        if self.action in (CREATE, DEACTIVATE, NO_OP) or self.schema is None:
            return False
        was = True if self.old_schema is None else self.old_schema.get("active", True)
        return self.schema.get("active", True) is False and was is not False

    @property
    def destructive(self) -> bool:
        return (
            self.rows_removed > 0
            or self.action in (REPLACE, DEACTIVATE)
            or self.mass_delete
            or self.deactivates
        )

    def counts(self) -> dict[str, int]:
        return {
            "added": self.rows_added,
            "changed": self.rows_changed,
            "removed": self.rows_removed,
            "unchanged": self.rows_unchanged,
        }

    # -- as a plain record (plan files) ----------------------------------------------------
    # Generic over the fields so a new field needs no code here: only the three fields that
    # are not JSON-shaped (schema_changes, row_changes, mappings) are converted.

    def to_record(self) -> dict[str, Any]:
        """Every field as JSON-ready data; `row_changes` becomes `row_change_count`."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "row_changes":
                out["row_change_count"] = len(value)
            elif f.name == "schema_changes":
                out[f.name] = [[c.subject, c.detail, c.structural] for c in value]
            elif isinstance(value, tuple):
                out[f.name] = list(value)
            elif isinstance(value, Mapping):
                out[f.name] = dict(value)
            else:
                out[f.name] = value
        return out

    @classmethod
    def from_record(cls, record: Mapping[str, Any], row_changes: RowChanges) -> TablePlan:
        """The TablePlan `to_record` described, with its row changes read separately."""
        values: dict[str, Any] = {}
        for f in fields(cls):
            if f.name not in record and f.default is not MISSING:
                continue  # a plan file written before this field existed
            if f.name == "row_changes":
                values[f.name] = row_changes
            elif f.name == "schema_changes":
                values[f.name] = tuple(SchemaChange(s, d, bool(x)) for s, d, x in record[f.name])
            elif f.name not in record and f.default is not MISSING:
                values[f.name] = f.default  # a plan file written before the field existed
            elif isinstance(record[f.name], list):
                values[f.name] = tuple(record[f.name])
            else:
                values[f.name] = record[f.name]
        return cls(**values)


def remote_findings(tables: Iterable[TablePlan]) -> tuple[str, ...]:
    """What the refresh found on BigPanda's side, per table, as the plan shows it: drift,
    and what an interrupted apply left there (adopted or deactivated). Part of what a
    reviewer approves, so part of the fingerprint; generic over `drift`, so every kind of
    drift a refresh reports (enrichment objects, rows read back) is covered."""
    out: list[str] = []
    for t in tables:
        out += [f"{t.name}: {d}" for d in t.drift]
        if t.adopt:
            out.append(f"{t.name}: adopts enrichment {t.adopt}, left by an interrupted apply")
        out += [f"{t.name}: deactivates left-over enrichment {e}" for e in t.retire]
    return tuple(sorted(out))


@dataclass(frozen=True)
class Inputs:
    """Digests of everything a plan was made from, to refuse a stale saved plan."""

    manifests: Mapping[str, str]  # display path -> sha256 of the file
    tables: Mapping[str, str]  # display path -> canonical sha256
    state: str  # digest of the state entries of the covered tables
    deleted: tuple[str, ...] = ()  # tables in state whose manifest is gone


@dataclass(frozen=True)
class Plan:
    fingerprint: str
    tables: tuple[TablePlan, ...]
    inputs: Inputs
    api_version: str
    refreshed: bool
    created_at: str
    warnings: tuple[str, ...] = field(default=())
    # The environment of bpsync.yaml planned for (SPEC §8; None without environments) and
    # the endpoint it talks to, as `str(Endpoint)`: both are covered by the fingerprint.
    environment: str | None = None
    endpoint: str | None = None

    @property
    def changed_tables(self) -> tuple[TablePlan, ...]:
        return tuple(t for t in self.tables if t.has_changes)

    @property
    def has_changes(self) -> bool:
        return bool(self.changed_tables)

    def summary(self) -> dict[str, int]:
        changed = self.changed_tables
        return {
            "tables_changed": len(changed),
            "rows_added": sum(t.rows_added for t in changed),
            "rows_changed": sum(t.rows_changed for t in changed),
            "rows_removed": sum(t.rows_removed for t in changed),
        }

    def table(self, name: str) -> TablePlan | None:
        return next((t for t in self.tables if t.name == name), None)

    def closing_line(self) -> str:
        """SPEC §3's closing line; each noun agrees with its number (`1 table`, `2 rows`)."""
        if not self.has_changes:
            return "No changes."
        s = self.summary()
        tables = s["tables_changed"]
        rows = s["rows_added"]
        return (
            f"Plan: {tables:,} table{'' if tables == 1 else 's'} to change; "
            f"{rows:,} row{'' if rows == 1 else 's'} to add, "
            f"{s['rows_changed']:,} to change, {s['rows_removed']:,} to remove."
        )
