"""Saved plans (`bpsync plan --out FILE`, `bpsync apply FILE`, `bpsync show FILE`).

A plan file is the JSON rendering (SPEC §2) with one more top-level member, written first:

    {
      "bpsync_plan": {"version": 1, "plan": {...}, "tables": [{...}, ...]},
      "format_version": "1", "fingerprint": ..., (the rest of the rendering)
      "tables": [
        {"name": ..., ..., "row_changes": [
          {"op": "add", "key": {...}, "before": null, "after": {...}, "line": 2, ...},
          ...
        ]},
        ...
      ]
    }

`bpsync_plan` holds every field of the Plan but the row changes (which the rendering
already holds, as {title: value} objects that `columns`/`old_columns` turn back into
tuples). Unlike `--format json`, a plan file keeps the plan's own table and row order and
every row change, so a loaded plan equals the saved one.

The layout is fixed line by line (one row change per line), which is what lets a plan of
five million row changes load without parsing it into memory: large tables are checked
line by line on load and read again on demand. Any other layout (truncated, hand-edited,
reformatted by jq) is refused rather than guessed at.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any, NoReturn

from bpsync.errors import PlanError
from bpsync.gcpause import cycle_collector_paused
from bpsync.plan import Inputs, Plan, RowChange, RowChanges, TablePlan
from bpsync.render.json import ROW_INDENT, write_document

PLAN_FILE_VERSION = 1
# Tables with more row changes than this are read from the file on demand.
EAGER_ROWS = 100_000
_SECTION = b'  "bpsync_plan": '
_TABLE = b'    {"name": '
_ROW = ROW_INDENT.encode() + b"{"
_NEW_PLAN = "make a new one with `bpsync plan --out FILE`"


@cycle_collector_paused()
def save_plan(plan: Plan, path: Path | str) -> Path:
    """Write `plan` to `path` atomically (temp file, fsync, rename); returns the path."""
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise PlanError(f"cannot write plan file {path}: {e.strerror or e}") from e
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            write_document(plan, f, head={"bpsync_plan": _section(plan)}, exact=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise PlanError(f"cannot write plan file {path}: {e.strerror or e}") from e
        raise
    return path


def _section(plan: Plan) -> dict[str, Any]:
    inputs = plan.inputs
    return {
        "version": PLAN_FILE_VERSION,
        "plan": {
            "fingerprint": plan.fingerprint,
            "api_version": plan.api_version,
            "refreshed": plan.refreshed,
            "created_at": plan.created_at,
            "warnings": list(plan.warnings),
            "environment": plan.environment,
            "endpoint": plan.endpoint,
            "inputs": {
                "manifests": dict(inputs.manifests),
                "tables": dict(inputs.tables),
                "state": inputs.state,
                "deleted": list(inputs.deleted),
            },
        },
        "tables": [t.to_record() for t in plan.tables],
    }


# -- loading --------------------------------------------------------------------------------


@cycle_collector_paused()
def load_plan(path: Path | str) -> Plan:
    """The Plan saved at `path`; PlanError saying why when the file is not a usable plan."""
    path = Path(path)
    try:
        f = path.open("rb")
    except FileNotFoundError:
        raise PlanError(f"plan file {path} not found", hint=_NEW_PLAN) from None
    except OSError as e:
        raise PlanError(f"cannot read plan file {path}: {e.strerror or e}") from e
    with f:
        return _Reader(path, f).plan()


class _Reader:
    """Reads a plan file line by line, refusing anything but the layout save_plan writes."""

    def __init__(self, path: Path, f: IO[bytes]) -> None:
        self.path = path
        self.f = f
        self.offset = 0  # byte offset of the next line
        self.lineno = 0
        self.stat = os.fstat(f.fileno())

    def plan(self) -> Plan:
        section = self._section()
        try:
            meta = section["plan"]
            tables = [self._table(t) for t in section["tables"]]
            self._expect(b"  ]\n" if tables else None, b"}\n")
            if self.f.read(1):
                self._damaged("data after the end of the plan")
            inputs = meta["inputs"]
            return Plan(
                fingerprint=meta["fingerprint"],
                tables=tuple(tables),
                inputs=Inputs(
                    manifests=dict(inputs["manifests"]),
                    tables=dict(inputs["tables"]),
                    state=inputs["state"],
                    deleted=tuple(inputs["deleted"]),
                ),
                api_version=meta["api_version"],
                refreshed=meta["refreshed"],
                created_at=meta["created_at"],
                warnings=tuple(meta["warnings"]),
                # Plan files written before environments have neither key.
                environment=meta.get("environment"),
                endpoint=meta.get("endpoint"),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            self._damaged(f"unexpected content ({type(e).__name__}: {e})")

    def _line(self) -> bytes:
        line = self.f.readline()
        if not line.endswith(b"\n"):
            self._damaged("it ends early (truncated?)")
        self.offset += len(line)
        self.lineno += 1
        return line

    def _damaged(self, why: str) -> NoReturn:
        raise PlanError(
            f"plan file {self.path} is damaged at line {self.lineno}: {why}", hint=_NEW_PLAN
        )

    def _section(self) -> dict[str, Any]:
        first = self.f.readline()
        second = self.f.readline()
        self.offset, self.lineno = len(first) + len(second), 2
        if first != b"{\n" or not second.startswith(_SECTION):
            self._not_a_plan(first + second)
        try:
            section = json.loads(second[len(_SECTION) :].rstrip(b",\n"))
        except ValueError:
            self._damaged("its bpsync_plan section is not valid JSON (truncated?)")
        if not isinstance(section, dict):
            self._damaged("its bpsync_plan section is not an object")
        version = section.get("version")
        if version != PLAN_FILE_VERSION:
            raise PlanError(
                f"plan file {self.path} has version {json.dumps(version)}; this "
                f"bpsync reads version {PLAN_FILE_VERSION}",
                hint=_NEW_PLAN,
            )
        while True:  # the rendering's own header members
            line = self._line()
            if line in (b'  "tables": [\n', b'  "tables": []\n'):
                return section
            if not line.startswith(b'  "'):
                self._damaged("expected the tables")

    def _not_a_plan(self, start: bytes) -> NoReturn:
        if not start:
            raise PlanError(f"plan file {self.path} is empty", hint=_NEW_PLAN)
        if b'"format_version"' in start:
            raise PlanError(
                f"{self.path} is a JSON rendering of a plan, not a saved plan",
                hint="save plans with `bpsync plan --out FILE`",
            )
        raise PlanError(f"{self.path} is not a bpsync plan file", hint=_NEW_PLAN)

    def _table(self, meta: Mapping[str, Any]) -> TablePlan:
        line = self._line()
        if not line.startswith(_TABLE) or _first_string(line[len(_TABLE) :]) != meta["name"]:
            self._damaged(f"expected table {meta['name']!r}")
        count = meta["row_change_count"]
        if line.rstrip(b",\n").endswith(b'"row_changes": []}'):
            changes = RowChanges()
        elif line.endswith(b'"row_changes": [\n'):
            changes = self._rows(meta, count)
        else:
            self._damaged("unexpected table line")
        if len(changes) != count:
            self._damaged(f"table {meta['name']!r} holds {len(changes)} of its {count} row changes")
        return TablePlan.from_record(meta, changes)

    def _rows(self, meta: Mapping[str, Any], count: int) -> RowChanges:
        start = self.offset
        to_row = _row_reader(meta)
        eager: list[RowChange] = []
        n = 0
        while True:
            line = self._line()
            if line in (b"    ]}\n", b"    ]},\n"):
                break
            if not line.startswith(_ROW):
                self._damaged("expected a row change")
            n += 1
            if count <= EAGER_ROWS:
                eager.append(to_row(json.loads(line.rstrip(b",\n"))))
        if count <= EAGER_ROWS:
            return RowChanges(eager)
        return RowChanges(lazy=self._lazy(start, n, to_row), count=n)

    def _lazy(
        self, start: int, n: int, to_row: Callable[[Any], RowChange]
    ) -> Callable[[], Iterator[RowChange]]:
        path, stat = self.path, self.stat

        def read() -> Iterator[RowChange]:
            with path.open("rb") as f:
                now = os.fstat(f.fileno())
                if (now.st_size, now.st_mtime_ns, now.st_ino) != (
                    stat.st_size,
                    stat.st_mtime_ns,
                    stat.st_ino,
                ):
                    raise PlanError(f"plan file {path} changed after it was loaded")
                f.seek(start)
                for _ in range(n):
                    yield to_row(json.loads(f.readline().rstrip(b",\n")))

        return read

    def _expect(self, *lines: bytes | None) -> None:
        for want in lines:
            if want is not None and self._line() != want:
                self._damaged("unexpected end of the tables")


def _first_string(data: bytes) -> Any:
    """The JSON value a line starts with (a table's name; it may hold commas)."""
    try:
        return json.JSONDecoder().raw_decode(data.decode("utf-8"))[0]
    except ValueError:
        return None


def _row_reader(meta: Mapping[str, Any]) -> Callable[[Any], RowChange]:
    """Turns a row change object back into a RowChange (cells ordered by the columns)."""
    keys, old, new = meta["key_columns"], meta["old_columns"], meta["columns"]

    def to_row(o: Any) -> RowChange:
        before, after = o["before"], o["after"]
        return RowChange(
            op=o["op"],
            key=tuple(o["key"][c] for c in keys),
            before=None if before is None else tuple(before[c] for c in old),
            after=None if after is None else tuple(after[c] for c in new),
            line=o["line"],
            old_line=o["old_line"],
        )

    return to_row
