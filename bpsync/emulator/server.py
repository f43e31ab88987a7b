"""The BigPanda emulator's HTTP server (SPEC §6), on 127.0.0.1 only.

A stdlib `ThreadingHTTPServer` speaking HTTP/1.1 with keep-alive. Per request, in this order:
injected latency, Bearer auth (before routing, like the real API), the 5 req/s per-token rate
limit (§9), injected 5xx/429, then the route. Every request is recorded (Authorization value
redacted) so tests can check what the client really sent. Routes under ADMIN_PREFIX are the
emulator's own (a person in BigPanda's UI, for shell rehearsals): after auth, they skip the
rate limit and the injected faults.

When it answers before reading a request body (401, 429, injected faults, 404 on upload) it
says `Connection: close` and then reads and discards the body for a while before closing: a
socket closed with unread data sends a TCP reset that can destroy the answer in flight.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from bpsync.bigpanda import facts
from bpsync.bigpanda.facts import ApiVersion
from bpsync.emulator.faults import Faults
from bpsync.emulator.store import (
    BadRequest,
    JobRunner,
    Row,
    Store,
    job_view,
    make_root,
    render,
)

HOST = "127.0.0.1"
MAX_JSON_BYTES = 1_000_000
READ_CHUNK = 1 << 20
LINGER_SECONDS = 5.0  # how long to drain an unwanted body before closing
# Routes no real API has: a person in BigPanda's UI, for rehearsals from the shell.
ADMIN_PREFIX = "/_emulator"


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the emulator saw it."""

    method: str
    path: str
    headers: dict[str, str]  # lower-case names; Authorization value replaced by "<redacted>"
    content_length: int | None
    body_bytes: int  # body bytes read as the request's body (not counting drained ones)
    status: int | None  # None when the connection was dropped without an answer
    time: float  # time.time() when the request line arrived
    sha256: str | None = None  # of the upload body, for uploads read to the end
    dropped: bool = False
    query: str = ""  # the raw query string ("page=2&per_page=100")


@dataclass
class _Exchange:
    """What the handler learns about the request while serving it."""

    method: str
    path: str
    query: str = ""
    token: str = ""
    content_length: int | None = None
    body_bytes: int = 0
    body_read: bool = False
    status: int | None = None
    sha256: str | None = None
    dropped: bool = False
    arrived: float = field(default_factory=time.time)
    recorded: bool = False


class _RateLimiter:
    """Sliding 1-second window per token (§9: 5 requests/second)."""

    def __init__(self, per_second: int) -> None:
        self.per_second = per_second
        self._seen: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def allow(self, token: str) -> bool:
        now = time.monotonic()
        with self._lock:
            window = self._seen.setdefault(token, deque())
            while window and window[0] <= now - 1.0:
                window.popleft()
            if len(window) >= self.per_second:
                return False
            window.append(now)
            return True


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    emulator: Emulator


# ---------------------------------------------------------------------------- the handler


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server
    timeout = 120  # an idle keep-alive connection is dropped after this

    def setup(self) -> None:
        super().setup()
        # Headers and body are separate writes; without NODELAY each answer waits ~40 ms.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # requests are recorded instead; stderr stays quiet in tests

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def do_PATCH(self) -> None:
        self._serve()

    def do_PUT(self) -> None:
        self._serve()

    def do_DELETE(self) -> None:
        self._serve()

    # ------------------------------------------------------------ request pipeline

    def _serve(self) -> None:
        emu = self.server.emulator
        target = urlsplit(self.path)
        ex = _Exchange(method=self.command, path=unquote(target.path), query=target.query)
        ex.content_length = self._declared_length()
        try:
            self._pipeline(emu, ex)
        except (ConnectionError, TimeoutError, OSError):
            ex.dropped = ex.status is None
            self.close_connection = True
        finally:
            if not ex.recorded:
                emu._record(self._recorded(ex))

    def _pipeline(self, emu: Emulator, ex: _Exchange) -> None:
        if (delay := emu.faults.latency) > 0:
            time.sleep(delay)
        if not self._authorised(emu, ex):
            self._json(ex, 401, {"status": "error", "message": "Unauthorized: bad or no token"})
            return
        if ex.path == ADMIN_PREFIX or ex.path.startswith(ADMIN_PREFIX + "/"):
            # Not BigPanda's: no rate limit and no injected faults, so a rehearsal's
            # "person in the UI" never disturbs what bpsync sees.
            self._admin(emu, ex, ex.path[len(ADMIN_PREFIX) :].strip("/").split("/"))
            return
        if emu.rate_limiter is not None and not emu.rate_limiter.allow(ex.token):
            self._json(ex, 429, {"message": "Too many requests"}, {"Retry-After": "1"})
            return
        fault = emu.faults.take_request_fault(ex.method, ex.path)
        if fault is not None:
            extra = {"Retry-After": fault.retry_after} if fault.retry_after else {}
            self._json(ex, fault.status, {"message": "injected fault"}, extra)
            return
        self._route(emu, ex)

    def _authorised(self, emu: Emulator, ex: _Exchange) -> bool:
        scheme, _, token = (self.headers.get("Authorization") or "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return False
        ex.token = token
        return emu.token is None or token == emu.token

    def _route(self, emu: Emulator, ex: _Exchange) -> None:
        for api in facts.API_VERSIONS.values():
            if ex.path == api.enrichments or ex.path.startswith(api.enrichments + "/"):
                rest = ex.path[len(api.enrichments) :].strip("/")
                self._enrichment_routes(emu, ex, api, rest.split("/") if rest else [])
                return
            if ex.path.startswith(api.jobs + "/"):
                self._job_route(emu, ex, ex.path[len(api.jobs) + 1 :])
                return
        self._json(ex, 404, {"message": f"no route for {ex.path}"})

    def _enrichment_routes(
        self, emu: Emulator, ex: _Exchange, api: ApiVersion, parts: list[str]
    ) -> None:
        key = (ex.method, len(parts), parts[1] if len(parts) == 2 else None)
        if key == ("GET", 0, None):
            self._list(emu, ex, api)
        elif key == ("POST", 0, None):
            self._create(emu, ex, api)
        elif key == ("GET", 1, None):
            self._get(emu, ex, api, parts[0])
        elif key == ("PATCH", 1, None):
            self._patch(emu, ex, api, parts[0])
        elif key == ("POST", 2, "map"):
            self._upload(emu, ex, parts[0])
        elif key == ("GET", 2, "map") and api.name in facts.TABLE_READ_API_VERSIONS:
            self._read_table(emu, ex, parts[0])
        elif key == ("PATCH", 2, "map"):
            self._json(ex, 501, {"message": "row-level map changes are not emulated"})
        else:
            self._json(ex, 405 if len(parts) <= 2 else 404, {"message": "unsupported route"})

    # ------------------------------------------------------------ routes

    def _list(self, emu: Emulator, ex: _Exchange, api: ApiVersion) -> None:
        items = [render(api, e) for e in emu.store.all()]
        # v2.1 wraps the list in {"data": …} [R C1]; v1's shape is undocumented, so the
        # emulator answers a bare list there and clients must accept both.
        self._json(ex, 200, {"data": items} if api.name == "v2.1" else items)

    def _create(self, emu: Emulator, ex: _Exchange, api: ApiVersion) -> None:
        body = self._read_json(ex)
        if body is _INVALID:
            return
        try:
            created = emu.store.create(api, body, ex.token)
        except BadRequest as exc:
            self._json(ex, 400, {"status": "error", "message": str(exc)})
            return
        self._json(ex, 201 if api.name == "v1" else 200, render(api, created))

    def _get(self, emu: Emulator, ex: _Exchange, api: ApiVersion, enrichment_id: str) -> None:
        found = emu.store.get(enrichment_id)
        if found is None:
            self._json(ex, 404, {"message": f"enrichment {enrichment_id} not found"})
        else:
            self._json(ex, 200, render(api, found))

    def _patch(self, emu: Emulator, ex: _Exchange, api: ApiVersion, enrichment_id: str) -> None:
        body = self._read_json(ex)
        if body is _INVALID:
            return
        try:
            updated = emu.store.patch(api, enrichment_id, body, ex.token)
        except KeyError:
            self._json(ex, 404, {"message": f"enrichment {enrichment_id} not found"})
        except BadRequest as exc:
            self._json(ex, 400, {"status": "error", "message": str(exc)})
        else:
            self._json(ex, 200, render(api, updated))

    def _read_table(self, emu: Emulator, ex: _Exchange, enrichment_id: str) -> None:
        """One page of the current table (api doc §15.1), bent by the armed read faults."""
        read = emu.faults.read
        if read.forbidden:
            self._error(ex, 403, "Forbidden: this key may not read mapping enrichment tables")
            return
        enrichment = emu.store.get(enrichment_id)
        if enrichment is None:
            self._error(ex, 404, f"enrichment {enrichment_id} not found")
            return
        paging = _paging(ex.query)
        if isinstance(paging, str):
            self._error(ex, 400, paging)
            return
        page, per_page = paging
        status = emu.faults.take_read_failure(page)
        if status is not None:
            self._error(ex, status, "injected fault")
            return
        if read.max_per_page is not None:
            per_page = min(per_page, read.max_per_page)
        total, rows = emu.store.page(enrichment_id, page, per_page)
        if rows and emu.faults.take_table_move():
            # Before answering, so the reader's next page already sees the new total.
            emu.store.put_rows(enrichment_id, [_drift_row(enrichment)])
        if read.empty_as_null:
            rows = [{k: (v if v != "" else None) for k, v in row.items()} for row in rows]
        self._json(ex, 200, {read.count_key: total, facts.READ_ITEMS_KEY: rows})

    def _error(self, ex: _Exchange, status: int, message: str) -> None:
        """A v2.1 error body (api doc §15.3)."""
        self._json(ex, status, {"status": status, "errors": [message]})

    # ------------------------------------------------------------ admin (not BigPanda's)

    def _admin(self, emu: Emulator, ex: _Exchange, parts: list[str]) -> None:
        if len(parts) < 2 or parts[0] != "enrichments":
            self._json(ex, 404, {"message": f"no emulator route for {ex.path}"})
            return
        eid, what = parts[1], "/".join(parts[2:])
        if emu.store.get(eid) is None:
            self._json(ex, 404, {"message": f"enrichment {eid} not found"})
            return
        bump = parse_qs(ex.query).get("bump_version", ["true"])[-1].lower() not in ("0", "false")
        try:
            self._admin_route(emu, ex, (ex.method, what), eid, bump)
        except BadRequest as exc:
            self._json(ex, 400, {"message": str(exc)})

    def _admin_route(
        self, emu: Emulator, ex: _Exchange, key: tuple[str, str], eid: str, bump: bool
    ) -> None:
        if key == ("GET", "table"):
            self._json(ex, 200, {"rows": emu.table_rows(eid) or []})
        elif key == ("POST", "table"):
            rows = _csv_rows(b"".join(self._body_chunks(ex)))
            ex.body_read = True
            emu.set_table(eid, rows, bump_version=bump)
            self._json(ex, 200, {"rows": len(rows)})
        elif key == ("POST", "rows"):
            body = self._read_json(ex)
            if body is _INVALID:
                return
            if not isinstance(body, dict):
                raise BadRequest('body must be {"put": [rows], "delete": [keys]}')
            put, delete = body.get("put") or [], body.get("delete") or []
            if not isinstance(put, list) or not isinstance(delete, list):
                raise BadRequest('"put" and "delete" must be lists')
            added, changed = emu.put_rows(eid, put, bump_version=bump) if put else (0, 0)
            removed = emu.delete_rows(eid, delete, bump_version=bump) if delete else 0
            self._json(ex, 200, {"added": added, "changed": changed, "removed": removed})
        elif key == ("PATCH", ""):
            body = self._read_json(ex)
            if body is _INVALID:
                return
            if not isinstance(body, dict):
                raise BadRequest('body must be {"active": bool, "name": "map name"}')
            emu.store.set_schema(eid, active=body.get("active"), name=body.get("name"))
            self._json(ex, 200, emu.enrichment(eid))
        elif key == ("DELETE", ""):
            emu.delete_enrichment(eid)
            self._json(ex, 200, {"deleted": eid})
        else:
            self._json(ex, 405, {"message": "unsupported emulator route"})

    def _job_route(self, emu: Emulator, ex: _Exchange, job_id: str) -> None:
        job = emu.store.job(job_id) if ex.method == "GET" else None
        if ex.method != "GET":
            self._json(ex, 405, {"message": "jobs are read-only"})
        elif job is None:
            self._json(ex, 404, {"message": f"job {job_id} not found"})
        else:
            self._json(ex, 200, job_view(job))

    def _upload(self, emu: Emulator, ex: _Exchange, enrichment_id: str) -> None:
        if emu.store.get(enrichment_id) is None:
            self._json(ex, 404, {"message": f"enrichment {enrichment_id} not found"})
            return
        chunked = "chunked" in (self.headers.get("Transfer-Encoding") or "").lower()
        if ex.content_length is None and not chunked:
            self._json(ex, 411, {"message": "Content-Length required"})
            return
        if (ex.content_length or 0) > facts.MAX_FILE_BYTES:
            self._json(ex, 413, {"message": f"the CSV is larger than {facts.MAX_FILE_BYTES} B"})
            return
        tmp = emu.store.upload_path(f"incoming-{threading.get_ident()}-{time.monotonic_ns()}")
        if not self._receive(emu, ex, tmp, emu.faults.take_drop()):
            tmp.unlink(missing_ok=True)
            return
        job = emu.store.new_job(enrichment_id, tmp)
        emu.jobs.submit(job["job_id"])
        location = emu.job_location(emu.api_for_path(ex.path), job["job_id"])
        self._json(ex, 202, job_view(job), {"Location": location})

    def _receive(self, emu: Emulator, ex: _Exchange, dest: Path, drop_after: int | None) -> bool:
        """Stream the body to `dest`; False if it was dropped, cut short or too large."""
        digest = hashlib.sha256()
        with dest.open("wb") as out:
            for chunk in self._body_chunks(ex):
                if drop_after is not None and ex.body_bytes + len(chunk) >= drop_after:
                    ex.body_bytes = drop_after
                    self._drop(ex)
                    return False
                ex.body_bytes += len(chunk)
                if ex.body_bytes > facts.MAX_FILE_BYTES:
                    self._json(ex, 413, {"message": "the CSV is larger than allowed"})
                    return False
                digest.update(chunk)
                out.write(chunk)
        if ex.content_length is not None and ex.body_bytes < ex.content_length:
            ex.dropped = True  # the client went away mid-body
            self.close_connection = True
            return False
        ex.body_read = True
        ex.sha256 = digest.hexdigest()
        return True

    def _drop(self, ex: _Exchange) -> None:
        """Injected fault: close without answering; SO_LINGER 0 makes it a hard reset."""
        ex.dropped = True
        self.close_connection = True
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.connection.close()

    # ------------------------------------------------------------ bodies

    def _declared_length(self) -> int | None:
        value = self.headers.get("Content-Length")
        try:
            return int(value) if value is not None else None
        except ValueError:
            return None

    def _body_chunks(self, ex: _Exchange) -> Iterator[bytes]:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            yield from self._chunked()
            return
        remaining = ex.content_length or 0
        while remaining > 0:
            chunk = self.rfile.read(min(READ_CHUNK, remaining))
            if not chunk:
                return
            remaining -= len(chunk)
            yield chunk

    def _chunked(self) -> Iterator[bytes]:
        while True:
            size = int(self.rfile.readline(1024).split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return
            remaining = size
            while remaining > 0:
                chunk = self.rfile.read(min(READ_CHUNK, remaining))
                if not chunk:
                    return
                remaining -= len(chunk)
                yield chunk
            self.rfile.readline(1024)

    def _read_json(self, ex: _Exchange) -> Any:
        if (ex.content_length or 0) > MAX_JSON_BYTES:
            self._json(ex, 413, {"message": "request body too large"})
            return _INVALID
        data = b"".join(self._body_chunks(ex))
        ex.body_bytes = len(data)
        ex.body_read = True
        try:
            return json.loads(data or b"null")
        except ValueError:
            self._json(ex, 400, {"status": "error", "message": "request body is not valid JSON"})
            return _INVALID

    # ------------------------------------------------------------ answers

    def _json(
        self, ex: _Exchange, status: int, payload: Any, headers: dict[str, str] | None = None
    ) -> None:
        data = json.dumps(payload).encode()
        has_body = ex.content_length not in (None, 0) or "Transfer-Encoding" in self.headers
        unread = has_body and not ex.body_read
        self.send_response(status)
        self.send_header("Content-Type", facts.JSON_CONTENT_TYPE)
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if unread:
            self.send_header("Connection", "close")
        ex.status = status
        if not unread:
            # Recorded before the client can read the answer: a test that got the answer
            # always finds its request (a drained body is recorded once drained, below).
            ex.recorded = True
            self.server.emulator._record(self._recorded(ex))
        self.end_headers()
        self.wfile.write(data)
        if unread:
            self._linger(ex)

    def _linger(self, ex: _Exchange) -> None:
        """Drain the unread body so the client gets our answer instead of a reset."""
        self.close_connection = True
        budget = ex.content_length if ex.content_length is not None else facts.MAX_FILE_BYTES
        deadline = time.monotonic() + LINGER_SECONDS
        self.wfile.flush()
        try:
            self.connection.shutdown(socket.SHUT_WR)
            self.connection.settimeout(1.0)
            while budget > 0 and time.monotonic() < deadline:
                chunk = self.rfile.read1(min(READ_CHUNK, budget))
                if not chunk:
                    break
                budget -= len(chunk)
        except OSError:
            pass

    def _recorded(self, ex: _Exchange) -> RecordedRequest:
        headers = {k.lower(): v for k, v in self.headers.items()}
        if "authorization" in headers:
            headers["authorization"] = "<redacted>"
        return RecordedRequest(
            method=ex.method,
            path=ex.path,
            headers=headers,
            content_length=ex.content_length,
            body_bytes=ex.body_bytes,
            status=ex.status,
            time=ex.arrived,
            sha256=ex.sha256,
            dropped=ex.dropped,
            query=ex.query,
        )


_INVALID: Any = object()


def _paging(query: str) -> tuple[int, int] | str:
    """`(page, per_page)` from the query string, or why it is a 400."""
    params = parse_qs(query)
    values = []
    for name, default in (
        (facts.READ_PAGE_PARAM, facts.READ_FIRST_PAGE),
        (facts.READ_PER_PAGE_PARAM, facts.READ_DEFAULT_PER_PAGE),
    ):
        raw = params.get(name, [str(default)])[-1]
        try:
            value = int(raw)
        except ValueError:
            return f"{name} must be a positive integer, not {raw!r}"
        if value < 1:
            return f"{name} must be a positive integer, not {raw!r}"
        values.append(value)
    return values[0], values[1]


def _drift_row(enrichment: dict[str, Any]) -> dict[str, str]:
    """A row a concurrent writer adds (the `move_total_between_pages` fault)."""
    value = f"emulator-drift-{time.monotonic_ns()}"
    return {f["title"]: value for f in enrichment["fields"]}


def _csv_rows(data: bytes) -> list[dict[str, str]]:
    """Rows of an admin CSV body (header, then rows), keyed by header title."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRequest("the table must be UTF-8 CSV") from exc
    reader = csv.reader(io.StringIO(text, newline=""))
    header = next(reader, None)
    if not header:
        raise BadRequest("the table needs a header row")
    rows = []
    for number, cells in enumerate(reader, start=2):
        if len(cells) != len(header):
            raise BadRequest(f"line {number}: {len(cells)} cells for {len(header)} columns")
        rows.append(dict(zip(header, cells, strict=True)))
    return rows


# ---------------------------------------------------------------------------- the emulator


class Emulator:
    """The emulator as a Python object; runs the server in a background thread.

    with Emulator(port=0, job_seconds=0.2) as emu:
        client = BigPandaClient(emu.url, "any-token")
        emu.faults.fail_next_requests(2, status=503, path_contains="/map")
    """

    def __init__(
        self,
        port: int = 0,
        *,
        token: str | None = None,
        data_dir: Path | str | None = None,
        job_seconds: float = 0.3,
        rate_limit: bool = True,
        latency: float = 0.0,
        absolute_location: bool = False,
        max_per_page: int | None = None,
        count_key: str = facts.READ_COUNT_KEYS[0],
        empty_as_null: bool = False,
        forbid_read: bool = False,
    ) -> None:
        self.token = token or None
        self.faults = Faults()
        self.faults.set_latency(latency)
        self.faults.cap_per_page(max_per_page)
        self.faults.set_count_key(count_key)
        self.faults.empty_as_null(empty_as_null)
        self.faults.forbid_read(forbid_read)
        self.rate_limiter = _RateLimiter(facts.SERVER_RATE_LIMIT_PER_SECOND) if rate_limit else None
        self.absolute_location = absolute_location
        root, self._cleanup = make_root(Path(data_dir) if data_dir is not None else None)
        self.store = Store(root, persist=data_dir is not None)
        self.jobs = JobRunner(self.store, self.faults, job_seconds)
        self._requests: list[RecordedRequest] = []
        self._requests_lock = threading.Lock()
        self._server = _Server((HOST, port), _Handler)
        self._server.emulator = self
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------ lifecycle

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def start(self) -> Emulator:
        for job_id in self.store.unfinished_jobs():
            self.jobs.submit(job_id)  # resume what a previous run left (--data-dir)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.name = f"emulator-{self.port}"
        self._thread.start()
        return self

    def stop(self) -> None:
        self.jobs.stop()
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join()
            self._thread = None
        self._server.server_close()
        self._cleanup()

    def __enter__(self) -> Emulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------ inspection

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._requests_lock:
            return list(self._requests)

    def clear_requests(self) -> None:
        with self._requests_lock:
            self._requests.clear()

    def max_requests_in_window(self, seconds: float = 1.0) -> int:
        """The most requests that arrived within any `seconds`-long window."""
        times = sorted(r.time for r in self.requests)
        best, lo = 0, 0
        for hi, t in enumerate(times):
            while t - times[lo] >= seconds:
                lo += 1
            best = max(best, hi - lo + 1)
        return best

    def enrichment(self, enrichment_id: str, api_version: str = "v2.1") -> dict[str, Any] | None:
        """The enrichment as the given API version shows it, or None."""
        found = self.store.get(enrichment_id)
        return render(facts.API_VERSIONS[api_version], found) if found else None

    def table_rows(self, enrichment_id: str) -> list[dict[str, str]] | None:
        """The current table of an enrichment (None before its first successful upload)."""
        return self.store.table_rows(enrichment_id)

    def job(self, job_id: str) -> dict[str, Any] | None:
        found = self.store.job(job_id)
        return job_view(found) if found else None

    def wait_jobs(self, timeout: float = 10.0) -> None:
        """Block until no job is pending or started (not for hung jobs)."""
        deadline = time.monotonic() + timeout
        while self.store.unfinished_jobs() and time.monotonic() < deadline:
            time.sleep(0.02)

    # ------------------------------------------------------------ a person in the UI
    # Changes made behind bpsync's back: no upload job; `version` goes up on a table change
    # unless `bump_version=False` (to rehearse drift a version check cannot see).
    # Each raises KeyError for an unknown enrichment id.

    def set_table(
        self, enrichment_id: str, rows: Iterable[Row], *, bump_version: bool = True
    ) -> None:
        """Replace the whole table: rows are dicts with exactly the enrichment's titles."""
        self.store.set_table(enrichment_id, rows, bump_version=bump_version)

    def put_rows(
        self, enrichment_id: str, rows: Iterable[Row], *, bump_version: bool = True
    ) -> tuple[int, int]:
        """Add rows, or change the row with the same query_tag cells; (added, changed)."""
        return self.store.put_rows(enrichment_id, rows, bump_version=bump_version)

    def delete_rows(
        self, enrichment_id: str, keys: Iterable[Row], *, bump_version: bool = True
    ) -> int:
        """Remove rows by their query_tag cells (mappings of title → value); how many went."""
        return self.store.delete_rows(enrichment_id, keys, bump_version=bump_version)

    def set_active(self, enrichment_id: str, active: bool) -> None:
        self.store.set_schema(enrichment_id, active=active, name=None)

    def deactivate(self, enrichment_id: str) -> None:
        self.set_active(enrichment_id, False)

    def rename(self, enrichment_id: str, map_name: str) -> None:
        """Change the map name (`map_name` on v1, `config.name` on v2.1)."""
        self.store.set_schema(enrichment_id, active=None, name=map_name)

    def delete_enrichment(self, enrichment_id: str) -> None:
        """Remove the enrichment and its table."""
        self.store.delete(enrichment_id)

    # ------------------------------------------------------------ internals

    def _record(self, request: RecordedRequest) -> None:
        with self._requests_lock:
            self._requests.append(request)

    def api_for_path(self, path: str) -> ApiVersion:
        for api in facts.API_VERSIONS.values():
            if path.startswith(api.enrichments):
                return api
        return facts.API_VERSIONS[facts.DEFAULT_API_VERSION]

    def job_location(self, api: ApiVersion, job_id: str) -> str:
        path = api.job(job_id)
        return self.url + path if self.absolute_location else path
