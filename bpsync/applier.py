"""Carries out a Plan against BigPanda and records what BigPanda confirmed (SPEC §3, §5).

The order of every table's steps is what keeps BigPanda and the state in agreement even
when the process is killed at any moment:

    create     POST enrichment  -> state: enrichment id (before anything else, so a crash
                                   never leads to a second enrichment for the table)
    snapshot   canonical table stored under its SHA-256 (before upload, so a resumed job
                                   can be completed even if the CSV changed meanwhile)
    upload     POST …/map (202) -> state: pending job id + digest sent
    wait       poll the job     -> done: state gets digest, rows, version, applied-at;
                                   pending cleared. failed: pending cleared, old snapshot kept.
    replace    only after done  -> the old enrichment is deactivated

A later run finds any pending job in state and re-attaches to it instead of uploading again.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from bpsync.bigpanda import facts
from bpsync.bigpanda.models import (
    Enrichment,
    EnrichmentSpec,
    Job,
    ProgressCallback,
    TableReader,
    UploadReceipt,
)
from bpsync.errors import (
    ApiError,
    ApplyRefused,
    BpsyncError,
    Interrupted,
    JobFailed,
    NotFoundError,
    StalePlan,
    VerifyFailed,
)
from bpsync.interrupt import Interrupts
from bpsync.plan import (
    CREATE,
    DEACTIVATE,
    NO_OP,
    REPLACE,
    UPDATE,
    UPDATE_IN_PLACE,
    Plan,
    TablePlan,
)
from bpsync.planner import adopted
from bpsync.remote import same_fields
from bpsync.state import PendingJob, State, StateBackend, TableState, referenced_snapshots
from bpsync.state.snapshot import encoded_size
from bpsync.table import (
    ProblemSink,
    TableLayout,
    sha256_file,
    table_bytes,
    table_size_hint,
    write_canonical,
)
from bpsync.units import format_duration

Note = Callable[[str], None]
FaultHook = Callable[[str], None]


class Client(TableReader, Protocol):
    """The part of bpsync.bigpanda.client.BigPandaClient that apply uses."""

    def get_enrichment(self, enrichment_id: str) -> Enrichment: ...
    def list_enrichments(self) -> list[Enrichment]: ...
    def create_enrichment(self, spec: EnrichmentSpec) -> Enrichment: ...
    def update_enrichment(
        self,
        enrichment_id: str,
        *,
        active: bool | None = None,
        name: str | None = None,
        description: str | None = None,
        when: Any = None,
    ) -> Enrichment: ...
    def upload_table(self, enrichment_id: str, path: Path) -> UploadReceipt: ...
    def wait_for_job(
        self,
        receipt_or_job_id: UploadReceipt | str,
        *,
        timeout: float,
        on_progress: ProgressCallback | None = None,
    ) -> Job: ...


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# -- state, shared by the worker threads ---------------------------------------------------


class StateStore:
    """Serialises read-modify-write of the state among apply's threads."""

    def __init__(self, backend: StateBackend, state: State, fault: FaultHook) -> None:
        self.backend = backend
        self.state = state
        self._lock = threading.Lock()
        self._fault = fault

    def update(self, name: str, change: Callable[[TableState | None], TableState | None]) -> None:
        with self._lock:
            current = self.state.table(name)
            new = change(current)
            state = self.state.without_table(name) if new is None else self.state.with_table(new)
            self._fault("state-write")
            self.state = self.backend.write(state)


# -- the applier --------------------------------------------------------------------------


@dataclass
class TableResult:
    name: str
    action: str
    ok: bool
    message: str = ""
    rows: tuple[int, int, int] = (0, 0, 0)  # added, changed, removed
    # Not finished because of Ctrl-C: "pending" (its job stays recorded, re-attached on the
    # next apply), "running" (stopped before its job was recorded) or "not started".
    interrupted: str | None = None
    enrichment_id: str | None = None  # the enrichment the table now maps to (or was to)
    job_id: str | None = None  # the upload job, when there was one
    seconds: float = 0.0  # how long the table took
    resumed: bool = False  # a job left pending by an interrupted apply, completed now


@dataclass
class ApplyResult:
    results: list[TableResult] = field(default_factory=list)
    interrupted: bool = False

    @property
    def failed(self) -> list[TableResult]:
        return [r for r in self.results if not r.ok]

    def summary(self) -> str:
        if self.interrupted:
            return self._interrupted_summary()
        return self._summary()

    def _interrupted_summary(self) -> str:
        done = [r.name for r in self.results if r.ok]
        parts = [f"Apply interrupted. Applied: {', '.join(done) or 'nothing'}"]
        for kind, words in (
            ("pending", "left pending (the next apply re-attaches to the job)"),
            ("running", "stopped before its job was recorded (the next apply plans it again)"),
            ("not started", "not started"),
        ):
            names = [r.name for r in self.results if r.interrupted == kind]
            if names:
                parts.append(f"{words}: {', '.join(names)}")
        failed = [r.name for r in self.failed if r.interrupted is None]
        if failed:
            parts.append(f"failed: {', '.join(failed)}")
        return "; ".join(parts) + ". " + self._summary().split(". ", 1)[-1]

    def _summary(self) -> str:
        ok = [r for r in self.results if r.ok]
        counts = {
            a: sum(1 for r in ok if r.action == a)
            for a in (CREATE, UPDATE, REPLACE, UPDATE_IN_PLACE, DEACTIVATE)
        }
        added = sum(r.rows[0] for r in ok)
        changed = sum(r.rows[1] for r in ok)
        removed = sum(r.rows[2] for r in ok)
        tables = (
            f"{counts[CREATE]} created, {counts[UPDATE]} updated, {counts[REPLACE]} "
            f"replaced, {counts[UPDATE_IN_PLACE]} updated in place, {counts[DEACTIVATE]} "
            "deactivated"
        )
        rows = f"{added} added, {changed} changed, {removed} removed"
        if not self.failed:
            return f"Apply complete! Tables: {tables}; rows: {rows}."
        names = ", ".join(r.name for r in self.failed)
        return (
            f"Apply failed for {len(self.failed)} of {len(self.results)} table(s): {names}. "
            f"Done: {tables}; rows: {rows}."
        )


@dataclass
class Applier:
    client: Client
    store: StateStore
    root: Path
    api_version: str
    note: Note
    timeout: float = 1800.0
    parallelism: int = 4
    clock: Callable[[], float] = time.monotonic
    progress_every: float = 30.0
    fault: FaultHook = field(default=lambda point: None)
    # On a terminal: set(table, line or None) redraws one live line per running job.
    live: Callable[[str, str | None], None] | None = None
    # `apply --verify` (SPEC §7, v2.1): read each table back once its job is done.
    verify: bool = False
    _job_ids: dict[str, str] = field(default_factory=dict, init=False)
    interrupts: Interrupts | None = None  # Ctrl-C: stop starting, then stop waiting

    # -- resume ---------------------------------------------------------------------------
    def resume_pending(self) -> list[TableResult]:
        """Finish or clear jobs left pending by an interrupted apply (SPEC §5)."""
        results = []
        for ts in list(self.store.state.tables.values()):
            if ts.pending is None or not ts.pending.job_id:
                continue  # no job to wait on (a replace created its enrichment, no upload yet)
            results.append(self._resume(ts, ts.pending))
        return results

    def _resume(self, ts: TableState, job: PendingJob) -> TableResult:
        self.note(f"{ts.name}: re-attaching to job {job.job_id} left by an interrupted apply")
        start = self.clock()
        try:
            self._wait(ts.name, job.job_url or job.job_id, job.job_id)
        except JobFailed as e:
            self._forget_failed(ts.name, job)
            self.note(f"{ts.name}: that job failed: {e.reason}; the change will be planned again")
            message = f"earlier job failed: {e.reason}"
        else:
            self._complete(ts.name, job)
            message = f"completed job {job.job_id}"
        return TableResult(
            ts.name,
            job.kind,
            True,
            message,
            enrichment_id=job.enrichment_id,
            job_id=job.job_id,
            seconds=self.clock() - start,
            resumed=True,
        )

    # -- apply ----------------------------------------------------------------------------
    def apply(self, plan: Plan) -> ApplyResult:
        todo = [t for t in plan.tables if t.has_changes]
        if not todo:
            return ApplyResult()
        self.check_snapshot_room(todo)
        results = self._run_all(todo)
        interrupted = any(r.interrupted for r in results)
        if not interrupted:
            self._prune()
        return ApplyResult(results, interrupted=interrupted)

    def _run_all(self, todo: list[TablePlan]) -> list[TableResult]:
        """Apply the tables, `parallelism` at a time, in order; a first Ctrl-C stops taking
        new ones, a second stops waiting for the running ones.

        Daemon threads, not an executor: after a second Ctrl-C a thread still sending an
        upload must not keep the process alive (what it leaves is what a kill leaves, which
        the next apply recovers from).
        """
        stop = self.interrupts.stop_starting if self.interrupts else threading.Event()
        abandon = self.interrupts.stop_waiting if self.interrupts else threading.Event()
        queue = list(enumerate(todo))
        results: dict[int, TableResult] = {}
        errors: list[BaseException] = []  # a bug in a worker: raised again in this thread
        guard = threading.Lock()

        def worker() -> None:
            while True:
                with guard:
                    if not queue or stop.is_set():
                        return
                    i, tp = queue.pop(0)
                try:
                    results[i] = self._apply_one(tp)
                except BaseException as e:
                    errors.append(e)
                    return

        threads = [
            threading.Thread(target=worker, name=f"apply-{n}", daemon=True)
            for n in range(max(1, min(self.parallelism, len(todo))))
        ]
        for t in threads:
            t.start()
        deadline: float | None = None
        while any(t.is_alive() for t in threads):
            if abandon.is_set():
                deadline = deadline or time.monotonic() + 0.8
                if time.monotonic() > deadline:
                    break  # a thread stuck in a request: leave it, as a kill would
            for t in threads:
                t.join(0.05)
        if errors and not abandon.is_set():
            raise errors[0]
        out = []
        for i, tp in enumerate(todo):
            counts = (tp.rows_added, tp.rows_changed, tp.rows_removed)
            if i in results:
                out.append(results[i])
            elif any(i == j for j, _ in queue):
                out.append(
                    TableResult(tp.name, tp.action, False, "not started", counts, "not started")
                )
            else:
                out.append(
                    TableResult(
                        tp.name,
                        tp.action,
                        False,
                        "stopped before its upload job was recorded",
                        counts,
                        "running",
                    )
                )
        return out

    def check_snapshot_room(self, tables: Iterable[TablePlan]) -> None:
        """Before any upload: the state backend can keep every snapshot this apply records
        (a snapshot too big for git is refused here, not after BigPanda took the table)."""
        backend = self.store.backend
        for tp in tables:
            if not tp.upload or tp.csv is None or not tp.new_sha256:
                continue
            if backend.has_snapshot(tp.new_sha256):
                continue
            path = self.root / tp.csv
            backend.check_snapshot_room(
                tp.name,
                table_size_hint(path),
                partial(_snapshot_size, path),
                self.note,
            )

    def _apply_one(self, tp: TablePlan) -> TableResult:
        counts = (tp.rows_added, tp.rows_changed, tp.rows_removed)
        start = self.clock()
        try:
            msg = self._run(tp)
            ok = True
        except Interrupted as e:
            kind = "pending" if self._pending_job(tp.name) else "running"
            return TableResult(
                tp.name,
                tp.action,
                False,
                e.render(),
                counts,
                kind,
                enrichment_id=tp.enrichment_id,
                job_id=self._job_ids.get(tp.name),
                seconds=self.clock() - start,
            )
        except BpsyncError as e:
            msg, ok = e.render(), False
        current = self.store.state.table(tp.name)
        return TableResult(
            tp.name,
            tp.action,
            ok,
            msg,
            counts,
            enrichment_id=(current.enrichment_id if current else None) or tp.enrichment_id,
            job_id=self._job_ids.get(tp.name),
            seconds=self.clock() - start,
        )

    def _run(self, tp: TablePlan) -> str:
        self._settle(tp)
        if tp.action == NO_OP:
            return "left-over enrichments deactivated"
        if tp.action == DEACTIVATE:
            return self._deactivate(tp)
        if tp.action == UPDATE_IN_PLACE:
            return self._update_in_place(tp)
        with self._canonical_file(tp) as path:
            eid = tp.enrichment_id
            if tp.action in (CREATE, REPLACE):
                eid = self._create(tp)
            assert eid is not None
            if tp.action == UPDATE and tp.old_schema is not None:
                self._patch_metadata(tp, eid)
            self.store.backend.put_snapshot(tp.new_sha256 or "", path)
            self.fault("snapshot-stored")
            job = self._upload(tp, eid, path)
        try:
            self._wait(tp.name, job.job_url or job.job_id, job.job_id)
            if self.verify:
                self._verify(tp, job)
        except (JobFailed, VerifyFailed):
            self._forget_failed(tp.name, job)
            raise
        self._complete(tp.name, job)
        return f"job {job.job_id} done" + (", verified" if self.verify else "")

    def _verify(self, tp: TablePlan, job: PendingJob) -> None:
        """Read the table back and compare it with what was uploaded (the stored snapshot),
        as rows in any order. A difference fails the table; state is not moved."""
        fd, tmp = tempfile.mkstemp(prefix="bpsync-verify-", suffix=".csv")
        os.close(fd)
        try:
            self.client.read_table(job.enrichment_id, tp.columns, Path(tmp), table=tp.name)
            with open(tmp, "rb") as fh:
                held = _row_multiset(fh)
            with self.store.backend.open_snapshot(job.sha256, table=tp.name) as fh:
                sent = _row_multiset(fh)
        finally:
            Path(tmp).unlink(missing_ok=True)
        if held != sent:
            raise VerifyFailed(
                f"{tp.name}: verify failed: job {job.job_id} is done, but BigPanda holds "
                f"{held[0]:,} rows that differ from the {sent[0]:,} rows uploaded",
                hint="the state keeps the last verified table; run `bpsync plan` to see "
                "BigPanda's rows, and check the enrichment in BigPanda's UI",
            )
        self.note(f"{tp.name}: verified: BigPanda holds the {sent[0]:,} rows uploaded")

    def _pending_job(self, name: str) -> str | None:
        ts = self.store.state.table(name)
        return ts.pending.job_id if ts and ts.pending and ts.pending.job_id else None

    def _settle(self, tp: TablePlan) -> None:
        """Settle what an interrupted apply left, as the plan showed, before anything else.

        An enrichment a killed create made is recorded as the table's; the new enrichment of
        a replace that did not finish is deactivated when this plan does not use it (and its
        pending entry cleared). Deactivating twice is harmless, so a crash in between is too.
        """
        if tp.adopt:
            eid = tp.adopt

            def adopt(cur: TableState | None) -> TableState | None:
                p = cur.pending if cur else None
                if cur is None or p is None or p.job_id or p.enrichment_id:
                    return cur
                return adopted(cur, eid)

            self.store.update(tp.name, adopt)
            self.note(f"{tp.name}: adopted enrichment {eid}, created by an interrupted apply")
        for eid in tp.retire:
            try:
                self.client.update_enrichment(eid, active=False)
                self.note(f"{tp.name}: deactivated enrichment {eid}, left by an earlier replace")
            except NotFoundError:
                self.note(f"{tp.name}: the left-over enrichment {eid} no longer exists")

            def clear(cur: TableState | None, eid: str = eid) -> TableState | None:
                p = cur.pending if cur else None
                if cur is None or p is None or p.job_id or p.enrichment_id != eid:
                    return cur
                return replace(cur, pending=None)

            self.store.update(tp.name, clear)

    def _forget_failed(self, name: str, job: PendingJob) -> None:
        """A failed job changed nothing in BigPanda: drop it, keep the old snapshot.

        A replace keeps its new (still empty) enrichment as created-not-uploaded, so the
        next apply uploads to it instead of creating yet another one.
        """

        def drop(cur: TableState | None) -> TableState | None:
            if cur is None:
                return None
            if job.kind == REPLACE:
                return replace(cur, pending=replace(job, job_id="", job_url=None))
            return replace(cur, pending=None)

        self.store.update(name, drop)

    def _create(self, tp: TablePlan) -> str:
        """Create the table's enrichment, never a second one for the same table.

        The intent to create is written to state first. If the process dies after BigPanda
        created the enrichment but before its id was recorded, the next run finds that intent
        and adopts the enrichment (same name and fields, active, unknown to the state)
        instead of creating another.
        """
        schema = dict(tp.schema or {})
        cur = self.store.state.table(tp.name)
        pending = cur.pending if cur is not None else None
        if pending is not None and not pending.job_id and pending.enrichment_id:
            if tp.action == REPLACE and pending.schema == schema:
                self.note(
                    f"{tp.name}: reusing enrichment {pending.enrichment_id}, created "
                    "by an interrupted apply"
                )
                return pending.enrichment_id
            self._retire(tp.name, pending.enrichment_id)
        creating = pending is not None and not pending.job_id and not pending.enrichment_id
        try:
            orphans = self._unknown_namesakes(schema)
        except ApiError as e:
            if creating:
                raise  # an earlier create may have succeeded: never guess, never duplicate
            self.note(f"{tp.name}: could not list enrichments to check the name ({e.message})")
            orphans = []
        if creating:
            adopted = [e for e in orphans if same_fields(e.fields, schema["fields"])]
            if len(adopted) == 1:
                eid: str = adopted[0].id
                self.note(f"{tp.name}: adopting enrichment {eid}, created by an interrupted apply")
                self._record_created(tp, eid, schema)
                return eid
        if orphans and tp.action == CREATE:
            ids = ", ".join(e.id for e in orphans)
            raise ApplyRefused(
                f"{tp.name}: BigPanda already has an active enrichment named "
                f"{schema['map_name']!r} ({ids}) that bpsync's state does not know",
                hint=f"to manage it, run `bpsync import {tp.name} <id>` (or set enrichment_id "
                "in the manifest); otherwise give the table another map_name",
            )
        self.store.update(tp.name, lambda cur: self._intent(tp, cur, schema))
        self.fault("intent-recorded")
        spec = EnrichmentSpec(
            name=schema["map_name"],
            fields=tuple(schema["fields"]),
            active=bool(schema.get("active", True)),
            description=schema.get("description"),
            when=schema.get("when"),
        )
        eid = self.client.create_enrichment(spec).id
        self.note(f"{tp.name}: created enrichment {eid}")
        self._record_created(tp, eid, schema)
        self.fault("created")
        return eid

    def _unknown_namesakes(self, schema: dict[str, Any]) -> list[Enrichment]:
        """Active enrichments with this name whose ids no table of the state holds."""
        known: set[str] = set()
        for ts in self.store.state.tables.values():
            known.update(
                x for x in (ts.enrichment_id, ts.pending and ts.pending.enrichment_id) if x
            )
        return [
            e
            for e in self.client.list_enrichments()
            if e.name == schema["map_name"] and e.active and e.id not in known
        ]

    def _intent(self, tp: TablePlan, cur: TableState | None, schema: dict[str, Any]) -> TableState:
        """State saying "creating an enrichment for this table" (no id yet)."""
        intent = PendingJob(
            job_id="",
            job_url=None,
            enrichment_id="",
            sha256=tp.new_sha256 or "",
            rows=tp.new_rows or 0,
            kind=tp.action,
            started_at=_now(),
            replaces=cur.enrichment_id if cur is not None and tp.action == REPLACE else None,
            schema=schema,
        )
        if cur is None:
            return TableState(tp.name, None, self.api_version, schema, pending=intent)
        return replace(cur, pending=intent)

    def _record_created(self, tp: TablePlan, eid: str, schema: dict[str, Any]) -> None:
        def record(cur: TableState | None) -> TableState:
            if tp.action == REPLACE and cur is not None and cur.enrichment_id:
                # The old enrichment stays the applied one until the new upload is done; the
                # new one is remembered (job id still empty) so a crash cannot orphan it.
                created_job = PendingJob(
                    job_id="",
                    job_url=None,
                    enrichment_id=eid,
                    sha256=tp.new_sha256 or "",
                    rows=tp.new_rows or 0,
                    kind=REPLACE,
                    started_at=_now(),
                    replaces=cur.enrichment_id,
                    schema=schema,
                )
                return replace(cur, pending=created_job)
            return TableState(tp.name, eid, self.api_version, schema)

        self.store.update(tp.name, record)

    def _upload(self, tp: TablePlan, eid: str, path: Path) -> PendingJob:
        self.note(f"{tp.name}: uploading {tp.new_rows:,} rows to enrichment {eid}")
        self.fault("before-upload")
        receipt = self.client.upload_table(eid, path)
        self._job_ids[tp.name] = receipt.job_id  # one key per table: safe across threads
        if receipt.sha256 != tp.new_sha256:
            # Never record a digest BigPanda did not get.
            raise StalePlan(
                f"{tp.name}: the bytes sent differ from the planned table",
                hint="the CSV changed during apply; run `bpsync plan` again",
            )
        old = self.store.state.table(tp.name)
        job = PendingJob(
            job_id=receipt.job_id,
            job_url=receipt.job_url,
            enrichment_id=eid,
            sha256=receipt.sha256,
            rows=tp.new_rows or 0,
            kind=tp.action,
            started_at=_now(),
            replaces=old.enrichment_id if tp.action == REPLACE and old else None,
            schema=dict(tp.schema or {}),
        )
        self.fault("accepted")
        self.store.update(
            tp.name,
            lambda cur: (
                replace(cur, pending=job)
                if cur
                else TableState(tp.name, eid, self.api_version, job.schema, pending=job)
            ),
        )
        self.fault("pending-recorded")
        return job

    def _wait(self, name: str, job_ref: str, job_id: str) -> Job:
        started = self.clock()
        last_log = [started]
        last_status = [""]

        def progress(job: Job, elapsed: float) -> None:
            status = job.status
            now = self.clock()
            waiting = (
                f"{name}: still waiting on job {job_id} "
                f"[{format_duration(elapsed)} elapsed, status {status}]"
            )
            if self.live is not None:
                self.live(name, None if status in ("done", "failed") else waiting)
            if status in ("done", "failed"):
                self.note(f"{name}: job {job_id} {status} after {format_duration(elapsed)}")
            elif self.live is None and (
                status != last_status[0] or now - last_log[0] >= self.progress_every / 2
            ):
                # Polls come at most 30 s apart; logging once half the period has passed
                # keeps a line at least every `progress_every` seconds in CI logs.
                self.note(waiting)
                last_log[0] = now
            last_status[0] = status

        self.fault("waiting")
        try:
            return self.client.wait_for_job(job_ref, timeout=self.timeout, on_progress=progress)
        except Interrupted:
            if self.live is not None:
                self.live(name, None)
            raise Interrupted(
                f"{name}: stopped waiting on job {job_id}; it stays pending in state and the "
                "next apply re-attaches to it"
            ) from None

    def _complete(self, name: str, job: PendingJob) -> None:
        """The job is done: retire the replaced enrichment, then record the new state.

        In this order a crash in between leaves the job pending in state, and the next run
        completes it (deactivating again is harmless); the other order could forget an old
        enrichment while it is still active.
        """
        self.fault("job-done")
        if job.replaces and job.replaces != job.enrichment_id:
            try:
                self._patch(job.replaces, active=False)
                self.note(f"{name}: deactivated the replaced enrichment {job.replaces}")
            except NotFoundError:
                self.note(f"{name}: the replaced enrichment {job.replaces} no longer exists")
        version = None
        try:
            version = self.client.get_enrichment(job.enrichment_id).version
        except ApiError as e:
            self.note(f"{name}: could not read back the enrichment's version ({e.message})")

        def record(cur: TableState | None) -> TableState:
            return TableState(
                name,
                job.enrichment_id,
                self.api_version,
                job.schema,
                remote_version=version,
                sha256=job.sha256,
                rows=job.rows,
                applied_at=_now(),
                pending=None,
            )

        self.store.update(name, record)
        self.fault("state-recorded")

    def _retire(self, name: str, eid: str) -> None:
        """Deactivate an enrichment an interrupted replace created for an older schema."""
        try:
            self._patch(eid, active=False)
            self.note(f"{name}: deactivated enrichment {eid}, left over by an interrupted apply")
        except ApiError as e:
            self.note(f"{name}: could not deactivate leftover enrichment {eid}: {e.message}")

    def _patch_metadata(self, tp: TablePlan, eid: str) -> None:
        schema = tp.schema or {}
        old = tp.old_schema or {}
        changes: dict[str, Any] = {}
        for key, arg in (
            ("active", "active"),
            ("map_name", "name"),
            ("description", "description"),
            ("when", "when"),
        ):
            if schema.get(key) != old.get(key):
                changes[arg] = schema.get(key)
        if changes:
            self._patch(eid, **changes)

    def _patch(self, eid: str, **changes: Any) -> Enrichment:
        """PATCH the enrichment, then check that BigPanda's answer holds every value sent
        (SPEC §3): v2.1 ignores keys it does not apply instead of refusing them, and a
        value that did not take must fail the table before state records it."""
        answer = self.client.update_enrichment(eid, **changes)
        missed = [
            f"{arg} {_show(value)} (BigPanda has {_show(getattr(answer, attr))})"
            for arg, attr, key in _PATCHED
            if (value := changes.get(arg)) is not None
            and _sent(self.api_version, key)
            and getattr(answer, attr) != value
        ]
        if missed:
            raise ApiError(
                f"BigPanda accepted the update of enrichment {eid} but did not take "
                + "; ".join(missed),
                hint="the state keeps the old value; check the enrichment in BigPanda's UI, "
                "then run `bpsync plan` again",
            )
        return answer

    def _update_in_place(self, tp: TablePlan) -> str:
        assert tp.enrichment_id is not None
        self._patch_metadata(tp, tp.enrichment_id)
        schema = dict(tp.schema or {})
        self.store.update(tp.name, lambda cur: replace(cur, schema=schema) if cur else None)
        return "metadata updated"

    def _deactivate(self, tp: TablePlan) -> str:
        if tp.enrichment_id:
            try:
                self._patch(tp.enrichment_id, active=False)
            except NotFoundError:
                self.note(f"{tp.name}: enrichment {tp.enrichment_id} no longer exists")
        self.store.update(tp.name, lambda cur: None)
        return f"enrichment {tp.enrichment_id} deactivated"

    @contextmanager
    def _canonical_file(self, tp: TablePlan) -> Iterator[Path]:
        """The exact bytes to upload: the CSV itself when canonical, else a canonical copy."""
        assert tp.csv is not None and tp.new_sha256 is not None
        path = self.root / tp.csv
        if sha256_file(path) == tp.new_sha256:
            yield path
            return
        fd, tmp = tempfile.mkstemp(prefix="bpsync-upload-", suffix=".csv")  # not in the repo
        try:
            with os.fdopen(fd, "wb") as out:
                layout = TableLayout(tp.columns, tuple(tp.columns.index(k) for k in tp.key_columns))
                info = write_canonical(
                    path, out, layout, ProblemSink(tp.csv), check_duplicates=False
                )
            if not info.ok or info.canonical_sha256 != tp.new_sha256:
                raise StalePlan(
                    f"{tp.csv} changed since the plan was made",
                    hint="run `bpsync plan` again and review the new plan",
                )
            yield Path(tmp)
        finally:
            Path(tmp).unlink(missing_ok=True)

    def _prune(self) -> None:
        try:
            self.store.backend.prune_snapshots(referenced_snapshots(self.store.state))
        except BpsyncError as e:  # pruning is housekeeping; never fail an apply for it
            self.note(f"could not prune old snapshots: {e.message}")


def _row_multiset(fh: BinaryIO) -> tuple[int, int, bytes]:
    """The data rows of a canonical CSV as a multiset: (count, sum of their SHA-256 digests
    modulo 2**256, the header). Equal for the same rows in any order; memory stays flat."""
    header = fh.readline()
    count = total = 0
    for line in fh:
        total += int.from_bytes(hashlib.sha256(line.rstrip(b"\n")).digest(), "big")
        count += 1
    return count, total % (1 << 256), header


# update_enrichment's argument, the Enrichment attribute that shows it, the PATCH body key.
_PATCHED = (
    ("active", "active", "active"),
    ("name", "name", "config"),
    ("description", "description", "note"),
    ("when", "when", "when"),
)


def _sent(api_version: str, key: str) -> bool:
    """Whether the client sends this PATCH key on this API version (SPEC §1)."""
    return key in ("active", "config") or key in facts.API_VERSIONS[api_version].extra_keys


def _show(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=str)


def _snapshot_size(path: Path) -> int:
    return encoded_size(table_bytes(path))
