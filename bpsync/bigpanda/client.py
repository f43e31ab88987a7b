"""The BigPanda enrichment API client: the only module in bpsync that imports httpx.

Covers both API generations (`facts.API_VERSIONS`): schemas (list/get/create/update), the
full-table upload (`POST …/{id}/map`, api doc §5) and its asynchronous job (§7).

Safety rules it enforces, with the doc section that motivates each:
- requests stay under 4/s per process through one shared `RateLimiter` (§9: 5 req/s);
- 429/502/503/504 and transport failures are retried with backoff and jitter, `Retry-After`
  honoured; other 4xx and 500 are not (§9);
- a POST whose body was fully sent but got no answer is NOT re-sent: BigPanda may have accepted
  it (§9 "never retry a POST upload blindly after a timeout"); the caller re-plans;
- uploads stream from disk, reopened on each attempt, with an explicit Content-Length, so memory
  does not grow with a 500 MB table (§5.2);
- the token lives in a `_Secret`, is put in a header per request and never appears in a message,
  repr or log line.
"""

from __future__ import annotations

import email.utils
import hashlib
import json
import os
import random
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import quote, urljoin, urlsplit

import h11
import httpx

from bpsync.bigpanda import facts
from bpsync.bigpanda.models import (
    Enrichment,
    EnrichmentSpec,
    Job,
    ProgressCallback,
    ReadProgress,
    TableRead,
    UploadReceipt,
    cell_text,
    parse_enrichment,
)
from bpsync.bigpanda.models import excerpt as _excerpt
from bpsync.bigpanda.urls import check_base_url
from bpsync.errors import ApiError, AuthError, JobFailed, JobTimeout, NotFoundError
from bpsync.table import format_row

Clock = Callable[[], float]
Sleep = Callable[[float], None]
Log = Callable[[str], None]

UPLOAD_CHUNK_BYTES = 1 << 20  # 1 MiB: big enough for throughput, small enough for flat RSS
DEFAULT_TIMEOUT = httpx.Timeout(connect=10.0, write=300.0, read=120.0, pool=30.0)
# A job is polled again after this share of the time waited so far (see wait_for_job).
POLL_SHARE = 0.25

# Failures worth another attempt: the request may never have reached BigPanda. h11 raises its
# own LocalProtocolError (not an httpx error) when a re-sent body does not match Content-Length.
_RETRYABLE_ERRORS: tuple[type[BaseException], ...] = (httpx.TransportError, h11.LocalProtocolError)
# ... except these, which retrying cannot fix.
_FATAL_ERRORS: tuple[type[BaseException], ...] = (httpx.UnsupportedProtocol, httpx.ProxyError)


class _Secret:
    """A string that never shows itself in repr/str (so not in tracebacks or logs)."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def redact(self, text: str) -> str:
        """`text` with every occurrence of the secret replaced (bodies may echo headers)."""
        return text.replace(self._value, "***") if self._value else text

    def __repr__(self) -> str:
        return "'***'"

    __str__ = __repr__


# ---------------------------------------------------------------------------- rate limiting


class RateLimiter:
    """At most `per_second` requests start in any 1 s, across every thread that shares it.

    Requests may go out together after a pause (an apply's list, create and upload), but
    never closer than evenly spaced ones over a longer run: with n = `per_second` (a whole
    number), any n + 1 requests span at least 1 s, and any n + 2 at least (n + 1) / n s
    (1.25 s at 4/s).
    The second rule is the margin even spacing gave: the server, which allows n + 1 in a
    second (§9: 5 at 4/s), sees one too many only if the network delays one request 0.25 s
    more than another. (Plain bursts lacked it: 4 sent together, then 4 more 1 s later, put
    8 in one of BigPanda's 1-second windows as soon as the first 4 were held up by new TLS
    connections.) Each caller reserves a send time under the lock and sleeps outside it, so
    threads queue fairly without holding the lock while waiting.
    """

    def __init__(
        self,
        per_second: float = facts.CLIENT_RATE_LIMIT_PER_SECOND,
        *,
        clock: Clock = time.monotonic,
        sleep: Sleep = time.sleep,
    ) -> None:
        if per_second <= 0:
            raise ValueError("per_second must be positive")
        # n requests may start together; n + 1 and n + 2 span what evenly spaced ones do.
        self._burst = max(1, int(per_second))
        self._spans = (self._burst / per_second, (self._burst + 1) / per_second)
        self._clock = clock
        self._sleep = sleep
        # Send times of the last burst + 1 requests, oldest first (reserved, maybe future).
        self._sent: deque[float] = deque(maxlen=self._burst + 1)
        self._lock = threading.Lock()

    def acquire(self, sleep: Sleep | None = None) -> float:
        """Block until a request may go (in `sleep`, else the limiter's own); return how
        long we waited."""
        with self._lock:
            now = self._clock()
            at = self._next_slot(now)
            self._sent.append(at)
        wait = at - now
        if wait > 0:
            (sleep or self._sleep)(wait)
        return max(wait, 0.0)

    def _next_slot(self, now: float) -> float:
        sent, n = self._sent, self._burst
        at = now
        if len(sent) >= n:
            at = max(at, sent[-n] + self._spans[0])  # n + 1 requests: 1 s at a whole rate
        if len(sent) > n:
            at = max(at, sent[-n - 1] + self._spans[1])  # n + 2: the margin
        return at


_shared_limiter = RateLimiter()


def process_rate_limiter() -> RateLimiter:
    """The one limiter of this process on real time: commands run one after another in a
    process share its history (as the threads of one apply do), so no burst of one follows
    another's requests. Its waits use each caller's sleep (the CLI's ends at Ctrl-C)."""
    return _shared_limiter


# ---------------------------------------------------------------------------- request bodies


class _TrackedBody(httpx.SyncByteStream):
    """A request body that can be sent again and knows whether it was sent completely.

    `opener` is called on every iteration, so a retry reopens the file from byte 0 rather than
    continuing a half-read handle. `fully_sent` is set only after the last chunk was handed to
    the transport and the generator resumed, i.e. the whole body went out.
    """

    def __init__(self, opener: Callable[[], Iterator[bytes]]) -> None:
        self._opener = opener
        self.fully_sent = False
        self.bytes_sent = 0
        self.sha256 = hashlib.sha256()

    def reset(self) -> None:
        self.fully_sent = False
        self.bytes_sent = 0
        self.sha256 = hashlib.sha256()

    def __iter__(self) -> Iterator[bytes]:
        self.reset()
        for chunk in self._opener():
            self.sha256.update(chunk)
            self.bytes_sent += len(chunk)
            yield chunk
        self.fully_sent = True


def _file_chunks(
    path: Path, fault: Callable[[str], None] | None = None
) -> Callable[[], Iterator[bytes]]:
    def chunks() -> Iterator[bytes]:
        # Test seam (crash matrix): `fault("mid-upload")` once about half the file was sent.
        half = path.stat().st_size // 2 if fault is not None else -1
        sent = 0
        with path.open("rb") as fh:
            while chunk := fh.read(UPLOAD_CHUNK_BYTES):
                if fault is not None and sent <= half < sent + len(chunk):
                    if half > sent:
                        yield chunk[: half - sent]
                    fault("mid-upload")
                    chunk = chunk[half - sent :]
                    sent = half
                    half = -1
                sent += len(chunk)
                yield chunk

    return chunks


def _bytes_chunks(data: bytes) -> Callable[[], Iterator[bytes]]:
    def chunks() -> Iterator[bytes]:
        yield data

    return chunks


@dataclass
class _Body:
    content_type: str
    length: Callable[[], int]  # re-read per attempt: the file may have changed
    stream: _TrackedBody
    # Sending it twice has the effect of sending it once: a full-table upload replaces the
    # table with the same bytes. A create is not: a lost answer may hide a new enrichment.
    idempotent: bool = False


def _json_body(payload: Mapping[str, Any]) -> _Body:
    data = json.dumps(payload).encode()
    return _Body(facts.JSON_CONTENT_TYPE, lambda: len(data), _TrackedBody(_bytes_chunks(data)))


def _file_body(path: Path, fault: Callable[[str], None] | None = None) -> _Body:
    return _Body(
        facts.UPLOAD_CONTENT_TYPE,
        lambda: path.stat().st_size,
        _TrackedBody(_file_chunks(path, fault)),
        idempotent=True,
    )


# ---------------------------------------------------------------------------- helpers


def _retry_after_seconds(value: str | None, now_wall: float) -> float | None:
    """`Retry-After` as seconds from now: delta-seconds or an HTTP-date (RFC 9110 §10.2.3)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - now_wall)


def _describe_error(exc: BaseException) -> str:
    text = str(exc) or "no detail"
    return f"{type(exc).__name__}: {text}"


def _same_origin(a: str, b: str) -> bool:
    pa, pb = urlsplit(a), urlsplit(b)
    return (pa.scheme, pa.hostname, pa.port) == (pb.scheme, pb.hostname, pb.port)


# ---------------------------------------------------------------------------- the client


class BigPandaClient:
    """A BigPanda enrichment API session. Thread-safe: share one instance between threads."""

    def __init__(
        self,
        base_url: str,
        token: str,
        api_version: str = facts.DEFAULT_API_VERSION,
        *,
        transport: httpx.BaseTransport | None = None,
        clock: Clock = time.monotonic,
        sleep: Sleep = time.sleep,
        wall_clock: Clock = time.time,
        rate_limiter: RateLimiter | None = None,
        log: Log | None = None,
        timeout: httpx.Timeout = DEFAULT_TIMEOUT,
        max_attempts: int = 5,
        max_retry_seconds: float = 60.0,
        backoff_base: float = 1.0,
        backoff_cap: float = 30.0,
        poll_initial: float = 0.2,
        poll_max: float = 30.0,
        job_not_found_grace: float = 15.0,
        rng: random.Random | None = None,
        fault: Callable[[str], None] | None = None,
        on_retry: Log | None = None,
    ) -> None:
        if api_version not in facts.API_VERSIONS:
            known = ", ".join(facts.API_VERSIONS)
            raise ValueError(f"unknown API version {api_version!r}; use one of {known}")
        self.base_url = check_base_url(base_url)
        self.api = facts.API_VERSIONS[api_version]
        self._token = _Secret(token)
        self._clock, self._sleep, self._wall = clock, sleep, wall_clock
        if rate_limiter is None:
            real_clock = clock is time.monotonic and sleep is time.sleep
            rate_limiter = _shared_limiter if real_clock else RateLimiter(clock=clock, sleep=sleep)
        self._limiter = rate_limiter
        self._log = log
        self._timeout = timeout
        self.max_attempts, self.max_retry_seconds = max_attempts, max_retry_seconds
        self.backoff_base, self.backoff_cap = backoff_base, backoff_cap
        self.poll_initial, self.poll_max = poll_initial, poll_max
        self.job_not_found_grace = job_not_found_grace
        self._rng = rng or random.Random()
        self._fault = fault  # test seam: called with "mid-upload" half-way through an upload
        self._on_retry = on_retry  # each retry, as it happens (the CLI: on stderr)
        # verify=True always: TLS verification is not configurable on purpose.
        if transport is None:
            # TCP_NODELAY: headers and a small JSON body go out in two writes; with Nagle
            # and delayed ACKs each such request would stall ~40 ms.
            nodelay = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]
            transport = httpx.HTTPTransport(socket_options=nodelay)
        self._http = httpx.Client(transport=transport, timeout=timeout, follow_redirects=False)

    def __repr__(self) -> str:
        return (
            f"BigPandaClient(base_url={self.base_url!r}, api_version={self.api.name!r}, "
            f"token={self._token!r})"
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> BigPandaClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -------------------------------------------------------------- schema operations

    def list_enrichments(self) -> list[Enrichment]:
        """Every enrichment schema the token can see (`{"data": [...]}` or a bare list)."""
        body = self._json(self._call("GET", self.api.enrichments, what="listing enrichments"))
        items = body.get("data") if isinstance(body, dict) else body
        if not isinstance(items, list):
            raise ApiError(f"unexpected answer listing enrichments: {_excerpt(body)}")
        return [parse_enrichment(item) for item in items if isinstance(item, dict)]

    def get_enrichment(self, enrichment_id: str) -> Enrichment:
        path = self.api.enrichment(_seg(enrichment_id))
        response = self._call("GET", path, what=f"reading enrichment {enrichment_id}")
        return parse_enrichment(self._json_object(response))

    def create_enrichment(self, spec: EnrichmentSpec) -> Enrichment:
        body = self.enrichment_body(spec)
        response = self._call(
            "POST", self.api.enrichments, json_body=body, what=f"creating enrichment {spec.name!r}"
        )
        return parse_enrichment(self._json_object(response))

    def update_enrichment(
        self,
        enrichment_id: str,
        *,
        active: bool | None = None,
        name: str | None = None,
        description: str | None = None,
        when: Any = None,
    ) -> Enrichment:
        """PATCH the given keys; keys this API version does not document are not sent (SPEC §1).

        v1 has no `note`/`when`: if nothing documented is left, nothing is sent and the current
        object is returned.
        """
        body = self.update_body(active=active, name=name, description=description, when=when)
        if not body:
            return self.get_enrichment(enrichment_id)
        path = self.api.enrichment(_seg(enrichment_id))
        response = self._call(
            "PATCH", path, json_body=body, what=f"updating enrichment {enrichment_id}"
        )
        parsed = self._maybe_json(response)
        if isinstance(parsed, dict) and ("id" in parsed or isinstance(parsed.get("data"), dict)):
            return parse_enrichment(parsed)
        return self.get_enrichment(enrichment_id)  # the PATCH answer's shape is undocumented

    def enrichment_body(self, spec: EnrichmentSpec) -> dict[str, Any]:
        """The create body for this API version (§4.1 v1, §4.2 v2.1)."""
        body: dict[str, Any] = {"type": facts.ENRICHMENT_TYPE, "active": spec.active}
        if "when" in self.api.extra_keys and spec.when is not None:
            body["when"] = spec.when
        if "note" in self.api.extra_keys and spec.description is not None:
            body["note"] = spec.description
        body["config"] = {self.api.name_key: spec.name, "fields": [dict(f) for f in spec.fields]}
        return body

    def update_body(
        self,
        *,
        active: bool | None = None,
        name: str | None = None,
        description: str | None = None,
        when: Any = None,
    ) -> dict[str, Any]:
        """The PATCH body for this API version, holding only what is to change."""
        body: dict[str, Any] = {}
        if active is not None:
            body["active"] = active
        if "when" in self.api.extra_keys and when is not None:
            body["when"] = when
        if "note" in self.api.extra_keys and description is not None:
            body["note"] = description
        if name is not None:
            body["config"] = {self.api.name_key: name}
        return body

    # -------------------------------------------------------------- upload and jobs

    def upload_table(self, enrichment_id: str, path: Path) -> UploadReceipt:
        """Replace the enrichment's whole table with the file's exact bytes (§5.1)."""
        body = _file_body(Path(path), self._fault)
        response = self._call(
            "POST",
            self.api.upload(_seg(enrichment_id)),
            body=body,
            what=f"uploading {path} to enrichment {enrichment_id}",
        )
        job_id, job_url = self._job_from_upload(response)
        return UploadReceipt(
            enrichment_id=enrichment_id,
            job_id=job_id,
            job_url=job_url,
            sha256=body.stream.sha256.hexdigest(),
            bytes_sent=body.stream.bytes_sent,
        )

    def get_job(self, job_id_or_url: str) -> Job:
        """One look at a job, by id or by the URL an upload returned."""
        url = self._job_url(job_id_or_url)
        body = self._json_object(self._call("GET", url, what=f"reading job {job_id_or_url}"))
        data = body["data"] if isinstance(body.get("data"), dict) else body
        job_id = str(data.get("job_id") or data.get("id") or _last_segment(url))
        return Job(job_id=job_id, status=str(data.get("status", "")).lower(), raw=dict(data))

    def wait_for_job(
        self,
        receipt_or_job_id: UploadReceipt | str,
        *,
        timeout: float,
        on_progress: ProgressCallback | None = None,
    ) -> Job:
        """Poll until the job is `done` (returned) or `failed` (JobFailed), or JobTimeout.

        Each pause is a quarter of the time waited so far, at least `poll_initial` and at
        most `poll_max`: the wait oversleeps the job's end by at most a quarter (a ×1.5
        back-off overslept by up to half), and polls thin out as a long job goes on (every
        poll counts against the 5 req/s limit, §13). A 404 within `job_not_found_grace`
        seconds means "not visible yet".
        """
        if isinstance(receipt_or_job_id, UploadReceipt):
            target, job_id = receipt_or_job_id.job_url, receipt_or_job_id.job_id
        else:
            target = job_id = receipt_or_job_id
        start = self._clock()
        status = "unknown"
        while True:
            job = self._poll_once(target, start)
            waited = self._clock() - start
            if job is not None:
                status = job.status
                if on_progress is not None:
                    on_progress(job, waited)
                if job.status == facts.JOB_DONE:
                    return job
                if job.status == facts.JOB_FAILED:
                    raise JobFailed(job.job_id, self._token.redact(facts.job_reason(job.raw)))
            remaining = timeout - waited
            if remaining <= 0:
                raise JobTimeout(job_id, waited, status)
            interval = min(max(waited * POLL_SHARE, self.poll_initial), self.poll_max)
            self._sleep(min(interval, remaining))

    def _poll_once(self, target: str, start: float) -> Job | None:
        try:
            return self.get_job(target)
        except NotFoundError:
            if self._clock() - start < self.job_not_found_grace:
                return None  # §7: a fresh job may not be visible yet
            raise

    def _job_from_upload(self, response: httpx.Response) -> tuple[str, str]:
        """Job id and URL from a 202: the `location` header first, else `job_id` (§7)."""
        body = self._maybe_json(response)
        data = body.get("data") if isinstance(body, dict) and "job_id" not in body else body
        job_id = data.get("job_id") if isinstance(data, dict) else None
        location = response.headers.get("location")
        if location:
            url = urljoin(str(response.request.url), location)
            if _same_origin(url, self.base_url):
                return str(job_id or _last_segment(url)), url
            self._emit(f"ignoring location {location!r}: not on {self.base_url}")
        if not job_id:
            raise ApiError(
                f"BigPanda accepted the upload (HTTP {response.status_code}) but returned "
                f"neither a location header nor a job_id: {_excerpt(response.text)}",
                hint="the upload may still be processed; check the enrichment's version later",
            )
        return str(job_id), self.base_url + self.api.job(_seg(str(job_id)))

    def _job_url(self, job_id_or_url: str) -> str:
        if "/" not in job_id_or_url:
            return self.base_url + self.api.job(_seg(job_id_or_url))
        url = urljoin(self.base_url + "/", job_id_or_url)
        if not _same_origin(url, self.base_url):
            # Never send the token to a host the user did not configure.
            raise ApiError(f"job URL {job_id_or_url!r} is not on {self.base_url}")
        return url

    # -------------------------------------------------------------- reading rows (v2.1)

    @property
    def can_read_rows(self) -> bool:
        return self.api.name in facts.TABLE_READ_API_VERSIONS

    def read_table(
        self,
        enrichment_id: str,
        columns: Sequence[str],
        dest: Path,
        *,
        table: str,
        per_page: int = facts.READ_REQUEST_PER_PAGE,
        on_progress: ReadProgress | None = None,
    ) -> TableRead:
        """Read the enrichment's rows page by page into `dest`, a canonical CSV with `columns`
        as its header (api doc §15.1, SPEC §7).

        Rows stream to a temporary file beside `dest`, renamed over it only when the read is
        complete: `dest` is never half-written. Pages go until the announced total is held or
        a page comes back empty, whatever `per_page` was served. A total that moves between
        pages (a concurrent upload) restarts the read once; moving again fails. `table` names
        the table in messages.
        """
        if not self.can_read_rows:
            raise ApiError(
                f"{table}: API {self.api.name} documents no way to read a table's rows",
                hint="export the table from BigPanda's UI and pass it with --csv FILE",
            )
        dest = Path(dest)
        tmp = dest.with_name(f".{dest.name}.{os.getpid()}.{threading.get_ident()}.part")
        requests = 0
        try:
            for restarts in (0, 1):
                with tmp.open("wb") as out:
                    outcome = self._read_pages(
                        enrichment_id, columns, out, table, per_page, on_progress
                    )
                    out.flush()
                    os.fsync(out.fileno())
                requests += outcome[2]
                if outcome[0] is not None:
                    os.replace(tmp, dest)
                    return TableRead(outcome[0], outcome[1], requests, restarts)
                self._emit(f"{table}: the row count moved during the read; reading again")
            raise ApiError(
                f"{table}: the rows of enrichment {enrichment_id} kept changing while they were "
                "read (the announced total moved twice; an upload is probably running)",
                hint="wait until no upload to this enrichment is running (in BigPanda's UI or "
                "another bpsync apply), then run the command again",
            )
        finally:
            tmp.unlink(missing_ok=True)

    def _read_pages(
        self,
        enrichment_id: str,
        columns: Sequence[str],
        out: BinaryIO,
        table: str,
        per_page: int,
        on_progress: ReadProgress | None,
    ) -> tuple[int | None, int | None, int]:
        """One pass over the pages: (rows written or None when the total moved, the total,
        requests sent)."""
        out.write((format_row(columns) + "\n").encode("utf-8"))
        known = frozenset(columns)
        rows = requests = 0
        total: int | None = None
        page = facts.READ_FIRST_PAGE
        while True:
            requests += 1
            items, count, per_page = self._read_page(enrichment_id, page, per_page, table)
            if page == facts.READ_FIRST_PAGE:
                total = count
            elif count is not None and total is not None and count != total:
                return None, total, requests
            if not items:
                break
            lines = [
                _row_line(item, columns, known, table, rows + i) for i, item in enumerate(items)
            ]
            out.write(("\n".join(lines) + "\n").encode("utf-8"))
            rows += len(items)
            if on_progress is not None:
                on_progress(rows, total)
            if total is not None and rows >= total:
                break
            page += 1
        return rows, total, requests

    def _read_page(
        self, enrichment_id: str, page: int, per_page: int, table: str
    ) -> tuple[list[Any], int | None, int]:
        """One page's items and announced count, and the per_page to ask from now on."""
        what = f"reading page {page} of table {table} (enrichment {enrichment_id})"
        query = f"?{facts.READ_PAGE_PARAM}={page}&{facts.READ_PER_PAGE_PARAM}={per_page}"
        path = self.api.upload(_seg(enrichment_id)) + query
        try:
            response = self._call("GET", path, what=what)
        except AuthError as e:
            raise AuthError(
                e.message,
                hint=f"the {self.api.token_kind} needs permission to read mapping enrichment "
                "tables; ask a BigPanda admin for a key with that permission",
                status=e.status,
            ) from None
        except NotFoundError as e:
            raise NotFoundError(
                f"{table}: enrichment {enrichment_id} was not found in BigPanda (HTTP 404)",
                hint="check the id (`bpsync import --all --generate` lists what exists) and "
                "that BIGPANDA_API_URL / api.region point at the right organisation",
                status=e.status,
            ) from None
        except ApiError as e:
            if e.status == 400 and per_page > facts.READ_DEFAULT_PER_PAGE and page == 1:
                self._emit(
                    f"{table}: per_page={per_page} refused; asking {facts.READ_DEFAULT_PER_PAGE}"
                )
                return self._read_page(enrichment_id, page, facts.READ_DEFAULT_PER_PAGE, table)
            raise ApiError(
                f"{table}: {e.message}",
                hint=e.hint or "BigPanda did not serve the table; try again later",
                status=e.status,
            ) from None
        body = self._json_object(response)
        items = body.get(facts.READ_ITEMS_KEY)
        if items is None:
            items = []
        if not isinstance(items, list):
            raise ApiError(f"{what}: `{facts.READ_ITEMS_KEY}` is not a list: {_excerpt(body)}")
        return items, _count_of(body), per_page

    # -------------------------------------------------------------- transport

    def _call(
        self,
        method: str,
        path_or_url: str,
        *,
        what: str,
        json_body: Mapping[str, Any] | None = None,
        body: _Body | None = None,
    ) -> httpx.Response:
        """Send with retries, then turn any non-2xx answer into the right ApiError."""
        if json_body is not None:
            body = _json_body(json_body)
        url = path_or_url if "://" in path_or_url else self.base_url + path_or_url
        response = self._send_with_retries(method, url, body, what)
        if response.is_success:
            return response
        raise self._error_for(response, what)

    def _send_with_retries(
        self, method: str, url: str, body: _Body | None, what: str
    ) -> httpx.Response:
        start = self._clock()
        attempt = 0
        while True:
            attempt += 1
            self._limiter.acquire(self._sleep)
            outcome, last = self._attempt(method, url, body, what)
            elapsed = self._clock() - start
            delay = self._backoff(attempt)
            if isinstance(outcome, httpx.Response):
                if outcome.status_code not in facts.RETRY_STATUSES:
                    return outcome
                after = _retry_after_seconds(outcome.headers.get("retry-after"), self._wall())
                delay = max(delay, after or 0.0)
            if attempt >= self.max_attempts or elapsed + delay > self.max_retry_seconds:
                raise self._gave_up(what, attempt, elapsed, outcome, last)
            line = f"retrying {method} {_path(url)} in {delay:.1f}s (attempt {attempt}: {last})"
            if self._on_retry is not None:
                self._on_retry(self._token.redact(line))
            else:
                self._emit(line)
            self._sleep(delay)

    def _gave_up(
        self,
        what: str,
        attempt: int,
        elapsed: float,
        outcome: httpx.Response | BaseException,
        last: str,
    ) -> ApiError:
        tried = f"after {attempt} attempt(s) over {elapsed:.1f}s"
        if isinstance(outcome, httpx.ConnectError):
            refused = "refused" in str(outcome).lower()
            how = "refused the connection" if refused else "could not be reached"
            return ApiError(
                f"{what}: {self.base_url} {how} ({tried}; last result: {last})",
                hint="check the endpoint (BIGPANDA_API_URL or api.base_url in bpsync.yaml) "
                "and the region: a typo or the wrong region is likelier than a BigPanda outage",
            )
        return ApiError(
            f"{what}: gave up {tried} at {self.base_url}; last result: {last}",
            hint="BigPanda is unavailable or rate limiting; try again later",
            status=outcome.status_code if isinstance(outcome, httpx.Response) else None,
        )

    def _attempt(
        self, method: str, url: str, body: _Body | None, what: str
    ) -> tuple[httpx.Response | BaseException, str]:
        """One try: the response, or the retryable exception; plus a one-line summary."""
        request = self._build(method, url, body)
        began = self._clock()
        try:
            response = self._http.send(request)
        except _FATAL_ERRORS as exc:
            raise ApiError(f"{what}: {self._token.redact(_describe_error(exc))}") from None
        except _RETRYABLE_ERRORS as exc:
            summary = self._token.redact(_describe_error(exc))
            self._emit(f"{method} {_path(url)} -> {summary} ({self._clock() - began:.2f}s)")
            if method == "POST" and body is not None and body.stream.fully_sent:
                if body.idempotent:
                    self._emit(
                        f"{method} {_path(url)}: the whole body was sent but no answer came; "
                        "sending it again (a full-table upload is idempotent)"
                    )
                    return exc, summary
                raise ApiError(
                    f"{what}: the request was sent completely but no answer came ({summary}); "
                    "BigPanda may have accepted it, so it was not sent again",
                    hint="its fate is unknown: run `bpsync plan` to see the current state "
                    "before applying again",
                ) from None
            return exc, summary
        self._emit(
            f"{method} {_path(url)} -> {response.status_code} ({self._clock() - began:.2f}s)"
        )
        return response, f"HTTP {response.status_code}"

    def _build(self, method: str, url: str, body: _Body | None) -> httpx.Request:
        # The auth header is built per request and never stored on the httpx client.
        headers = {
            "Authorization": f"Bearer {self._token.reveal()}",
            "Accept": facts.JSON_CONTENT_TYPE,
        }
        if body is not None:
            headers["Content-Type"] = body.content_type
        request = self._http.build_request(method, url, headers=headers)
        if body is not None:
            # Our own re-iterable stream instead of httpx's one-shot content, with the length
            # stated up front so the upload is not chunked (§5.1 examples send a plain body).
            body.stream.reset()  # a failed connect must not inherit the last attempt's flags
            request.headers["Content-Length"] = str(body.length())
            request = httpx.Request(
                method, request.url, headers=request.headers, stream=body.stream,
                extensions=request.extensions,
            )  # fmt: skip
        return request

    def _backoff(self, attempt: int) -> float:
        """Exponential backoff with "equal jitter": between half and all of base·2^(n-1)."""
        ceiling = min(self.backoff_cap, self.backoff_base * 2.0 ** (attempt - 1))
        return ceiling * (0.5 + 0.5 * self._rng.random())

    def _emit(self, line: str) -> None:
        if self._log is not None:
            self._log(self._token.redact(line))

    # -------------------------------------------------------------- answers

    def _error_for(self, response: httpx.Response, what: str) -> ApiError:
        status = response.status_code
        detail = self._token.redact(_excerpt(_message_of(response)))
        if status in (401, 403):
            return AuthError(
                f"{what}: BigPanda refused the token (HTTP {status}): {detail}",
                hint=f"API {self.api.name} needs an {self.api.token_kind} with enrichment and "
                f"job permissions; a token from another region or of the other kind fails too",
                status=status,
            )
        if status == 404:
            return NotFoundError(
                f"{what}: not found (HTTP 404) at {self.base_url}",
                hint="the enrichment may have been deleted, or the region/base URL is wrong "
                "(a token from another region gets 404, not 401)",
                status=status,
            )
        if status == 400:
            return ApiError(
                f"{what}: BigPanda rejected the request (HTTP 400): {detail}", status=400
            )
        return ApiError(f"{what}: HTTP {status}: {detail}", status=status)

    def _maybe_json(self, response: httpx.Response) -> Any:
        try:
            return response.json()
        except ValueError:
            return None

    def _json(self, response: httpx.Response) -> Any:
        parsed = self._maybe_json(response)
        if parsed is None:
            raise ApiError(
                f"BigPanda answered {_path(str(response.request.url))} with something that is "
                f"not JSON (HTTP {response.status_code}): {_excerpt(response.text)}"
            )
        return parsed

    def _json_object(self, response: httpx.Response) -> dict[str, Any]:
        parsed = self._json(response)
        if not isinstance(parsed, dict):
            raise ApiError(f"expected a JSON object from BigPanda, got: {_excerpt(parsed)}")
        return parsed


def _message_of(response: httpx.Response) -> str:
    """BigPanda's error message if the body has one, else the body text (§9: undocumented)."""
    try:
        body = response.json()
    except ValueError:
        return response.text or "(empty body)"
    if isinstance(body, dict):
        for key in ("message", "error", "errors", "detail", "details"):
            if body.get(key):
                value = body[key]
                return value if isinstance(value, str) else json.dumps(value)
    return json.dumps(body)


def _count_of(body: Mapping[str, Any]) -> int | None:
    """The announced row count: the first count key present (api doc §15.1)."""
    for key in facts.READ_COUNT_KEYS:
        value = body.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
    return None


def _row_line(
    item: Any, columns: Sequence[str], known: frozenset[str], table: str, index: int
) -> str:
    """One read row as a canonical CSV line, cells in `columns` order (a missing cell is
    empty: BigPanda may leave out empty values)."""
    if not isinstance(item, dict):
        raise ApiError(
            f"{table}: row {index + 1} read from BigPanda is not an object: {_excerpt(item)}"
        )
    extra = [k for k in item if k not in known]
    if extra:
        raise ApiError(
            f"{table}: row {index + 1} read from BigPanda has column(s) "
            f"{', '.join(map(repr, extra))} that the enrichment's fields "
            f"({', '.join(columns)}) do not have",
            hint="the enrichment's schema and table disagree in BigPanda; check it in the UI",
        )
    return format_row([cell_text(item.get(c)) for c in columns])


def _seg(value: str) -> str:
    """One path segment: ids are opaque, so never let one add path components."""
    return quote(value, safe="")


def _path(url: str) -> str:
    return urlsplit(url).path or "/"


def _last_segment(url: str) -> str:
    return urlsplit(url).path.rstrip("/").rsplit("/", 1)[-1]
