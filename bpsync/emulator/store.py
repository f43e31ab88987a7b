"""The emulator's state: enrichment schemas, their tables, and upload jobs.

One store serves both API versions; each route renders the same enrichment in its version's
shape (§4.1 v1, §4.2 v2.1). Everything lives in a directory: `state.json` (schemas and jobs),
`tables/<id>.csv` (the current table) and `uploads/<job_id>.csv` (bodies waiting for their
job). With `--data-dir` that directory survives restarts; otherwise it is a temp dir.

Decisions where the docs are silent (api doc §14):
- `version` starts at 1 when a schema is created and goes up by one on each upload job that
  ends `done` (the v1 meaning, §4.1). PATCH does not change it.
- v1 and v2.1 see the same enrichments.
- Jobs of one enrichment run one at a time, in the order they were created.
- The v2.1 read (§15.1) serves rows in file order; pages are cut at the size served (after
  any `per_page` cap), empty cells are "" unless a fault says null.
- Changes made "in the UI" (set_table, put_rows, delete_rows) raise `version` like an upload,
  unless told not to.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import secrets
import shutil
import threading
import time
from array import array
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bpsync.bigpanda import facts
from bpsync.bigpanda.facts import ApiVersion
from bpsync.emulator.csvcheck import check_table, read_rows
from bpsync.emulator.faults import Faults

JsonObject = dict[str, Any]
Row = Mapping[str, Any]  # a table row keyed by column title
Key = tuple[str, ...]  # a row's query_tag cells

# Top-level keys each version accepts on create/PATCH; anything else is a 400, so a client
# that sends v2.1-only keys to v1 is caught (SPEC §1).
_BASE_KEYS = frozenset({"type", "active", "config"})
_CONFIG_KEYS = {
    "v1": frozenset({"map_name", "fields"}),
    "v2.1": frozenset({"name", "fields", "id_generation_function", "case_insensitive"}),
}
_FIELD_KEYS = frozenset({"title", "type", "tag_name", "override_existing", "optional"})


class BadRequest(Exception):
    """A request the emulator answers with 400 and this message."""


def user_id(token: str) -> str:
    """A stable fake user id for `created_by`/`updated_by` (v2.1 §4.2)."""
    return hashlib.sha256(token.encode()).hexdigest()[:24]


# ---------------------------------------------------------------------------- validation


def validate_create(api: ApiVersion, body: Any) -> JsonObject:
    """Check a create body; return the canonical stored form or raise BadRequest."""
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    _check_keys(api, body)
    if body.get("type") != facts.ENRICHMENT_TYPE:
        raise BadRequest(f"type must be {facts.ENRICHMENT_TYPE!r}")
    config = body.get("config")
    if not isinstance(config, dict):
        raise BadRequest("config must be an object with fields")
    _check_config_keys(api, config)
    fields = _valid_fields(config.get("fields"))
    return {
        "type": facts.ENRICHMENT_TYPE,
        "active": _valid_active(body.get("active", True)),
        "name": _valid_name(config.get(api.name_key, "")),
        "fields": fields,
        "when": body.get("when"),
        "note": body.get("note"),
    }


def _check_keys(api: ApiVersion, body: JsonObject) -> None:
    allowed = _BASE_KEYS | set(api.extra_keys)
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise BadRequest(f"unknown key(s) for API {api.name}: {', '.join(unknown)}")


def _check_config_keys(api: ApiVersion, config: JsonObject) -> None:
    unknown = sorted(set(config) - _CONFIG_KEYS[api.name])
    if unknown:
        raise BadRequest(f"unknown config key(s) for API {api.name}: {', '.join(unknown)}")


def _valid_active(value: Any) -> bool:
    if not isinstance(value, bool):
        raise BadRequest("active must be true or false")
    return value


def _valid_name(value: Any) -> str:
    if not isinstance(value, str):
        raise BadRequest("the map name must be a string")
    return value


def _valid_fields(fields: Any) -> list[JsonObject]:
    if not isinstance(fields, list) or not fields:
        raise BadRequest("config.fields must be a non-empty list")
    titles: set[str] = set()
    result_tags: set[str] = set()
    for index, field in enumerate(fields):
        where = f"config.fields[{index}]"
        _valid_field(field, where)
        if field["title"] in titles:
            raise BadRequest(f"{where}: duplicate title {field['title']!r}")
        titles.add(field["title"])
        if field["type"] == facts.RESULT_TAG:
            tag = field.get("tag_name") or field["title"]
            if tag in result_tags:
                raise BadRequest(f"{where}: two result_tag fields target the tag {tag!r}")
            result_tags.add(tag)
    types = {f["type"] for f in fields}
    if types != {facts.QUERY_TAG, facts.RESULT_TAG}:
        raise BadRequest("config.fields needs at least one query_tag and one result_tag field")
    return [dict(f) for f in fields]


def _valid_field(field: Any, where: str) -> None:
    if not isinstance(field, dict):
        raise BadRequest(f"{where} must be an object")
    unknown = sorted(set(field) - _FIELD_KEYS)
    if unknown:
        raise BadRequest(f"{where}: unknown key(s) {', '.join(unknown)}")
    if not isinstance(field.get("title"), str) or not field["title"]:
        raise BadRequest(f"{where}: title must be a non-empty string")
    if field.get("type") not in (facts.QUERY_TAG, facts.RESULT_TAG):
        raise BadRequest(f"{where}: type must be query_tag or result_tag")
    if "tag_name" in field and not isinstance(field["tag_name"], str):
        raise BadRequest(f"{where}: tag_name must be a string")
    for flag in ("override_existing", "optional"):
        if flag in field and not isinstance(field[flag], bool):
            raise BadRequest(f"{where}: {flag} must be true or false")


def _v21_patch_changes(body: JsonObject) -> JsonObject:
    """§15.2: only `active`, `when` and `note` take; the rest is dropped without a word."""
    changes = {k: body[k] for k in facts.V21_PATCH_MUTABLE_KEYS if k in body}
    if "active" in changes:
        _valid_active(changes["active"])
    return changes


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _cells(titles: list[str], row: Row) -> list[str]:
    """A row's cells in column order; a row must name exactly the table's columns."""
    if not isinstance(row, Mapping):
        raise BadRequest(f"a row must be an object keyed by column title, not {row!r}")
    if set(row) != set(titles):
        raise BadRequest(f"a row must have exactly the columns {titles}, not {sorted(row)}")
    return [_cell(row[t]) for t in titles]


@dataclass(frozen=True)
class _Table:
    stamp: tuple[int, ...]  # (inode, mtime, size) of the file it was indexed from
    header: tuple[str, ...]
    offsets: array[int]  # byte offset where each row starts, then the end of the last


def _index(path: Path, stamp: tuple[int, ...]) -> _Table:
    offsets: array[int] = array("q")
    consumed = 0

    def lines() -> Iterator[str]:
        # csv.reader pulls one line at a time, so `consumed` is where its last row ended.
        nonlocal consumed
        with path.open("rb") as fh:
            for raw in fh:
                consumed += len(raw)
                yield raw.decode("utf-8")

    reader = csv.reader(lines())
    header = tuple(next(reader, ()))
    offsets.append(consumed)
    for _ in reader:
        offsets.append(consumed)
    return _Table(stamp, header, offsets)


def _row(header: tuple[str, ...], cells: list[str]) -> dict[str, str]:
    """A stored row keyed by title (a short row, which a stored table never has, pads)."""
    return {title: cells[i] if i < len(cells) else "" for i, title in enumerate(header)}


def render(api: ApiVersion, enrichment: JsonObject) -> JsonObject:
    """The stored enrichment in this version's wire shape."""
    config: JsonObject = {api.name_key: enrichment["name"], "fields": enrichment["fields"]}
    obj: JsonObject = {
        "id": enrichment["id"],
        "type": enrichment["type"],
        "active": enrichment["active"],
        "version": enrichment["version"],
        "config": config,
    }
    if api.name == "v2.1":
        config["id_generation_function"] = "use_md5"
        config["case_insensitive"] = False
        obj["when"] = enrichment.get("when")
        obj["note"] = enrichment.get("note")
        obj["created_by"] = enrichment["created_by"]
        obj["updated_by"] = enrichment["updated_by"]
    return obj


def job_view(job: JsonObject) -> JsonObject:
    """A job as the API shows it (§7): status, job_id, times, and a reason when failed."""
    view = {k: job[k] for k in ("status", "job_id", "start_time", "end_time")}
    if job["status"] == facts.JOB_FAILED:
        view["reason"] = job.get("reason", "")
    return view


# ---------------------------------------------------------------------------- the store


class Store:
    """Schemas, tables and jobs behind one lock, saved to `root` after every change."""

    def __init__(self, root: Path, *, persist: bool) -> None:
        self.root = root
        self.persist = persist
        (root / "tables").mkdir(parents=True, exist_ok=True)
        (root / "uploads").mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self.enrichments: dict[str, JsonObject] = {}
        self.jobs: dict[str, JsonObject] = {}
        self._counter = 0
        self._tables: dict[str, _Table] = {}
        self._load()

    # ------------------------------------------------------------ persistence

    def _load(self) -> None:
        state = self.root / "state.json"
        if not state.exists():
            return
        data = json.loads(state.read_text(encoding="utf-8"))
        self.enrichments = data.get("enrichments", {})
        self.jobs = data.get("jobs", {})
        self._counter = int(data.get("counter", 0))

    def save(self) -> None:
        if not self.persist:
            return
        with self._lock:
            payload = {"enrichments": self.enrichments, "jobs": self.jobs, "counter": self._counter}
            tmp = self.root / "state.json.tmp"
            tmp.write_text(json.dumps(payload, indent=1), encoding="utf-8")
            os.replace(tmp, self.root / "state.json")

    # ------------------------------------------------------------ schemas

    def create(self, api: ApiVersion, body: Any, token: str) -> JsonObject:
        enrichment = validate_create(api, body)
        with self._lock:
            enrichment_id = secrets.token_hex(12)
            who = user_id(token)
            enrichment.update(
                id=enrichment_id, version=1, created_by=who, updated_by=who, created=time.time()
            )
            self.enrichments[enrichment_id] = enrichment
            self.save()
            return dict(enrichment)

    def get(self, enrichment_id: str) -> JsonObject | None:
        with self._lock:
            found = self.enrichments.get(enrichment_id)
            return dict(found) if found is not None else None

    def all(self) -> list[JsonObject]:
        with self._lock:
            return [dict(e) for e in self.enrichments.values()]

    def patch(self, api: ApiVersion, enrichment_id: str, body: Any, token: str) -> JsonObject:
        """Apply a PATCH (KeyError if unknown). v1: structure changes are refused (§13, S15);
        v2.1: only `active`, `when`, `note` apply, every other key is ignored (§15.2)."""
        if not isinstance(body, dict):
            raise BadRequest("request body must be a JSON object")
        if api.name != "v2.1":
            _check_keys(api, body)
        with self._lock:
            enrichment = self.enrichments[enrichment_id]
            if api.name == "v2.1":
                changes = _v21_patch_changes(body)
            else:
                changes = self._patch_changes(api, enrichment, body)
            enrichment.update(changes, updated_by=user_id(token))
            self.save()
            return dict(enrichment)

    def _patch_changes(self, api: ApiVersion, current: JsonObject, body: JsonObject) -> JsonObject:
        if "type" in body and body["type"] != facts.ENRICHMENT_TYPE:
            raise BadRequest(f"type must be {facts.ENRICHMENT_TYPE!r}")
        changes: JsonObject = {}
        if "active" in body:
            changes["active"] = _valid_active(body["active"])
        for key in ("when", "note"):
            if key in body:
                changes[key] = body[key]
        config = body.get("config", {})
        if not isinstance(config, dict):
            raise BadRequest("config must be an object")
        _check_config_keys(api, config)
        if "fields" in config and config["fields"] != current["fields"]:
            raise BadRequest(
                "schema structure cannot be changed; create a new enrichment "
                "(and deactivate this one)"
            )
        if api.name_key in config:
            changes["name"] = _valid_name(config[api.name_key])
        return changes

    # ------------------------------------------------------------ tables

    def table_path(self, enrichment_id: str) -> Path:
        return self.root / "tables" / f"{enrichment_id}.csv"

    def upload_path(self, name: str) -> Path:
        return self.root / "uploads" / f"{name}.csv"

    def table_rows(self, enrichment_id: str) -> list[dict[str, str]] | None:
        path = self.table_path(enrichment_id)
        return read_rows(path) if path.exists() else None

    def page(self, enrichment_id: str, page: int, per_page: int) -> tuple[int, list[Row]]:
        """Rows `(page-1)*per_page …` of the current table and the table's row count."""
        with self._lock:  # the file must not be replaced between indexing and reading
            table = self._indexed(enrichment_id)
            count = len(table.offsets) - 1
            first, last = min((page - 1) * per_page, count), min(page * per_page, count)
            if first >= last:
                return max(count, 0), []
            with self.table_path(enrichment_id).open("rb") as fh:
                fh.seek(table.offsets[first])
                text = fh.read(table.offsets[last] - table.offsets[first]).decode("utf-8")
        rows = csv.reader(io.StringIO(text, newline=""))
        return count, [_row(table.header, cells) for cells in rows]

    def _indexed(self, enrichment_id: str) -> _Table:
        """The table's header and where each row starts, re-indexed only when the file
        changed: a paged read of a big table neither parses it per page nor holds its rows."""
        path = self.table_path(enrichment_id)
        try:
            st = path.stat()
        except FileNotFoundError:
            return _Table((), (), array("q"))
        stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        cached = self._tables.get(enrichment_id)
        if cached is None or cached.stamp != stamp:
            cached = self._tables[enrichment_id] = _index(path, stamp)
        return cached

    def _all_rows(self, enrichment_id: str) -> Iterator[Row]:
        path = self.table_path(enrichment_id)
        if not path.exists():
            return
        with path.open(encoding="utf-8", newline="") as fh:
            reader = csv.reader(fh)
            header = tuple(next(reader, ()))
            for cells in reader:
                yield _row(header, cells)

    # ------------------------------------------------------------ behind bpsync's back
    # What a person in BigPanda's UI does: no upload job, but the table (and, by default,
    # `version`, which "goes up every time the table is updated", api doc §4.2) changes.

    def set_table(
        self, enrichment_id: str, rows: Iterable[Row], *, bump_version: bool = True
    ) -> None:
        """Replace the table with `rows` (dicts keyed by field title; KeyError if unknown)."""
        with self._lock:
            titles = self._titles(enrichment_id)
            self._write_table(enrichment_id, titles, [_cells(titles, r) for r in rows])
            self._touched(enrichment_id, bump_version)

    def put_rows(
        self, enrichment_id: str, rows: Iterable[Row], *, bump_version: bool = True
    ) -> tuple[int, int]:
        """Add rows, or change the row with the same key (its query_tag cells): (added, changed).
        `version` goes up only when a row really changed."""
        with self._lock:
            titles, keys, current = self._keyed(enrichment_id)
            added = changed = 0
            for row in rows:
                cells = _cells(titles, row)
                key = tuple(cells[i] for i in keys)
                if key in current:
                    changed += current[key] != cells
                else:
                    added += 1
                current[key] = cells
            self._write_table(enrichment_id, titles, list(current.values()))
            self._touched(enrichment_id, bump_version and bool(added or changed))
            return added, changed

    def delete_rows(
        self, enrichment_id: str, keys: Iterable[Row], *, bump_version: bool = True
    ) -> int:
        """Remove the rows whose query_tag cells match each mapping's: how many went."""
        with self._lock:
            titles, key_columns, current = self._keyed(enrichment_id)
            removed = 0
            for wanted in keys:
                if not isinstance(wanted, Mapping):
                    raise BadRequest(f"a row key must be an object, not {wanted!r}")
                missing = [titles[i] for i in key_columns if titles[i] not in wanted]
                if missing:
                    raise BadRequest(f"row key needs the query_tag column(s) {missing}")
                key = tuple(_cell(wanted[titles[i]]) for i in key_columns)
                removed += current.pop(key, None) is not None
            self._write_table(enrichment_id, titles, list(current.values()))
            self._touched(enrichment_id, bump_version and removed > 0)
            return removed

    def set_schema(self, enrichment_id: str, *, active: bool | None, name: str | None) -> None:
        """Deactivate/activate or rename an enrichment (KeyError if unknown)."""
        with self._lock:
            enrichment = self.enrichments[enrichment_id]
            if active is not None:
                enrichment["active"] = _valid_active(active)
            if name is not None:
                enrichment["name"] = _valid_name(name)
            self.save()

    def delete(self, enrichment_id: str) -> None:
        """Remove an enrichment and its table (KeyError if unknown)."""
        with self._lock:
            del self.enrichments[enrichment_id]
            self._tables.pop(enrichment_id, None)
            self.table_path(enrichment_id).unlink(missing_ok=True)
            self.save()

    def _titles(self, enrichment_id: str) -> list[str]:
        return [f["title"] for f in self.enrichments[enrichment_id]["fields"]]

    def _keyed(self, enrichment_id: str) -> tuple[list[str], list[int], dict[Key, list[str]]]:
        """Titles, the positions of the query_tag columns, and the rows by key (in order)."""
        titles = self._titles(enrichment_id)
        fields = self.enrichments[enrichment_id]["fields"]
        keys = [i for i, f in enumerate(fields) if f["type"] == facts.QUERY_TAG]
        current: dict[Key, list[str]] = {}
        for row in self._all_rows(enrichment_id):
            cells = _cells(titles, row)
            current[tuple(cells[i] for i in keys)] = cells
        return titles, keys, current

    def _write_table(self, enrichment_id: str, titles: list[str], rows: list[list[str]]) -> None:
        tmp = self.upload_path(f"ui-{enrichment_id}-{time.monotonic_ns()}")
        with tmp.open("w", encoding="utf-8", newline="") as fh:
            writer = csv.writer(fh, lineterminator="\n")
            writer.writerow(titles)
            writer.writerows(rows)
        os.replace(tmp, self.table_path(enrichment_id))
        self._tables.pop(enrichment_id, None)

    def _touched(self, enrichment_id: str, bump_version: bool) -> None:
        if bump_version:
            self.enrichments[enrichment_id]["version"] += 1
        self.save()

    # ------------------------------------------------------------ jobs

    def new_job(self, enrichment_id: str, upload: Path) -> JsonObject:
        """Register a pending job for an upload already on disk; its file moves under its id."""
        with self._lock:
            self._counter += 1
            now = int(time.time())
            # §7 [C S8] sample ids look like <enrichment id>_<unix seconds>_indexcsv; the
            # counter keeps two uploads in the same second apart.
            job_id = f"{enrichment_id}_{now}_{self._counter}_indexcsv"
            os.replace(upload, self.upload_path(job_id))
            job = {
                "job_id": job_id,
                "enrichment_id": enrichment_id,
                "status": facts.JOB_PENDING,
                "start_time": now,
                "end_time": None,
            }
            self.jobs[job_id] = job
            self.save()
            return dict(job)

    def job(self, job_id: str) -> JsonObject | None:
        with self._lock:
            found = self.jobs.get(job_id)
            return dict(found) if found is not None else None

    def set_job(self, job_id: str, status: str, reason: str | None = None) -> None:
        with self._lock:
            job = self.jobs[job_id]
            job["status"] = status
            if status in facts.JOB_FINAL_STATES:
                job["end_time"] = int(time.time())
            if reason is not None:
                job["reason"] = reason
            self.save()

    def unfinished_jobs(self) -> list[str]:
        with self._lock:
            return [
                j for j, job in self.jobs.items() if job["status"] not in facts.JOB_FINAL_STATES
            ]

    def finish_job(self, job_id: str, reasons: list[str]) -> None:
        """End a job: install its table and bump `version` on success, else record why."""
        upload = self.upload_path(job_id)
        with self._lock:
            job = self.jobs[job_id]
            if reasons:
                upload.unlink(missing_ok=True)
                self.set_job(job_id, facts.JOB_FAILED, "; ".join(reasons))
                return
            enrichment = self.enrichments.get(job["enrichment_id"])
            if enrichment is None:
                upload.unlink(missing_ok=True)
                self.set_job(job_id, facts.JOB_FAILED, "the enrichment no longer exists")
                return
            os.replace(upload, self.table_path(enrichment["id"]))
            self._tables.pop(enrichment["id"], None)
            enrichment["version"] += 1
            self.set_job(job_id, facts.JOB_DONE)


class JobRunner:
    """Runs each upload job in its own thread: pending → started → done|failed (§7).

    A job spends half of `job_seconds` pending and the rest started (at least as long as the
    CSV check takes). Jobs of one enrichment are serialised, like a single ingestion queue.
    """

    def __init__(self, store: Store, faults: Faults, job_seconds: float) -> None:
        self.store = store
        self.faults = faults
        self.job_seconds = job_seconds
        self._stopping = threading.Event()
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()

    def submit(self, job_id: str) -> None:
        worker = threading.Thread(target=self._run, args=(job_id,), daemon=True)
        worker.name = f"emulator-job-{job_id}"
        worker.start()

    def stop(self) -> None:
        self._stopping.set()

    def _lock_for(self, enrichment_id: str) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(enrichment_id, threading.Lock())

    def _run(self, job_id: str) -> None:
        job = self.store.job(job_id)
        if job is None:
            return
        began = time.monotonic()
        with self._lock_for(job["enrichment_id"]):
            if self._stopping.wait(self.job_seconds / 2):
                return  # shutting down: the job stays unfinished and resumes on restart
            self.store.set_job(job_id, facts.JOB_STARTED)
            if self.faults.hanging:
                return  # stays `started` forever
            reasons = self._check(job)
            remaining = self.job_seconds - (time.monotonic() - began)
            if remaining > 0 and self._stopping.wait(remaining):
                return
            self.store.finish_job(job_id, reasons)

    def _check(self, job: JsonObject) -> list[str]:
        injected = self.faults.take_job_failure()
        if injected is not None:
            return [injected]
        enrichment = self.store.get(job["enrichment_id"])
        upload = self.store.upload_path(job["job_id"])
        if enrichment is None or not upload.exists():
            return ["the uploaded table was lost (emulator restarted?)"]
        return check_table(upload, [f["title"] for f in enrichment["fields"]])


def make_root(data_dir: Path | None) -> tuple[Path, Callable[[], None]]:
    """The store directory and how to clean it up (a temp dir is removed at stop)."""
    if data_dir is not None:
        data_dir.mkdir(parents=True, exist_ok=True)
        return data_dir, lambda: None
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="bpsync-emulator-"))
    return root, lambda: shutil.rmtree(root, ignore_errors=True)
