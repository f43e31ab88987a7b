"""The emulator's v2.1 table read, its read faults and its "person in the UI" helpers,
spoken to over real sockets on 127.0.0.1 (api doc §15, SPEC §6 and §7)."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from bpsync.bigpanda import facts
from bpsync.emulator import Emulator
from bpsync.emulator.store import BadRequest

TOKEN = "emulator-read-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
FIELDS = [{"title": "app", "type": "query_tag"}, {"title": "owner", "type": "result_tag"}]
V1 = facts.API_VERSIONS["v1"]
V21 = facts.API_VERSIONS["v2.1"]
ROWS = [{"app": f"app{i:03d}", "owner": f"owner{i}"} for i in range(250)]


@pytest.fixture
def emu() -> Iterator[Emulator]:
    with Emulator(port=0, job_seconds=0.02, rate_limit=False) as emulator:
        yield emulator


@pytest.fixture
def web(emu: Emulator) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=emu.url, headers=AUTH) as client:
        yield client


def csv_body(rows: list[dict[str, str]]) -> bytes:
    return ("app,owner\n" + "".join(f"{r['app']},{r['owner']}\n" for r in rows)).encode()


def create(web: httpx.Client) -> str:
    body = {"type": "mapping", "config": {"name": "owners", "fields": FIELDS}}
    response = web.post(V21.enrichments, json=body)
    assert response.status_code == 200, response.text
    return str(response.json()["id"])


def upload(web: httpx.Client, eid: str, body: bytes) -> str:
    """Upload through BigPanda's route and wait for the job; its final status."""
    job_id = web.post(V21.upload(eid), content=body).json()["job_id"]
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        status = str(web.get(V21.job(job_id)).json()["status"])
        if status in facts.JOB_FINAL_STATES:
            return status
        time.sleep(0.01)
    raise AssertionError("job did not finish")


@pytest.fixture
def table(web: httpx.Client) -> str:
    """A v2.1 enrichment holding ROWS, uploaded the way bpsync uploads."""
    eid = create(web)
    assert upload(web, eid, csv_body(ROWS)) == "done"
    return eid


def read(web: httpx.Client, eid: str, **params: Any) -> httpx.Response:
    return web.get(V21.upload(eid), params=params)


def read_all(web: httpx.Client, eid: str, per_page: int) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    page = 1
    while True:
        body = read(web, eid, page=page, per_page=per_page).json()
        if not body["items"]:
            return items
        items += body["items"]
        page += 1


# ---------------------------------------------------------------------------- paging


def test_read_pages_from_one_with_a_default_of_100(web: httpx.Client, table: str) -> None:
    first = read(web, table)
    assert first.status_code == 200
    assert first.json() == {"total_results": 250, "items": ROWS[:100]}
    assert read(web, table, page=3).json()["items"] == ROWS[200:]
    assert read(web, table, page=4).json() == {"total_results": 250, "items": []}


def test_per_page_is_honoured_and_pages_cover_the_table_in_order(
    web: httpx.Client, table: str
) -> None:
    assert len(read(web, table, per_page=7).json()["items"]) == 7
    assert read_all(web, table, per_page=7) == ROWS
    assert read(web, table, per_page=1000).json()["items"] == ROWS


def test_the_read_serves_the_last_successfully_uploaded_table(
    web: httpx.Client, table: str
) -> None:
    assert upload(web, table, b"app\nonly-one-column\n") == "failed"
    assert read(web, table, per_page=1000).json()["items"] == ROWS
    assert upload(web, table, csv_body(ROWS[:2])) == "done"
    assert read(web, table).json() == {"total_results": 2, "items": ROWS[:2]}


def test_a_table_never_uploaded_reads_as_empty(web: httpx.Client) -> None:
    assert read(web, create(web)).json() == {"total_results": 0, "items": []}


def test_cells_come_back_as_the_strings_uploaded(web: httpx.Client) -> None:
    eid = create(web)
    body = 'app,owner\n"a,b","say ""hi"""\nc|d,Zoë 東京\ne,\n'.encode()
    assert upload(web, eid, body) == "done"
    assert read(web, eid).json()["items"] == [
        {"app": "a,b", "owner": 'say "hi"'},
        {"app": "c|d", "owner": "Zoë 東京"},
        {"app": "e", "owner": ""},
    ]


def test_unknown_id_bad_paging_and_v1_have_no_read(web: httpx.Client, table: str) -> None:
    missing = read(web, "missing")
    assert missing.status_code == 404
    assert missing.json() == {"status": 404, "errors": ["enrichment missing not found"]}
    for params in ({"page": 0}, {"per_page": "abc"}, {"per_page": -1}):
        bad = read(web, table, **params)
        assert bad.status_code == 400 and "positive integer" in bad.json()["errors"][0]
    assert web.get(V1.upload(table)).status_code == 405  # v1 documents no row read


def test_auth_is_checked_before_the_read(emu: Emulator, table: str) -> None:
    for path in (V21.upload(table), V21.upload("missing")):
        assert httpx.get(emu.url + path).status_code == 401


def test_reads_are_recorded_with_their_query(emu: Emulator, web: httpx.Client, table: str) -> None:
    emu.clear_requests()
    read(web, table, page=2, per_page=5)
    (seen,) = emu.requests
    assert (seen.method, seen.path, seen.query) == ("GET", V21.upload(table), "page=2&per_page=5")


# ---------------------------------------------------------------------------- read faults


def test_max_per_page_caps_whatever_is_asked(emu: Emulator, web: httpx.Client, table: str) -> None:
    emu.faults.cap_per_page(30)
    assert read(web, table, per_page=100).json() == {"total_results": 250, "items": ROWS[:30]}
    assert read(web, table, per_page=10).json()["items"] == ROWS[:10]
    # Pages are cut at the served size (as servers that cap do): a client that stops after
    # ceil(total / per_page asked) = 3 pages holds 90 rows, not 250.
    assert read(web, table, page=2, per_page=100).json()["items"] == ROWS[30:60]
    assert read_all(web, table, per_page=100) == ROWS
    emu.faults.cap_per_page(None)
    assert len(read(web, table).json()["items"]) == 100


def test_count_key_switch_and_empty_cells_as_null(web: httpx.Client) -> None:
    with Emulator(job_seconds=0.02, rate_limit=False, count_key="total_count") as emulator:
        client = httpx.Client(base_url=emulator.url, headers=AUTH)
        eid = create(client)
        assert upload(client, eid, b"app,owner\na,\nb,x\n") == "done"
        assert read(client, eid).json() == {
            "total_count": 2,
            "items": [{"app": "a", "owner": ""}, {"app": "b", "owner": "x"}],
        }
        emulator.faults.empty_as_null()
        assert read(client, eid).json()["items"][0] == {"app": "a", "owner": None}
        emulator.faults.set_count_key("total_results")
        emulator.faults.empty_as_null(False)
        assert read(client, eid).json()["total_results"] == 2
        assert read(client, eid).json()["items"][0] == {"app": "a", "owner": ""}
        client.close()


def test_forbidden_read_is_403_and_the_rest_still_works(
    emu: Emulator, web: httpx.Client, table: str
) -> None:
    emu.faults.forbid_read()
    forbidden = read(web, table)
    assert forbidden.status_code == 403
    assert forbidden.json()["status"] == 403 and "may not read" in forbidden.json()["errors"][0]
    assert web.get(V21.enrichment(table)).status_code == 200
    emu.faults.forbid_read(False)
    assert read(web, table).status_code == 200


def test_a_page_fails_with_5xx_n_times_then_serves(
    emu: Emulator, web: httpx.Client, table: str
) -> None:
    emu.faults.fail_read_pages(2, status=502, page=2)
    assert read(web, table, page=1).status_code == 200
    assert [read(web, table, page=2).status_code for _ in range(3)] == [502, 502, 200]
    emu.faults.fail_read_pages(1)  # any page
    assert read(web, table, page=3).status_code == 503
    assert read(web, table, page=3).status_code == 200


def test_total_moves_mid_read_once(emu: Emulator, web: httpx.Client, table: str) -> None:
    emu.faults.move_total_between_pages(1)
    assert read(web, table, page=1).json()["total_results"] == 250
    assert read(web, table, page=2).json()["total_results"] == 251
    # A restarted read sees a stable table, the added row included.
    totals = {read(web, table, page=p).json()["total_results"] for p in (1, 2, 3)}
    assert totals == {251}
    assert read_all(web, table, per_page=100) == emu.table_rows(table)


def test_total_moves_after_every_page_when_always(
    emu: Emulator, web: httpx.Client, table: str
) -> None:
    emu.faults.move_total_between_pages(None)
    totals = [read(web, table, page=p).json()["total_results"] for p in (1, 2, 1, 2)]
    assert totals == [250, 251, 252, 253]
    emu.faults.clear()
    assert read(web, table).json()["total_results"] == read(web, table).json()["total_results"]


def test_rate_limit_counts_reads(web: httpx.Client) -> None:
    with Emulator(job_seconds=0.02) as emulator:
        client = httpx.Client(base_url=emulator.url, headers=AUTH)
        eid = create(client)  # 1 request
        statuses = [read(client, eid, page=p).status_code for p in range(1, 7)]
        client.close()
    assert statuses == [200, 200, 200, 200, 429, 429]


def test_cli_flags_arm_the_read_faults() -> None:
    command = [sys.executable, "-m", "bpsync.emulator", "--port", "0", "--no-rate-limit"]
    flags = ["--max-per-page", "1", "--count-key", "total_count", "--empty-as-null"]
    flags += ["--fail-read-pages", "1", "--fail-read-status", "500", "--fail-read-page", "2"]
    with subprocess.Popen([*command, *flags], stdout=subprocess.PIPE, text=True) as proc:
        try:
            assert proc.stdout is not None
            url = proc.stdout.readline().split()[-1]
            with httpx.Client(base_url=url, headers=AUTH) as client:
                eid = create(client)
                assert upload(client, eid, b"app,owner\na,\nb,x\n") == "done"
                assert read(client, eid, per_page=100).json() == {
                    "total_count": 2,
                    "items": [{"app": "a", "owner": None}],
                }
                assert read(client, eid, page=2).status_code == 500
                assert read(client, eid, page=2).json()["items"] == [{"app": "b", "owner": "x"}]
        finally:
            proc.terminate()
    assert proc.returncode == 0


def test_cli_forbid_read_and_move_total() -> None:
    flags = ["--port", "0", "--no-rate-limit", "--forbid-read", "--move-total", "always"]
    with subprocess.Popen(
        [sys.executable, "-m", "bpsync.emulator", *flags], stdout=subprocess.PIPE, text=True
    ) as proc:
        try:
            assert proc.stdout is not None
            url = proc.stdout.readline().split()[-1]
            with httpx.Client(base_url=url, headers=AUTH) as client:
                assert read(client, create(client)).status_code == 403
        finally:
            proc.terminate()


# ---------------------------------------------------------------------------- a person in the UI


def test_set_table_replaces_rows_without_a_job_and_bumps_the_version(
    emu: Emulator, web: httpx.Client, table: str
) -> None:
    version = web.get(V21.enrichment(table)).json()["version"]
    emu.set_table(table, [{"owner": "zed", "app": "z"}])
    assert read(web, table).json() == {"total_results": 1, "items": [{"app": "z", "owner": "zed"}]}
    assert web.get(V21.enrichment(table)).json()["version"] == version + 1
    emu.set_table(table, [{"app": "y", "owner": "why"}], bump_version=False)
    assert read(web, table).json()["items"] == [{"app": "y", "owner": "why"}]
    assert web.get(V21.enrichment(table)).json()["version"] == version + 1
    with pytest.raises(BadRequest, match="exactly the columns"):
        emu.set_table(table, [{"app": "y"}])
    with pytest.raises(KeyError):
        emu.set_table("missing", [])


def test_put_and_delete_rows_by_key(emu: Emulator, web: httpx.Client, table: str) -> None:
    version = web.get(V21.enrichment(table)).json()["version"]
    added_changed = emu.put_rows(
        table, [{"app": "app001", "owner": "new owner"}, {"app": "extra", "owner": "e"}]
    )
    assert added_changed == (1, 1)
    assert emu.put_rows(table, [{"app": "extra", "owner": "e"}]) == (0, 0)
    assert emu.delete_rows(table, [{"app": "app000"}, {"app": "not there"}]) == 1
    rows = read_all(web, table, per_page=100)
    assert len(rows) == 250
    assert rows[0] == {"app": "app001", "owner": "new owner"}  # changed in place
    assert rows[-1] == {"app": "extra", "owner": "e"}  # added at the end
    assert {"app": "app000", "owner": "owner0"} not in rows
    assert web.get(V21.enrichment(table)).json()["version"] == version + 2  # no-op put: none
    with pytest.raises(BadRequest, match="query_tag"):
        emu.delete_rows(table, [{"owner": "x"}])


def test_deactivate_rename_and_delete_are_visible(
    emu: Emulator, web: httpx.Client, table: str
) -> None:
    emu.deactivate(table)
    emu.rename(table, "Owners (old)")
    seen = web.get(V21.enrichment(table)).json()
    assert (seen["active"], seen["config"]["name"]) == (False, "Owners (old)")
    assert web.get(V1.enrichment(table)).json()["config"]["map_name"] == "Owners (old)"
    emu.set_active(table, True)
    assert web.get(V21.enrichment(table)).json()["active"] is True
    emu.delete_enrichment(table)
    assert web.get(V21.enrichment(table)).status_code == 404
    assert read(web, table).status_code == 404
    assert web.get(V21.enrichments).json()["data"] == []


def test_admin_routes_play_the_ui_from_the_shell(
    emu: Emulator, web: httpx.Client, table: str
) -> None:
    base = f"/_emulator/enrichments/{table}"
    replaced = web.post(f"{base}/table", content='owner,app\nÅsa,"x,y"\n'.encode())
    assert replaced.status_code == 200 and replaced.json() == {"rows": 1}
    assert read(web, table).json()["items"] == [{"app": "x,y", "owner": "Åsa"}]
    edits = {"put": [{"app": "b", "owner": "c"}], "delete": [{"app": "x,y"}]}
    assert web.post(f"{base}/rows", json=edits).json() == {"added": 1, "changed": 0, "removed": 1}
    assert web.get(f"{base}/table").json() == {"rows": [{"app": "b", "owner": "c"}]}
    version = web.get(V21.enrichment(table)).json()["version"]
    web.post(f"{base}/table?bump_version=false", content=b"app,owner\nq,r\n")
    assert web.get(V21.enrichment(table)).json()["version"] == version
    patched = web.patch(base, json={"active": False, "name": "renamed"}).json()
    assert (patched["active"], patched["config"]["name"]) == (False, "renamed")
    bad = web.post(f"{base}/table", content=b"app\nq\n")
    assert bad.status_code == 400 and "exactly the columns" in bad.json()["message"]
    assert httpx.post(emu.url + f"{base}/table", content=b"app,owner\nq,r\n").status_code == 401
    assert web.delete(base).status_code == 200
    assert web.get(V21.enrichment(table)).status_code == 404
    assert web.get(f"{base}/table").status_code == 404


def test_admin_routes_do_not_count_against_the_rate_limit() -> None:
    with Emulator(job_seconds=0.02) as emulator:
        client = httpx.Client(base_url=emulator.url, headers=AUTH)
        eid = create(client)
        for _ in range(6):
            assert client.get(f"/_emulator/enrichments/{eid}/table").status_code == 200
        assert client.get(V21.enrichment(eid)).status_code == 200
        client.close()


def test_ui_changes_survive_a_restart_with_a_data_dir(tmp_path: Any) -> None:
    with Emulator(data_dir=tmp_path, rate_limit=False) as first:
        client = httpx.Client(base_url=first.url, headers=AUTH)
        eid = create(client)
        client.close()
        first.set_table(eid, [{"app": "a", "owner": "b"}])
        first.deactivate(eid)
    with Emulator(data_dir=tmp_path, rate_limit=False) as second:
        client = httpx.Client(base_url=second.url, headers=AUTH)
        assert read(client, eid).json()["items"] == [{"app": "a", "owner": "b"}]
        assert client.get(V21.enrichment(eid)).json()["active"] is False
        client.close()
