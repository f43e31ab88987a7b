"""The BigPanda emulator's HTTP server (SPEC §6), on 127.0.0.1 only.

A stdlib `ThreadingHTTPServer` speaking HTTP/1.1 with keep-alive. Per request, in this order:
injected latency, Bearer auth (before routing, like the real API), the 5 req/s per-token rate
limit (§9), injected 5xx/429, then the route. Every request is recorded (Authorization value
redacted) so tests can check what the client really sent.

When it answers before reading a request body (401, 429, injected faults, 404 on upload) it
says `Connection: close` and then reads and discards the body for a while before closing: a
socket closed with unread data sends a TCP reset that can destroy the answer in flight.
"""

from __future__ import annotations

import hashlib
import json
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from bpsync.bigpanda import facts
from bpsync.bigpanda.facts import ApiVersion
from bpsync.emulator.faults import Faults
from bpsync.emulator.store import BadRequest, JobRunner, Store, job_view, make_root, render

HOST = "127.0.0.1"
MAX_JSON_BYTES = 1_000_000
READ_CHUNK = 1 << 20
LINGER_SECONDS = 5.0  # how long to drain an unwanted body before closing


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


@dataclass
class _Exchange:
    """What the handler learns about the request while serving it."""

    method: str
    path: str
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
        ex = _Exchange(method=self.command, path=unquote(urlsplit(self.path).path))
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
        )


_INVALID: Any = object()


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
    ) -> None:
        self.token = token or None
        self.faults = Faults()
        self.faults.set_latency(latency)
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
