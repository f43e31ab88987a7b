"""The BigPanda emulator on its own, spoken to with plain HTTP on 127.0.0.1."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from http.client import HTTPConnection
from pathlib import Path
from typing import Any

import httpx
import pytest

from bpsync.bigpanda import facts
from bpsync.emulator import Emulator
from bpsync.emulator.csvcheck import check_table

TOKEN = "emulator-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
FIELDS = [{"title": "app", "type": "query_tag"}, {"title": "owner", "type": "result_tag"}]
V1 = facts.API_VERSIONS["v1"]
V21 = facts.API_VERSIONS["v2.1"]


@pytest.fixture
def web(emu: Emulator) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=emu.url, headers=AUTH) as client:
        yield client


def create(web: httpx.Client, api: facts.ApiVersion = V1, **extra: Any) -> dict[str, Any]:
    body = {"type": "mapping", "config": {api.name_key: "owners", "fields": FIELDS}, **extra}
    response = web.post(api.enrichments, json=body)
    assert response.status_code in (200, 201), response.text
    return dict(response.json())


def wait_job(web: httpx.Client, api: facts.ApiVersion, job_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        job = dict(web.get(api.job(job_id)).json())
        if job["status"] in facts.JOB_FINAL_STATES:
            return job
        time.sleep(0.02)
    raise AssertionError("job did not finish")


# ---------------------------------------------------------------------------- auth & routing


@pytest.mark.parametrize(
    "headers", [{}, {"Authorization": "Bearer"}, {"Authorization": "Basic abc"}]
)
def test_auth_is_checked_before_routing(emu: Emulator, headers: dict[str, str]) -> None:
    for path in ("/no/such/route", V1.enrichments, V21.job("nope")):
        response = httpx.get(emu.url + path, headers=headers)
        assert response.status_code == 401 and "message" in response.json()


def test_only_the_configured_token_is_accepted() -> None:
    with Emulator(token="right", rate_limit=False) as emulator:
        wrong = httpx.get(emulator.url + V1.enrichments, headers={"Authorization": "Bearer no"})
        right = httpx.get(emulator.url + V1.enrichments, headers={"Authorization": "Bearer right"})
        assert (wrong.status_code, right.status_code) == (401, 200)


def test_unknown_ids_and_routes_are_404(web: httpx.Client) -> None:
    assert web.get(V1.enrichment("missing")).status_code == 404
    assert web.patch(V21.enrichment("missing"), json={"active": False}).status_code == 404
    assert web.post(V1.upload("missing"), content=b"a,b\n1,2\n").status_code == 404
    assert web.get(V1.job("missing_1_indexcsv")).status_code == 404
    assert web.get("/resources/v3/whatever").status_code == 404


# ---------------------------------------------------------------------------- schemas


def test_create_answers_201_on_v1_and_200_on_v21_in_each_shape(web: httpx.Client) -> None:
    v1 = web.post(
        V1.enrichments, json={"type": "mapping", "config": {"map_name": "a", "fields": FIELDS}}
    )
    v21 = web.post(
        V21.enrichments,
        json={
            "type": "mapping",
            "when": "x = 1",
            "note": "n",
            "config": {"name": "b", "fields": FIELDS},
        },
    )
    assert (v1.status_code, v21.status_code) == (201, 200)
    one, two = v1.json(), v21.json()
    assert re.fullmatch(r"[0-9a-f]{24}", one["id"])
    assert one["config"] == {"map_name": "a", "fields": FIELDS}
    assert set(one) == {"id", "type", "active", "version", "config"}
    assert (one["version"], one["active"]) == (1, True)
    assert (two["when"], two["note"], two["config"]["name"]) == ("x = 1", "n", "b")
    assert two["created_by"] == two["updated_by"]
    # Both versions see the same enrichments, each in its own shape.
    assert web.get(V21.enrichment(one["id"])).json()["config"]["name"] == "a"
    assert [e["id"] for e in web.get(V21.enrichments).json()["data"]] == [one["id"], two["id"]]
    assert [e["id"] for e in web.get(V1.enrichments).json()] == [one["id"], two["id"]]


BAD_SCHEMAS = [
    ({"type": "tag", "config": {"map_name": "a", "fields": FIELDS}}, "type must be"),
    ({"type": "mapping", "config": {"map_name": "a", "fields": []}}, "non-empty list"),
    ({"type": "mapping", "config": {"map_name": "a"}}, "non-empty list"),
    ({"type": "mapping"}, "config must be"),
    ({"type": "mapping", "config": {"fields": [FIELDS[0]]}}, "at least one query_tag"),
    (
        {"type": "mapping", "config": {"fields": [*FIELDS, {"title": "o2", "type": "x"}]}},
        "type must be query_tag or result_tag",
    ),
    (
        {
            "type": "mapping",
            "config": {"fields": [*FIELDS, {"title": "x", "type": "result_tag",
                                            "tag_name": "owner"}]},
        },
        "two result_tag fields target the tag 'owner'",
    ),
    ({"type": "mapping", "when": "a", "config": {"fields": FIELDS}}, "unknown key(s) for API v1"),
    ([1, 2], "JSON object"),
]  # fmt: skip


@pytest.mark.parametrize(("body", "words"), BAD_SCHEMAS)
def test_create_rejects_bad_schemas_with_a_message(
    web: httpx.Client, body: Any, words: str
) -> None:
    response = web.post(V1.enrichments, json=body)
    assert response.status_code == 400
    assert words in response.json()["message"]


def test_v1_patch_changes_name_and_active_but_never_fields(web: httpx.Client) -> None:
    eid = create(web, V1)["id"]
    ok = web.patch(V1.enrichment(eid), json={"active": False, "config": {"map_name": "N"}})
    assert ok.status_code == 200
    assert (ok.json()["active"], ok.json()["config"]["map_name"]) == (False, "N")
    same_fields = web.patch(V1.enrichment(eid), json={"config": {"fields": FIELDS}})
    assert same_fields.status_code == 200
    changed = web.patch(V1.enrichment(eid), json={"config": {"fields": FIELDS[:1]}})
    assert changed.status_code == 400
    assert "schema structure cannot be changed" in changed.json()["message"]
    assert web.patch(V1.enrichment(eid), json={"note": "x"}).status_code == 400  # v1 has none


def test_v21_patch_applies_active_when_note_and_silently_ignores_the_rest(
    web: httpx.Client,
) -> None:
    """api doc §15.2: a v2.1 schema PATCH changes only active/when/note; the answer is the
    schema as stored, so a client can see that a new name did not take."""
    eid = create(web, V21)["id"]
    ok = web.patch(
        V21.enrichment(eid),
        json={
            "active": False,
            "when": "x = 2",
            "note": "n2",
            "config": {"name": "N", "fields": FIELDS[:1]},
            "type": "tag",
            "unknown": 1,
        },
    )
    assert ok.status_code == 200
    body = ok.json()
    assert (body["active"], body["when"], body["note"]) == (False, "x = 2", "n2")
    assert body["config"]["name"] == "owners" and body["config"]["fields"] == FIELDS
    assert body["type"] == "mapping"
    assert web.get(V21.enrichment(eid)).json() == body
    assert web.get(V1.enrichment(eid)).json()["config"]["map_name"] == "owners"
    assert web.patch(V21.enrichment(eid), json={"active": "no"}).status_code == 400


def test_invalid_json_is_400(web: httpx.Client) -> None:
    response = web.post(V1.enrichments, content=b"{not json")
    assert response.status_code == 400 and "JSON" in response.json()["message"]


# ---------------------------------------------------------------------------- uploads and jobs


def test_upload_is_202_with_location_and_job_then_done(emu: Emulator, web: httpx.Client) -> None:
    eid = create(web)["id"]
    response = web.post(
        V1.upload(eid),
        content=b"app,owner\nbilling,ana\n",
        headers={"Content-Type": facts.UPLOAD_CONTENT_TYPE},
    )
    assert response.status_code == 202
    body = response.json()
    assert body["status"] == "pending" and body["end_time"] is None
    assert re.fullmatch(rf"{eid}_\d+_\d+_indexcsv", body["job_id"])
    assert response.headers["location"] == V1.job(body["job_id"])
    job = wait_job(web, V1, body["job_id"])
    assert job["status"] == "done" and job["end_time"] >= job["start_time"]
    assert set(job) == {"status", "job_id", "start_time", "end_time"}
    assert web.get(V1.enrichment(eid)).json()["version"] == 2
    assert emu.table_rows(eid) == [{"app": "billing", "owner": "ana"}]


def test_job_passes_through_pending_and_started(web: httpx.Client) -> None:
    with Emulator(job_seconds=0.6, rate_limit=False) as slow:
        client = httpx.Client(base_url=slow.url, headers=AUTH)
        eid = create(client)["id"]
        job_id = client.post(V1.upload(eid), content=b"app,owner\na,b\n").json()["job_id"]
        seen: list[str] = []
        while not seen or seen[-1] not in facts.JOB_FINAL_STATES:
            seen.append(client.get(V1.job(job_id)).json()["status"])
            time.sleep(0.05)
        client.close()
    assert seen[0] == "pending" and "started" in seen and seen[-1] == "done"


def test_failed_job_carries_a_reason_and_keeps_the_version(web: httpx.Client) -> None:
    eid = create(web, V21)["id"]
    job_id = web.post(V21.upload(eid), content=b"app\nx\n").json()["job_id"]
    job = wait_job(web, V21, job_id)
    assert job["status"] == "failed" and "missing column(s) 'owner'" in job["reason"]
    assert web.get(V21.enrichment(eid)).json()["version"] == 1


def test_chunked_upload_is_accepted(emu: Emulator, web: httpx.Client) -> None:
    eid = create(web)["id"]
    response = web.post(V1.upload(eid), content=iter([b"app,owner\n", b"a,b\n"]))
    assert response.status_code == 202
    assert wait_job(web, V1, response.json()["job_id"])["status"] == "done"


def test_oversized_content_length_is_413_before_reading(emu: Emulator, web: httpx.Client) -> None:
    eid = create(web)["id"]
    conn = HTTPConnection("127.0.0.1", emu.port, timeout=10)
    conn.putrequest("POST", V1.upload(eid))
    conn.putheader("Authorization", AUTH["Authorization"])
    conn.putheader("Content-Length", str(facts.MAX_FILE_BYTES + 1))
    conn.endheaders()
    response = conn.getresponse()
    assert response.status == 413 and b"larger" in response.read()
    conn.close()


def test_keep_alive_serves_several_requests_on_one_connection(
    emu: Emulator, web: httpx.Client
) -> None:
    eid = create(web)["id"]
    conn = HTTPConnection("127.0.0.1", emu.port, timeout=10)
    for _ in range(3):
        conn.request("GET", V1.enrichment(eid), headers=AUTH)
        response = conn.getresponse()
        assert response.status == 200 and response.read()
    conn.request("POST", V1.upload(eid), body=b"app,owner\nx,y\n", headers=AUTH)
    assert conn.getresponse().status == 202
    conn.close()


# ---------------------------------------------------------------------------- rate limit & record


def test_rate_limit_is_five_per_second_per_token() -> None:
    with Emulator(job_seconds=0.05) as emulator:
        statuses = []
        with httpx.Client(base_url=emulator.url) as client:
            for token in ("a", "a", "a", "a", "a", "a", "b"):
                response = client.get(V1.enrichments, headers={"Authorization": f"Bearer {token}"})
                statuses.append((response.status_code, response.headers.get("retry-after")))
        assert statuses[:5] == [(200, None)] * 5
        assert statuses[5] == (429, "1")
        assert statuses[6] == (200, None)  # another token has its own window
        assert emulator.max_requests_in_window(1.0) == 7


def test_requests_are_recorded_without_the_token(emu: Emulator, web: httpx.Client) -> None:
    create(web)
    (recorded,) = emu.requests
    assert (recorded.method, recorded.path, recorded.status) == ("POST", V1.enrichments, 201)
    assert recorded.headers["authorization"] == "<redacted>"
    assert TOKEN not in repr(recorded)
    assert recorded.content_length is not None
    assert recorded.body_bytes == recorded.content_length > 0


# ---------------------------------------------------------------------------- faults


def test_injected_failures_match_path_and_count(emu: Emulator, web: httpx.Client) -> None:
    emu.faults.fail_next_requests(2, status=502, path_contains="/map")
    assert web.get(V1.enrichments).status_code == 200  # other paths untouched
    eid = create(web)["id"]
    codes = [web.post(V1.upload(eid), content=b"app,owner\na,b\n").status_code for _ in range(3)]
    assert codes == [502, 502, 202]


def test_injected_429_carries_retry_after(emu: Emulator, web: httpx.Client) -> None:
    emu.faults.fail_next_requests(1, status=429)
    response = web.get(V1.enrichments)
    assert (response.status_code, response.headers["retry-after"]) == (429, "1")


def test_latency_delays_answers(emu: Emulator, web: httpx.Client) -> None:
    emu.faults.set_latency(0.2)
    began = time.monotonic()
    web.get(V1.enrichments)
    assert time.monotonic() - began >= 0.2


def test_dropped_upload_gets_no_answer(emu: Emulator, web: httpx.Client) -> None:
    eid = create(web)["id"]
    emu.faults.drop_upload_after(bytes=10, times=1)
    with pytest.raises(httpx.TransportError):
        web.post(V1.upload(eid), content=b"app,owner\n" + b"a,b\n" * 1000)
    assert emu.requests[-1].dropped and emu.requests[-1].status is None
    assert web.post(V1.upload(eid), content=b"app,owner\na,b\n").status_code == 202


def test_failing_and_hanging_jobs(emu: Emulator, web: httpx.Client) -> None:
    eid = create(web)["id"]
    emu.faults.fail_next_jobs(1, reason="boom")
    first = web.post(V1.upload(eid), content=b"app,owner\na,b\n").json()["job_id"]
    assert wait_job(web, V1, first) == {**wait_job(web, V1, first), "reason": "boom"}
    emu.faults.hang_jobs(True)
    hung = web.post(V1.upload(eid), content=b"app,owner\na,b\n").json()["job_id"]
    time.sleep(0.3)
    assert web.get(V1.job(hung)).json()["status"] == "started"


# ---------------------------------------------------------------------------- CSV rules directly


def test_check_table_accepts_quoted_values_and_pipes(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text('app,owner\n"a,b","""x | y"""\nc,"d e"\n', encoding="utf-8")
    assert check_table(path, ["app", "owner"]) == []


def test_check_table_lists_many_problems_but_caps_them(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("app,owner\n" + "a,b\n" * 40, encoding="utf-8")
    reasons = check_table(path, ["app", "owner"])
    assert len(reasons) == 21 and reasons[-1] == "... and 19 more problem(s)"
    assert reasons[0] == "line 3: duplicate of the row on line 2"


def test_persisted_state_is_plain_files(tmp_path: Path) -> None:
    with Emulator(data_dir=tmp_path, job_seconds=0.05, rate_limit=False) as emulator:
        client = httpx.Client(base_url=emulator.url, headers=AUTH)
        eid = create(client)["id"]
        job_id = client.post(V1.upload(eid), content=b"app,owner\na,b\n").json()["job_id"]
        wait_job(client, V1, job_id)
        client.close()
    assert (tmp_path / "tables" / f"{eid}.csv").read_bytes() == b"app,owner\na,b\n"
    assert eid in (tmp_path / "state.json").read_text()
