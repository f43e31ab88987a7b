"""BigPandaClient logic through httpx.MockTransport, with a fake clock (no real sleeping)."""

from __future__ import annotations

import email.utils
import hashlib
import json
import random
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h11
import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bpsync.bigpanda.client import BigPandaClient, RateLimiter
from bpsync.bigpanda.models import EnrichmentSpec, Job, UploadReceipt, parse_enrichment
from bpsync.bigpanda.urls import check_base_url, resolve_base_url
from bpsync.errors import ApiError, AuthError, ConfigError, JobFailed, JobTimeout, NotFoundError

BASE = "https://api.bigpanda.io"
TOKEN = "s3cr3t-T0KEN-value-42"
FIELDS = (
    {"title": "application", "type": "query_tag"},
    {"title": "owner", "type": "result_tag", "override_existing": False},
)
Handler = Callable[[httpx.Request], httpx.Response]


class FakeTime:
    """Monotonic and wall clocks that only move when the client sleeps."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def wall(self) -> float:
        return 1_700_000_000.0 + self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


class TopRandom(random.Random):
    """Jitter at its maximum, so the backoff schedule is exact."""

    def random(self) -> float:
        return 1.0


def make_client(
    handler: Handler, version: str = "v1", *, limiter: bool = False, **kw: Any
) -> tuple[BigPandaClient, FakeTime]:
    ft = FakeTime()
    rate = None if limiter else RateLimiter(1e6, clock=ft.clock, sleep=ft.sleep)
    kw.setdefault("rng", TopRandom())
    client = BigPandaClient(
        BASE,
        TOKEN,
        version,
        transport=httpx.MockTransport(handler),
        clock=ft.clock,
        sleep=ft.sleep,
        wall_clock=ft.wall,
        rate_limiter=rate,
        **kw,
    )
    return client, ft


def reply(status: int, body: Any = None, headers: dict[str, str] | None = None) -> httpx.Response:
    if body is None:
        return httpx.Response(status, headers=headers)
    return httpx.Response(status, json=body, headers=headers)


def enrichment_json(eid: str = "abc123", **extra: Any) -> dict[str, Any]:
    obj = {
        "id": eid,
        "type": "mapping",
        "active": True,
        "version": 3,
        "config": {"map_name": "owners", "fields": list(FIELDS)},
    }
    obj.update(extra)
    return obj


# ---------------------------------------------------------------------------- retries


def test_backoff_doubles_and_gives_up_after_five_attempts_naming_them() -> None:
    calls: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return reply(503, {"message": "busy"})

    client, ft = make_client(handler)
    with pytest.raises(ApiError) as err:
        client.list_enrichments()
    assert len(calls) == 5
    assert ft.sleeps == [1.0, 2.0, 4.0, 8.0]
    assert "5 attempt" in str(err.value) and "HTTP 503" in str(err.value)
    assert err.value.status == 503


def test_jitter_stays_between_half_and_full_backoff() -> None:
    client, ft = make_client(lambda r: reply(502), rng=random.Random(7))
    with pytest.raises(ApiError):
        client.list_enrichments()
    for n, slept in enumerate(ft.sleeps):
        assert 0.5 * 2**n <= slept <= 2**n
    assert len(set(ft.sleeps)) == len(ft.sleeps)  # really jittered


def test_backoff_is_capped() -> None:
    client, ft = make_client(lambda r: reply(504), backoff_base=10, backoff_cap=15)
    with pytest.raises(ApiError):
        client.list_enrichments()
    assert ft.sleeps[:3] == [10.0, 15.0, 15.0]


def test_gives_up_when_the_next_wait_would_pass_sixty_seconds() -> None:
    client, ft = make_client(lambda r: reply(503), backoff_base=20, backoff_cap=100)
    with pytest.raises(ApiError) as err:
        client.list_enrichments()
    assert ft.sleeps == [20.0, 40.0]  # a third wait (80 s) would pass the 60 s budget
    assert "3 attempt" in str(err.value)


def test_retry_after_seconds_is_honoured() -> None:
    answers = iter([reply(429, {}, {"Retry-After": "7"}), reply(200, {"data": []})])
    client, ft = make_client(lambda r: next(answers))
    assert client.list_enrichments() == []
    assert ft.sleeps == [7.0]


def test_retry_after_http_date_is_honoured() -> None:
    ft_probe = FakeTime()
    date = email.utils.formatdate(ft_probe.wall() + 12, usegmt=True)
    answers = iter([reply(503, {}, {"Retry-After": date}), reply(200, [])])
    client, ft = make_client(lambda r: next(answers))
    assert client.list_enrichments() == []
    assert len(ft.sleeps) == 1 and 11.0 <= ft.sleeps[0] <= 12.0


def test_retry_after_beyond_the_budget_gives_up_at_once() -> None:
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return reply(429, {}, {"Retry-After": "300"})

    client, ft = make_client(handler)
    with pytest.raises(ApiError) as err:
        client.list_enrichments()
    assert len(calls) == 1 and ft.sleeps == []
    assert "HTTP 429" in str(err.value)


@pytest.mark.parametrize(
    ("status", "error"),
    [(400, ApiError), (401, AuthError), (403, AuthError), (404, NotFoundError), (500, ApiError)],
)
def test_no_retry_on_other_client_errors_nor_500(status: int, error: type[ApiError]) -> None:
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return reply(status, {"message": "nope"})

    client, ft = make_client(handler)
    with pytest.raises(error) as err:
        client.get_enrichment("abc")
    assert len(calls) == 1 and ft.sleeps == []
    assert err.value.status == status


@pytest.mark.parametrize(
    "exc",
    [
        httpx.ConnectError("refused"),
        httpx.ConnectTimeout("slow"),
        httpx.RemoteProtocolError("Server disconnected"),
        h11.LocalProtocolError("Too little data for declared Content-Length"),
    ],
)
def test_transport_failures_are_retried(exc: Exception) -> None:
    attempts = []

    def handler(request: httpx.Request) -> httpx.Response:
        attempts.append(request)
        if len(attempts) < 3:
            raise exc
        return reply(200, {"data": [enrichment_json()]})

    client, ft = make_client(handler)
    assert [e.id for e in client.list_enrichments()] == ["abc123"]
    assert len(attempts) == 3 and ft.sleeps == [1.0, 2.0]


def test_persistent_transport_failure_names_attempts_and_last_error() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused")

    client, _ = make_client(handler)
    with pytest.raises(ApiError) as err:
        client.list_enrichments()
    assert "5 attempt" in str(err.value) and "ConnectError: connection refused" in str(err.value)


# ---------------------------------------------------------------------------- uploads


@pytest.fixture
def table(tmp_path: Path) -> Path:
    path = tmp_path / "big.csv"
    row = b"app-%07d,owner-%07d\n"
    path.write_bytes(b"application,owner\n" + b"".join(row % (i, i) for i in range(150_000)))
    assert path.stat().st_size > 2 * (1 << 20)  # several upload chunks
    return path


def test_upload_sends_exact_file_with_headers_and_reports_its_sha(table: Path) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        request.read()
        seen.append(request)
        return reply(202, {"job_id": "abc_1_indexcsv", "status": "pending"})

    client, _ = make_client(handler)
    receipt = client.upload_table("abc", table)
    data = table.read_bytes()
    (request,) = seen
    assert request.method == "POST"
    assert request.url.path == "/resources/v1.0/enrichments/abc/map"
    assert request.headers["content-type"] == "text/csv; charset=utf8"
    assert request.headers["content-length"] == str(len(data))
    assert "transfer-encoding" not in request.headers
    assert request.content == data
    assert receipt.sha256 == hashlib.sha256(data).hexdigest()
    assert receipt.bytes_sent == len(data)
    assert receipt.job_id == "abc_1_indexcsv"
    assert receipt.job_url == BASE + "/resources/v1.0/enrichment-jobs/abc_1_indexcsv"


class HalfSendTransport(httpx.BaseTransport):
    """First attempt: one chunk goes out, then the line drops. Later: read it all, answer 202.

    (MockTransport reads the whole body before its handler runs, so it cannot show this.)
    """

    def __init__(self) -> None:
        self.bodies: list[bytes] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        assert isinstance(request.stream, httpx.SyncByteStream)
        if not self.bodies:
            self.bodies.append(next(iter(request.stream)))
            raise httpx.WriteError("broken pipe")
        self.bodies.append(b"".join(request.stream))
        return reply(202, {"job_id": "j1"})


def test_upload_retry_after_a_half_sent_body_resends_it_from_the_start(table: Path) -> None:
    ft = FakeTime()
    transport = HalfSendTransport()
    client = BigPandaClient(
        BASE, TOKEN, transport=transport, clock=ft.clock, sleep=ft.sleep, rng=TopRandom()
    )
    receipt = client.upload_table("abc", table)
    data = table.read_bytes()
    assert len(transport.bodies[0]) < len(data)
    assert transport.bodies[1] == data
    assert receipt.sha256 == hashlib.sha256(data).hexdigest() and receipt.bytes_sent == len(data)
    assert ft.sleeps == [1.0]


@pytest.mark.parametrize(
    "lost",
    [httpx.ReadTimeout("timed out"), httpx.RemoteProtocolError("Server disconnected")],
    ids=["timeout", "reset"],
)
def test_upload_is_resent_whole_when_the_answer_is_lost_after_the_full_body(
    table: Path, lost: Exception
) -> None:
    # A full-table upload replaces the table with the same bytes: sending it again is safe
    # (issue 13, defect 5; before, the apply failed and the next run re-sent it anyway).
    bodies: list[bytes] = []

    def handler(request: httpx.Request) -> httpx.Response:
        bodies.append(request.read())  # the whole body went out ...
        if len(bodies) == 1:
            raise lost  # ... and no answer came
        return reply(202, {"job_id": "j2"})

    client, ft = make_client(handler)
    receipt = client.upload_table("abc", table)
    data = table.read_bytes()
    assert bodies == [data, data]
    assert receipt.job_id == "j2" and receipt.bytes_sent == len(data)
    assert receipt.sha256 == hashlib.sha256(data).hexdigest()
    assert len(ft.sleeps) == 1


def test_upload_whose_answer_is_always_lost_stops_within_the_retry_budget(table: Path) -> None:
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        request.read()
        calls.append(request)
        raise httpx.ReadTimeout("timed out")

    client, ft = make_client(handler)
    with pytest.raises(ApiError, match="gave up after 5 attempt"):
        client.upload_table("abc", table)
    assert len(calls) == 5 and len(ft.sleeps) == 4


def test_create_is_not_resent_when_the_answer_is_lost() -> None:
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        request.read()
        calls.append(request)
        raise httpx.RemoteProtocolError("Server disconnected without sending a response.")

    client, _ = make_client(handler)
    with pytest.raises(ApiError, match="may have accepted"):
        client.create_enrichment(EnrichmentSpec("owners", FIELDS))
    assert len(calls) == 1


def test_upload_retries_429_and_5xx_answers_even_after_the_full_body(table: Path) -> None:
    answers = iter([reply(429, {}, {"Retry-After": "3"}), reply(503), reply(202, {"job_id": "j"})])
    sizes = []

    def handler(request: httpx.Request) -> httpx.Response:
        sizes.append(len(request.read()))
        return next(answers)

    client, ft = make_client(handler)
    client.upload_table("abc", table)
    assert sizes == [table.stat().st_size] * 3
    assert ft.sleeps == [3.0, 2.0]


# ---------------------------------------------------------------------------- rate limiting


def test_rate_limiter_keeps_at_most_four_requests_in_any_simulated_second() -> None:
    ft = FakeTime()
    times: list[float] = []

    def handler(request: httpx.Request) -> httpx.Response:
        times.append(ft.now)
        return reply(200, [])

    client = BigPandaClient(
        BASE,
        TOKEN,
        transport=httpx.MockTransport(handler),
        clock=ft.clock,
        sleep=ft.sleep,
    )
    for _ in range(20):
        client.list_enrichments()
    assert len(times) == 20
    for start in times:
        assert sum(1 for t in times if start <= t < start + 1.0) <= 4
    assert times[-1] - times[0] >= 4.0  # 20 requests need at least 4 more seconds


def test_after_a_pause_four_requests_go_at_once_then_the_fifth_waits_a_second() -> None:
    # An apply's list, create and upload need not queue 0.25 s apart when nothing else ran.
    ft = FakeTime()
    limiter = RateLimiter(4.0, clock=ft.clock, sleep=ft.sleep)
    waits = [limiter.acquire() for _ in range(4)]
    assert waits == [0.0, 0.0, 0.0, 0.0] and ft.sleeps == []
    assert limiter.acquire() == pytest.approx(1.0)  # 5 requests span 1 s
    assert limiter.acquire() == pytest.approx(0.25)  # 6 span 1.25 s: even spacing's margin


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from([0.0, 0.0, 0.01, 0.1, 0.2, 0.3, 0.7, 1.1, 3.0]), max_size=40))
def test_requests_never_crowd_closer_than_evenly_spaced_ones(gaps: list[float]) -> None:
    """Whatever the pauses between callers: at most 4 in any second, any 6 span 1.25 s (a 6th
    in one of BigPanda's seconds needs a delay of 0.25 s), and no caller waits longer than
    those two rules ask."""
    ft = FakeTime()
    limiter = RateLimiter(4.0, clock=ft.clock, sleep=ft.sleep)
    sent: list[float] = []
    for gap in gaps:
        ft.now += gap
        asked = ft.now
        limiter.acquire()
        sent.append(ft.now)
        due = max(
            [asked]
            + ([sent[-5] + 1.0] if len(sent) > 4 else [])
            + ([sent[-6] + 1.25] if len(sent) > 5 else [])
        )
        assert ft.now == pytest.approx(due)
    for i in range(len(sent)):
        assert i < 4 or sent[i] - sent[i - 4] >= 1.0 - 1e-9
        assert i < 5 or sent[i] - sent[i - 5] >= 1.25 - 1e-9


def test_a_limiter_below_one_request_a_second_spaces_them_evenly() -> None:
    ft = FakeTime()
    limiter = RateLimiter(0.5, clock=ft.clock, sleep=ft.sleep)
    assert [limiter.acquire() for _ in range(3)] == [0.0, pytest.approx(2.0), pytest.approx(2.0)]


def test_rate_limiter_is_shared_safely_between_threads() -> None:
    limiter = RateLimiter(50)
    stamps: list[float] = []
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(15):
            limiter.acquire()
            with lock:
                stamps.append(time.monotonic())

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stamps.sort()
    assert len(stamps) == 90
    for i, start in enumerate(stamps):
        in_window = sum(1 for t in stamps[i:] if t < start + 1.0 - 0.01)
        assert in_window <= 50


# ---------------------------------------------------------------------------- errors in words


@pytest.mark.parametrize(("version", "kind"), [("v1", "Org Token"), ("v2.1", "User API Key")])
def test_auth_error_names_the_token_kind_and_region(version: str, kind: str) -> None:
    client, _ = make_client(lambda r: reply(401, {"message": "Unauthorized"}), version)
    with pytest.raises(AuthError) as err:
        client.list_enrichments()
    text = str(err.value)
    assert kind in text and "region" in text and "401" in text


def test_not_found_says_deleted_or_wrong_region() -> None:
    client, _ = make_client(lambda r: reply(404, {"message": "not found"}))
    with pytest.raises(NotFoundError) as err:
        client.get_enrichment("gone")
    text = str(err.value)
    assert "deleted" in text and "region" in text and "gone" in text


def test_bad_request_shows_bigpandas_message_truncated() -> None:
    long_message = "fields[1].type must be query_tag or result_tag " + "x" * 2000
    client, _ = make_client(lambda r: reply(400, {"status": "error", "message": long_message}))
    with pytest.raises(ApiError) as err:
        client.create_enrichment(EnrichmentSpec("owners", FIELDS))
    text = str(err.value)
    assert "HTTP 400" in text and "fields[1].type must be query_tag" in text
    assert len(text) < 800 and "more chars" in text


def test_server_error_shows_status_and_body() -> None:
    client, _ = make_client(lambda r: httpx.Response(500, text="<html>Internal oops</html>"))
    with pytest.raises(ApiError) as err:
        client.list_enrichments()
    assert "HTTP 500" in str(err.value) and "Internal oops" in str(err.value)


# ---------------------------------------------------------------------------- token hygiene


def test_token_is_sent_but_never_shown(table: Path) -> None:
    logged: list[str] = []
    sent: list[str] = []
    answers = iter(
        [
            reply(401, {"message": f"bad token Bearer {TOKEN}"}),  # a body echoing it
            reply(400, {"message": f"header was {TOKEN}"}),
            reply(503, {"message": TOKEN}),
        ]
    )

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request.headers["authorization"])
        try:
            return next(answers)
        except StopIteration:
            raise httpx.ConnectError(f"cannot reach with {TOKEN}") from None

    client, _ = make_client(handler, log=logged.append, max_attempts=2)
    errors: list[Exception] = []
    for call in (client.list_enrichments, client.list_enrichments, client.list_enrichments):
        with pytest.raises(ApiError) as err:
            call()
        errors.append(err.value)
    assert sent[0] == f"Bearer {TOKEN}"
    shown = [repr(client), str(client.__dict__), *logged]
    shown += [s for e in errors for s in (str(e), repr(e), str(e.args))]
    assert logged and all(TOKEN not in s for s in shown)
    assert "***" in repr(client)


def test_log_lines_say_method_path_status_and_time() -> None:
    logged: list[str] = []
    client, _ = make_client(lambda r: reply(200, []), log=logged.append)
    client.list_enrichments()
    assert logged == ["GET /resources/v1.0/enrichments -> 200 (0.00s)"]


# ---------------------------------------------------------------------------- wire bodies


def capture(version: str, answer: httpx.Response) -> tuple[BigPandaClient, list[httpx.Request]]:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        request.read()
        seen.append(request)
        return answer

    client, _ = make_client(handler, version)
    return client, seen


def test_v1_create_body_never_carries_when_or_note() -> None:
    client, seen = capture("v1", reply(201, enrichment_json()))
    spec = EnrichmentSpec("owners", FIELDS, active=False, description="d", when="a = 1")
    created = client.create_enrichment(spec)
    assert seen[0].url.path == "/resources/v1.0/enrichments"
    assert json.loads(seen[0].content) == {
        "type": "mapping",
        "active": False,
        "config": {"map_name": "owners", "fields": list(FIELDS)},
    }
    assert seen[0].headers["content-type"] == "application/json"
    assert created.id == "abc123" and created.version == 3 and created.name == "owners"


def test_v21_create_body_has_name_when_and_note() -> None:
    answer = reply(200, {"id": "x1", "config": {"name": "owners", "fields": list(FIELDS)}})
    client, seen = capture("v2.1", answer)
    created = client.create_enrichment(
        EnrichmentSpec("owners", FIELDS, description="CMDB", when="env = prod")
    )
    assert seen[0].url.path == "/resources/v2.1/mapping-enrichment"
    assert json.loads(seen[0].content) == {
        "type": "mapping",
        "active": True,
        "when": "env = prod",
        "note": "CMDB",
        "config": {"name": "owners", "fields": list(FIELDS)},
    }
    assert created.version is None  # missing in the answer: tolerated


def test_v21_create_body_omits_absent_when_and_note() -> None:
    client, seen = capture("v2.1", reply(200, enrichment_json()))
    client.create_enrichment(EnrichmentSpec("owners", FIELDS))
    assert set(json.loads(seen[0].content)) == {"type", "active", "config"}


def test_v1_update_sends_only_documented_keys() -> None:
    client, seen = capture("v1", reply(200, enrichment_json(active=False)))
    updated = client.update_enrichment("abc123", active=False, name="n", description="d", when="w")
    assert seen[0].method == "PATCH" and seen[0].url.path == "/resources/v1.0/enrichments/abc123"
    assert json.loads(seen[0].content) == {"active": False, "config": {"map_name": "n"}}
    assert updated.active is False


def test_v1_update_of_v21_only_keys_sends_no_patch() -> None:
    client, seen = capture("v1", reply(200, enrichment_json()))
    client.update_enrichment("abc123", description="d", when="w")
    assert [r.method for r in seen] == ["GET"]


def test_v21_update_body() -> None:
    client, seen = capture("v2.1", reply(200, enrichment_json()))
    client.update_enrichment("abc123", name="n", description="d", when={"IN": ["a", ["b"]]})
    assert seen[0].url.path == "/resources/v2.1/mapping-enrichment/abc123"
    assert json.loads(seen[0].content) == {
        "when": {"IN": ["a", ["b"]]},
        "note": "d",
        "config": {"name": "n"},
    }


def test_ids_cannot_escape_their_path_segment() -> None:
    client, seen = capture("v1", reply(200, enrichment_json()))
    client.get_enrichment("../jobs/x")
    assert seen[0].url.raw_path == b"/resources/v1.0/enrichments/..%2Fjobs%2Fx"


@pytest.mark.parametrize(
    "body", [{"data": [enrichment_json("a"), enrichment_json("b")]}, [enrichment_json("a")]]
)
def test_list_accepts_wrapped_and_bare_lists(body: Any) -> None:
    client, _ = capture("v2.1", reply(200, body))
    assert [e.id for e in client.list_enrichments()][:1] == ["a"]


def test_parse_enrichment_reads_both_shapes() -> None:
    v1 = parse_enrichment(enrichment_json())
    v21 = parse_enrichment(
        {"id": "z", "active": False, "note": "n", "when": "x", "config": {"name": "N"}}
    )
    assert (v1.name, v1.version, v1.description, v1.fields) == ("owners", 3, None, FIELDS)
    assert (v21.name, v21.version, v21.description, v21.when, v21.active) == (
        "N",
        None,
        "n",
        "x",
        False,
    )


# ---------------------------------------------------------------------------- jobs


V21_JOB = "/resources/v2.1/alert-enrichments-jobs/J9"


@pytest.mark.parametrize(
    ("location", "expected"),
    [
        ("/resources/v2.1/alert-enrichments-jobs/J9", BASE + V21_JOB),
        (BASE + "/custom/jobs/J9", BASE + "/custom/jobs/J9"),
        ("https://evil.example/jobs/J9", BASE + V21_JOB),
        (None, BASE + V21_JOB),
    ],
)  # fmt: skip
def test_job_url_follows_location_on_our_host_only(
    tmp_path: Path, location: str | None, expected: str
) -> None:
    headers = {"location": location} if location else None
    client, _ = capture("v2.1", reply(202, {"job_id": "J9", "status": "pending"}, headers))
    path = tmp_path / "t.csv"
    path.write_text("a,b\n1,2\n")
    receipt = client.upload_table("e1", path)
    assert (receipt.job_id, receipt.job_url) == ("J9", expected)


def test_job_id_taken_from_location_when_body_has_none(tmp_path: Path) -> None:
    client, _ = capture("v1", reply(202, None, {"location": "/resources/v1.0/enrichment-jobs/J7"}))
    path = tmp_path / "t.csv"
    path.write_text("a,b\n1,2\n")
    assert client.upload_table("e1", path).job_id == "J7"


def test_upload_answer_without_job_is_an_error(tmp_path: Path) -> None:
    client, _ = capture("v1", reply(202, {"status": "pending"}))
    path = tmp_path / "t.csv"
    path.write_text("a,b\n1,2\n")
    with pytest.raises(ApiError, match="neither a location header nor a job_id"):
        client.upload_table("e1", path)


def job_server(statuses: list[tuple[int, dict[str, Any]]]) -> tuple[Handler, list[str]]:
    paths: list[str] = []
    answers = iter(statuses)

    def handler(request: httpx.Request) -> httpx.Response:
        paths.append(request.url.path)
        status, body = next(answers, statuses[-1])
        return reply(status, body)

    return handler, paths


def test_wait_for_job_polls_with_growing_intervals_until_done() -> None:
    states = ["pending", "pending", "started", "started", "started", "done"]
    handler, paths = job_server([(200, {"job_id": "J", "status": s}) for s in states])
    client, ft = make_client(handler)
    progress: list[tuple[str, float]] = []
    job = client.wait_for_job(
        "J", timeout=600, on_progress=lambda j, w: progress.append((j.status, w))
    )
    assert job.status == "done" and job.job_id == "J"
    assert paths == ["/resources/v1.0/enrichment-jobs/J"] * 6
    assert ft.sleeps == pytest.approx([0.2] * 5)  # a quarter of the wait, at least 0.2 s
    assert [s for s, _ in progress] == states
    assert progress[-1][1] == pytest.approx(sum(ft.sleeps))


def test_wait_for_job_pauses_a_quarter_of_the_wait_so_far() -> None:
    """The pause grows with the wait, so the job's end is overslept by at most a quarter."""
    states = ["started"] * 30 + ["done"]
    handler, _ = job_server([(200, {"job_id": "J", "status": s}) for s in states])
    client, ft = make_client(handler)
    client.wait_for_job("J", timeout=600)
    waited = 0.0
    for slept in ft.sleeps:
        assert slept == pytest.approx(min(max(waited / 4, 0.2), 30.0))
        waited += slept
    assert ft.sleeps[-1] > 2 * ft.sleeps[0]  # the polls thin out


def test_poll_interval_is_capped_at_thirty_seconds() -> None:
    handler, _ = job_server([(200, {"job_id": "J", "status": "started"})])
    client, ft = make_client(handler)
    with pytest.raises(JobTimeout):
        client.wait_for_job("J", timeout=300)
    assert max(ft.sleeps) == 30.0


def test_failed_job_raises_with_bigpandas_reason() -> None:
    handler, _ = job_server([(200, {"job_id": "J", "status": "failed", "error": "bad header"})])
    client, _ = make_client(handler, "v2.1")
    with pytest.raises(JobFailed) as err:
        client.wait_for_job("J", timeout=60)
    assert err.value.reason == "bad header" and "J" in str(err.value)


def test_job_timeout_names_the_job_and_says_it_may_finish() -> None:
    handler, _ = job_server([(200, {"job_id": "J", "status": "started"})])
    client, ft = make_client(handler)
    receipt = UploadReceipt("e", "J", BASE + "/resources/v1.0/enrichment-jobs/J", "0" * 64, 1)
    with pytest.raises(JobTimeout) as err:
        client.wait_for_job(receipt, timeout=10)
    assert err.value.job_id == "J" and "may still" in str(err.value)
    assert ft.now - 1000.0 == pytest.approx(10.0)


def test_job_404_is_tolerated_during_the_grace_period() -> None:
    handler, paths = job_server(
        [(404, {}), (404, {}), (200, {"job_id": "J", "status": "done"})]
    )  # fmt: skip
    client, _ = make_client(handler)
    assert client.wait_for_job("J", timeout=60).status == "done"
    assert len(paths) == 3


def test_job_404_after_the_grace_period_is_not_found() -> None:
    handler, _ = job_server([(404, {})])
    client, _ = make_client(handler, job_not_found_grace=5)
    with pytest.raises(NotFoundError):
        client.wait_for_job("J", timeout=60)


def test_get_job_refuses_foreign_urls() -> None:
    client, seen = capture("v1", reply(200, {"status": "done"}))
    with pytest.raises(ApiError, match="not on"):
        client.get_job("https://elsewhere.example/jobs/J")
    assert seen == []
    job = client.get_job("/resources/v1.0/enrichment-jobs/J5")
    assert job == Job("J5", "done", {})


# ---------------------------------------------------------------------------- urls


def test_base_url_precedence_env_then_base_url_then_region() -> None:
    assert resolve_base_url("eu", None, None) == "https://eu-api.bigpanda.io"
    assert resolve_base_url("eu", "https://bp.corp/", None) == "https://bp.corp"
    assert resolve_base_url("eu", "https://bp.corp", "http://127.0.0.1:8471/") == (
        "http://127.0.0.1:8471"
    )


def test_unknown_region_is_a_config_error_listing_regions() -> None:
    with pytest.raises(ConfigError, match="us"):
        resolve_base_url("apac", None, None)


@pytest.mark.parametrize(
    "url", ["http://localhost:1", "http://127.9.9.9", "http://[::1]:8471", "https://x.example"]
)
def test_loopback_http_and_any_https_are_accepted(url: str) -> None:
    assert check_base_url(url + "/") == url


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("http://api.bigpanda.io", "https"),
        ("http://10.0.0.1:8471", "https"),
        ("ftp://api.bigpanda.io", "valid"),
        ("api.bigpanda.io", "valid"),
        ("https://host:notaport", "valid"),
        ("https://user:pw@api.bigpanda.io", "credentials"),
    ],
)
def test_bad_base_urls_are_config_errors(url: str, words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        check_base_url(url)


def test_client_refuses_plain_http_to_remote_hosts() -> None:
    with pytest.raises(ConfigError):
        BigPandaClient("http://api.bigpanda.io", TOKEN)


def test_importing_the_package_does_not_load_httpx() -> None:
    # The value objects (and the applier, typed against them) come without the transport.
    code = (
        "import sys, bpsync.bigpanda, bpsync.bigpanda.models, bpsync.applier, bpsync.refresh; "
        "assert 'httpx' not in sys.modules, 'httpx loaded'"
    )
    root = Path(__file__).resolve().parent.parent
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root)
