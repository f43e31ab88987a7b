"""The client against the emulator over real sockets on 127.0.0.1 (never any other address)."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from bpsync.bigpanda import facts
from bpsync.bigpanda.client import BigPandaClient, RateLimiter
from bpsync.bigpanda.models import EnrichmentSpec
from bpsync.emulator import Emulator
from bpsync.errors import ApiError, AuthError, JobFailed, JobTimeout

TOKEN = "wire-test-token-7f3a"
FIELDS = (
    {"title": "application", "type": "query_tag"},
    {"title": "owner", "type": "result_tag"},
    {"title": "Runbook URL", "type": "result_tag", "tag_name": "runbook_url"},
)
GOOD = "application,owner,Runbook URL\nbilling,ana,https://w/b\nsales,bo,https://w/s\n"
ROOT = Path(__file__).resolve().parent.parent


_OPEN: list[BigPandaClient] = []


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    while _OPEN:
        _OPEN.pop().close()


def fast_client(emulator: Emulator, version: str = "v1", **kw: Any) -> BigPandaClient:
    """A client with real clock but tiny backoff/poll steps so the suite stays fast."""
    kw.setdefault("rate_limiter", RateLimiter(1000))
    client = BigPandaClient(
        emulator.url,
        kw.pop("token", TOKEN),
        version,
        **{"backoff_base": 0.01, "backoff_cap": 0.05, "poll_initial": 0.02, "poll_max": 0.05, **kw},
    )
    _OPEN.append(client)  # closed after the test (unclosed sockets are errors here)
    return client


def write(tmp_path: Path, content: str | bytes, name: str = "t.csv") -> Path:
    path = tmp_path / name
    if isinstance(content, str):
        content = content.encode()
    path.write_bytes(content)
    return path


def big_table(tmp_path: Path, rows: int = 400_000) -> Path:
    """A table of ~16 MB: larger than socket buffers, so a drop really cuts it mid-body."""
    path = tmp_path / "big.csv"
    line = b"app-%08d,owner-%08d,https://wiki.example.net/runbooks/%08d\n"
    body = b"".join(line % (i, i, i) for i in range(rows))
    path.write_bytes(b"application,owner,Runbook URL\n" + body)
    return path


def uploads(emulator: Emulator) -> list[Any]:
    return [r for r in emulator.requests if r.method == "POST" and r.path.endswith("/map")]


# ---------------------------------------------------------------------------- happy path


@pytest.mark.parametrize("version", ["v1", "v2.1"])
def test_create_upload_wait_done(emu: Emulator, tmp_path: Path, version: str) -> None:
    client = fast_client(emu, version)
    created = client.create_enrichment(EnrichmentSpec("owners", FIELDS, description="d"))
    assert created.version == 1 and created.name == "owners"
    path = write(tmp_path, GOOD)
    receipt = client.upload_table(created.id, path)
    job = client.wait_for_job(receipt, timeout=10)
    assert job.status == "done"
    assert client.get_enrichment(created.id).version == 2
    assert emu.table_rows(created.id) == [
        {"application": "billing", "owner": "ana", "Runbook URL": "https://w/b"},
        {"application": "sales", "owner": "bo", "Runbook URL": "https://w/s"},
    ]
    (sent,) = uploads(emu)
    assert sent.content_length == sent.body_bytes == path.stat().st_size
    assert sent.sha256 == receipt.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert sent.headers["content-type"] == facts.UPLOAD_CONTENT_TYPE
    assert [e.id for e in client.list_enrichments()] == [created.id]
    client.close()


def test_absolute_location_is_followed(tmp_path: Path) -> None:
    with Emulator(job_seconds=0.05, rate_limit=False, absolute_location=True) as emulator:
        client = fast_client(emulator, "v2.1")
        created = client.create_enrichment(EnrichmentSpec("owners", FIELDS))
        receipt = client.upload_table(created.id, write(tmp_path, GOOD))
        assert receipt.job_url.startswith(emulator.url + "/resources/v2.1/alert-enrichments-jobs/")
        assert client.wait_for_job(receipt, timeout=10).status == "done"


def test_update_in_place_and_structure_change_refused(emu: Emulator) -> None:
    client = fast_client(emu, "v1")
    created = client.create_enrichment(EnrichmentSpec("owners", FIELDS))
    updated = client.update_enrichment(created.id, active=False, name="N")
    assert (updated.active, updated.name) == (False, "N")
    raw = httpx.patch(
        f"{emu.url}/resources/v1.0/enrichments/{created.id}",
        json={"config": {"fields": [FIELDS[0]]}},
        headers={"Authorization": f"Bearer {TOKEN}"},
    )
    assert raw.status_code == 400 and "create a new enrichment" in raw.json()["message"]


def test_v21_update_in_place_takes_active_and_when_but_not_the_name(emu: Emulator) -> None:
    """api doc §15.2: a v2.1 PATCH ignores config.name; the answer shows what BigPanda holds."""
    client = fast_client(emu, "v2.1")
    created = client.create_enrichment(EnrichmentSpec("owners", FIELDS))
    updated = client.update_enrichment(created.id, active=False, name="N", when="a = b")
    assert (updated.active, updated.name, updated.when) == (False, "owners", "a = b")


# ---------------------------------------------------------------------------- retries on the wire


def test_retried_uploads_each_send_the_whole_body(emu: Emulator, tmp_path: Path) -> None:
    client = fast_client(emu)
    created = client.create_enrichment(EnrichmentSpec("owners", FIELDS))
    path = big_table(tmp_path, rows=50_000)
    emu.faults.fail_next_requests(2, status=503, path_contains="/map")
    receipt = client.upload_table(created.id, path)
    client.wait_for_job(receipt, timeout=20)
    sent = uploads(emu)
    size = path.stat().st_size
    assert [r.status for r in sent] == [503, 503, 202]
    assert all(r.content_length == size for r in sent)
    assert sent[-1].body_bytes == size and sent[-1].sha256 == receipt.sha256


def test_dropped_connection_mid_upload_then_success(emu: Emulator, tmp_path: Path) -> None:
    client = fast_client(emu)
    created = client.create_enrichment(EnrichmentSpec("owners", FIELDS))
    path = big_table(tmp_path)
    size = path.stat().st_size
    emu.faults.drop_upload_after(bytes=100_000, times=1)
    receipt = client.upload_table(created.id, path)
    assert client.wait_for_job(receipt, timeout=30).status == "done"
    first, second = uploads(emu)
    assert first.dropped and first.status is None and first.body_bytes < size
    assert second.status == 202 and second.content_length == second.body_bytes == size
    assert second.sha256 == receipt.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert client.get_enrichment(created.id).version == 2


def test_429_before_the_body_is_read_then_success(emu: Emulator, tmp_path: Path) -> None:
    client = fast_client(emu)
    created = client.create_enrichment(EnrichmentSpec("owners", FIELDS))
    path = big_table(tmp_path, rows=50_000)
    emu.faults.fail_next_requests(1, status=429, retry_after=0, path_contains="/map")
    receipt = client.upload_table(created.id, path)
    assert client.wait_for_job(receipt, timeout=20).status == "done"
    rejected, accepted = uploads(emu)
    assert rejected.status == 429 and rejected.body_bytes == 0
    assert accepted.body_bytes == accepted.content_length == path.stat().st_size


def test_client_limiter_keeps_under_the_emulators_rate_limit(tmp_path: Path) -> None:
    with Emulator(job_seconds=0.05, rate_limit=True) as emulator:
        client = fast_client(emulator, rate_limiter=RateLimiter())  # the real 4/s default
        for _ in range(9):
            client.list_enrichments()
        assert all(r.status == 200 for r in emulator.requests)
        # 4/s as sent; arrival jitter may squeeze a 5th into a second, which BigPanda allows.
        assert emulator.max_requests_in_window(1.0) <= facts.SERVER_RATE_LIMIT_PER_SECOND


def test_emulator_429s_are_absorbed_by_retries() -> None:
    with Emulator(job_seconds=0.05, rate_limit=True) as emulator:
        client = fast_client(emulator, backoff_cap=1.0)  # no client-side limit
        for _ in range(12):
            client.list_enrichments()
        statuses = [r.status for r in emulator.requests]
        assert 429 in statuses and statuses.count(200) == 12


# ---------------------------------------------------------------------------- failed jobs


HEADER = "application,owner,Runbook URL\n"
CSV_RULES = [
    ("missing column", "application,owner\nbilling,ana\n", "missing column(s) 'Runbook URL'"),
    ("extra column", HEADER[:-1] + ",team\nb,a,u,t\n", "not in the schema 'team'"),
    ("duplicate column", HEADER[:-1] + ",owner\nb,a,u,o\n", "'owner' appears more than once"),
    ("no data rows", HEADER, "no data rows"),
    ("empty body", "", "empty"),
    ("duplicate rows", HEADER + "b,a,u\nc,d,e\nb,a,u\n", "line 4: duplicate of the row on line 2"),
    ("value too long", HEADER + "b,a," + "x" * 32_769 + "\n", "longer than 32768 bytes"),
    ("line break in value", HEADER + 'b,"a\nb",u\n', "contains a line break"),
    ("CRLF", HEADER.replace("\n", "\r\n") + "b,a,u\r\n", "carriage return"),
    ("not UTF-8", HEADER.encode() + b"b,\xff\xfe,u\n", "not valid UTF-8"),
    ("ragged row", HEADER + "b,a\n", "2 values, but the header has 3 columns"),
]


@pytest.mark.parametrize(
    ("content", "expected"), [r[1:] for r in CSV_RULES], ids=[r[0] for r in CSV_RULES]
)
def test_failed_job_says_which_csv_rule_broke(
    emu: Emulator, tmp_path: Path, content: str | bytes, expected: str
) -> None:
    client = fast_client(emu, "v2.1")
    created = client.create_enrichment(EnrichmentSpec("owners", FIELDS))
    receipt = client.upload_table(created.id, write(tmp_path, content))
    with pytest.raises(JobFailed) as err:
        client.wait_for_job(receipt, timeout=10)
    assert expected in err.value.reason
    assert emu.table_rows(created.id) is None  # nothing replaced
    assert client.get_enrichment(created.id).version == 1


def test_missing_final_newline_fails_with_the_truncated_frame_error(
    emu: Emulator, tmp_path: Path
) -> None:
    client = fast_client(emu)
    created = client.create_enrichment(EnrichmentSpec("owners", FIELDS))
    receipt = client.upload_table(created.id, write(tmp_path, GOOD.rstrip("\n")))
    with pytest.raises(JobFailed) as err:
        client.wait_for_job(receipt, timeout=10)
    assert err.value.reason == facts.TRUNCATED_FRAME_ERROR


def test_failed_upload_keeps_the_previous_table(emu: Emulator, tmp_path: Path) -> None:
    client = fast_client(emu)
    created = client.create_enrichment(EnrichmentSpec("owners", FIELDS))
    client.wait_for_job(client.upload_table(created.id, write(tmp_path, GOOD)), timeout=10)
    emu.faults.fail_next_jobs(1, reason="quota exceeded: 200 mapping result tags")
    with pytest.raises(JobFailed, match="quota exceeded"):
        client.wait_for_job(client.upload_table(created.id, write(tmp_path, GOOD)), timeout=10)
    assert len(emu.table_rows(created.id) or []) == 2
    assert client.get_enrichment(created.id).version == 2


def test_a_job_that_never_finishes_times_out(emu: Emulator, tmp_path: Path) -> None:
    client = fast_client(emu)
    created = client.create_enrichment(EnrichmentSpec("owners", FIELDS))
    emu.faults.hang_jobs(True)
    receipt = client.upload_table(created.id, write(tmp_path, GOOD))
    with pytest.raises(JobTimeout) as err:
        client.wait_for_job(receipt, timeout=0.5)
    assert receipt.job_id in str(err.value) and "started" in str(err.value)


# ---------------------------------------------------------------------------- auth


@pytest.mark.parametrize(("version", "kind"), [("v1", "Org Token"), ("v2.1", "User API Key")])
def test_wrong_token_is_an_auth_error(version: str, kind: str) -> None:
    with Emulator(token="the-right-one", rate_limit=False) as emulator:
        client = fast_client(emulator, version, token="the-wrong-one")
        with pytest.raises(AuthError) as err:
            client.list_enrichments()
        assert kind in str(err.value) and "the-wrong-one" not in str(err.value)
        assert fast_client(emulator, version, token="the-right-one").list_enrichments() == []


# ---------------------------------------------------------------------------- persistence & CLI


def test_data_dir_survives_a_restart(tmp_path: Path) -> None:
    data = tmp_path / "emu-data"
    with Emulator(data_dir=data, job_seconds=0.05, rate_limit=False) as first:
        client = fast_client(first, "v2.1")
        created = client.create_enrichment(EnrichmentSpec("owners", FIELDS, description="n"))
        client.wait_for_job(client.upload_table(created.id, write(tmp_path, GOOD)), timeout=10)
        receipt = client.upload_table(created.id, write(tmp_path, GOOD))
        client.wait_for_job(receipt, timeout=10)
    with Emulator(data_dir=data, job_seconds=0.05, rate_limit=False) as second:
        client = fast_client(second, "v2.1")
        again = client.get_enrichment(created.id)
        assert (again.name, again.description, again.version) == ("owners", "n", 3)
        assert len(second.table_rows(created.id) or []) == 2
        assert client.get_job(receipt.job_id).status == "done"


def test_module_cli_starts_answers_and_stops_on_sigterm() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "bpsync.emulator", "--port", "0", "--token", TOKEN],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        url = line.split()[-1]
        assert url.startswith("http://127.0.0.1:")
        with BigPandaClient(url, TOKEN, rate_limiter=RateLimiter(1000)) as client:
            assert client.list_enrichments() == []
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=10)
        proc.stdout.close()  # type: ignore[union-attr]
        proc.stderr.close()  # type: ignore[union-attr]
    assert code == 0


def test_upload_is_resent_when_the_answer_never_comes(tmp_path: Path) -> None:
    """A read timeout after the full body: the whole table is sent again, within the retry
    budget (issue 13: a full-table upload is idempotent); every copy BigPanda accepted holds
    the same bytes, so the table is what was sent."""
    with Emulator(job_seconds=0.05, rate_limit=False) as emulator:
        client = fast_client(emulator, "v2.1")
        created = client.create_enrichment(EnrichmentSpec("owners", FIELDS))
        emulator.faults.set_latency(1.0)
        slow = fast_client(
            emulator, "v2.1", timeout=httpx.Timeout(5.0, read=0.3), max_attempts=3
        )  # answers take 1 s: every attempt times out
        path = write(tmp_path, GOOD)
        with pytest.raises(ApiError, match="gave up after 3 attempt"):
            slow.upload_table(created.id, path)
        emulator.faults.set_latency(0)
        deadline = time.monotonic() + 5
        while len(uploads(emulator)) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)  # the emulator records a request when it has answered it
        emulator.wait_jobs()
        sent = uploads(emulator)
        assert len(sent) == 3
        assert {r.sha256 for r in sent} == {hashlib.sha256(path.read_bytes()).hexdigest()}
        assert emulator.table_rows(created.id) is not None
