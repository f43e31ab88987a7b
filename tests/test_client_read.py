"""The paged v2.1 table read (SPEC §7, api doc §15.1) through httpx.MockTransport."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest
from test_client import FakeTime, TopRandom

from bpsync.bigpanda.client import BigPandaClient, RateLimiter
from bpsync.errors import ApiError, AuthError, NotFoundError

BASE = "https://api.bigpanda.io"
TOKEN = "read-T0KEN-secret"
COLUMNS = ("app", "owner")
ROWS = [{"app": f"a{i:03d}", "owner": f"o{i}"} for i in range(25)]


class Server:
    """Serves ROWS-like tables page by page, honouring `per_page` up to `cap`."""

    def __init__(
        self,
        rows: list[dict[str, Any]],
        *,
        cap: int | None = None,
        count_key: str = "total_results",
    ) -> None:
        self.rows = rows
        self.cap = cap
        self.count_key = count_key
        self.requests: list[tuple[int, int]] = []
        self.fail: dict[int, int] = {}  # page -> status, every time
        self.moves = 0  # times the total moves (after page 1)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        assert request.method == "GET"
        assert request.url.path == "/resources/v2.1/mapping-enrichment/e1/map"
        q = parse_qs(request.url.query.decode())
        page, per_page = int(q["page"][0]), int(q["per_page"][0])
        self.requests.append((page, per_page))
        if page in self.fail:
            return httpx.Response(
                self.fail[page], json={"status": self.fail[page], "errors": ["x"]}
            )
        size = min(per_page, self.cap) if self.cap else per_page
        items = self.rows[(page - 1) * size : page * size]
        total = len(self.rows)
        if page > 1 and self.moves:
            self.moves -= 1
            self.rows = [*self.rows, {"app": f"new{len(self.rows)}", "owner": "x"}]
            total = len(self.rows)
        return httpx.Response(200, json={self.count_key: total, "items": items})


def client_for(handler: Any, version: str = "v2.1", **kw: Any) -> tuple[BigPandaClient, FakeTime]:
    ft = FakeTime()
    client = BigPandaClient(
        BASE, TOKEN, version, transport=httpx.MockTransport(handler), clock=ft.clock,
        sleep=ft.sleep, wall_clock=ft.wall, rng=TopRandom(),
        rate_limiter=kw.pop("rate_limiter", RateLimiter(1e6, clock=ft.clock, sleep=ft.sleep)),
        **kw,
    )  # fmt: skip
    return client, ft


def expected_csv(rows: list[dict[str, str]]) -> bytes:
    return ("app,owner\n" + "".join(f"{r['app']},{r['owner']}\n" for r in rows)).encode()


def test_reads_every_page_into_a_canonical_csv(tmp_path: Path) -> None:
    server = Server(ROWS)
    client, _ = client_for(server)
    dest = tmp_path / "t.csv"
    result = client.read_table("e1", COLUMNS, dest, table="owners", per_page=10)
    assert dest.read_bytes() == expected_csv(ROWS)
    assert (result.rows, result.total, result.restarts) == (25, 25, 0)
    # Stops at the announced total: no request for an empty fourth page.
    assert server.requests == [(1, 10), (2, 10), (3, 10)]
    assert list(tmp_path.iterdir()) == [dest]


def test_never_trusts_per_page_a_capped_server_is_read_to_the_total(tmp_path: Path) -> None:
    server = Server(ROWS, cap=7)
    client, _ = client_for(server)
    dest = tmp_path / "t.csv"
    result = client.read_table("e1", COLUMNS, dest, table="owners", per_page=1000)
    assert dest.read_bytes() == expected_csv(ROWS)
    assert result.rows == 25 and len(server.requests) == 4


@pytest.mark.parametrize("count_key", ["total_results", "total_count"])
def test_either_count_key_is_the_total(tmp_path: Path, count_key: str) -> None:
    server = Server(ROWS, count_key=count_key)
    client, _ = client_for(server)
    result = client.read_table("e1", COLUMNS, tmp_path / "t.csv", table="t", per_page=5)
    assert result.total == 25 and len(server.requests) == 5


def test_without_a_count_an_empty_page_ends_the_read(tmp_path: Path) -> None:
    server = Server(ROWS, count_key="no_such_key")
    client, _ = client_for(server)
    dest = tmp_path / "t.csv"
    result = client.read_table("e1", COLUMNS, dest, table="t", per_page=10)
    assert result.total is None and result.rows == 25
    assert server.requests[-1] == (4, 10)  # the empty page
    assert dest.read_bytes() == expected_csv(ROWS)


def test_cells_null_number_bool_list_and_specials(tmp_path: Path) -> None:
    rows: list[dict[str, Any]] = [
        {"app": "a|b", "owner": None},
        {"app": 'say "hi", then', "owner": 42},
        {"app": "ünï", "owner": True},
        {"app": "list", "owner": ["x", "y"]},
        {"app": "missing"},
        {"app": "null", "owner": "null"},
        {"app": "float", "owner": 1.5},
    ]
    client, _ = client_for(Server(rows))
    dest = tmp_path / "t.csv"
    client.read_table("e1", COLUMNS, dest, table="t")
    assert dest.read_bytes().decode() == (
        'app,owner\na|b,\n"say ""hi"", then",42\nünï,true\nlist,x|y\nmissing,\n'
        "null,null\nfloat,1.5\n"
    )


def test_a_total_that_moves_restarts_once(tmp_path: Path) -> None:
    server = Server(ROWS)
    server.moves = 1
    client, _ = client_for(server)
    dest = tmp_path / "t.csv"
    result = client.read_table("e1", COLUMNS, dest, table="owners", per_page=10)
    assert result.restarts == 1 and result.rows == 26
    assert dest.read_bytes() == expected_csv(server.rows)


def test_a_total_that_keeps_moving_fails_naming_the_table(tmp_path: Path) -> None:
    server = Server(ROWS)
    server.moves = 5
    client, _ = client_for(server)
    dest = tmp_path / "t.csv"
    dest.write_bytes(b"old\n")
    with pytest.raises(ApiError) as info:
        client.read_table("e1", COLUMNS, dest, table="owners", per_page=10)
    text = info.value.render()
    assert "owners" in text and "kept changing" in text and "run the command again" in text
    assert dest.read_bytes() == b"old\n"  # nothing half-written
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.csv"]


def test_403_says_the_key_lacks_the_read_permission(tmp_path: Path) -> None:
    server = Server(ROWS)
    server.fail[1] = 403
    client, _ = client_for(server)
    with pytest.raises(AuthError) as info:
        client.read_table("e1", COLUMNS, tmp_path / "t.csv", table="owners")
    text = info.value.render()
    assert "owners" in text and "permission to read" in text and TOKEN not in text
    assert not list(tmp_path.iterdir())


def test_404_names_the_table_and_the_id(tmp_path: Path) -> None:
    server = Server(ROWS)
    server.fail[1] = 404
    client, _ = client_for(server)
    with pytest.raises(NotFoundError) as info:
        client.read_table("e1", COLUMNS, tmp_path / "t.csv", table="owners")
    assert "owners" in info.value.message and "e1" in info.value.message
    assert not list(tmp_path.iterdir())


def test_a_page_failing_after_retries_fails_and_writes_nothing(tmp_path: Path) -> None:
    server = Server(ROWS)
    server.fail[2] = 503
    client, _ = client_for(server, max_attempts=3)
    with pytest.raises(ApiError) as info:
        client.read_table("e1", COLUMNS, tmp_path / "t.csv", table="owners", per_page=10)
    text = info.value.render()
    assert "owners" in text and "page 2" in text and "gave up after 3" in text
    assert server.requests.count((2, 10)) == 3
    assert not list(tmp_path.iterdir())


def test_a_refused_page_size_falls_back_to_the_documented_default(tmp_path: Path) -> None:
    seen: list[int] = []
    inner = Server(ROWS)

    def handler(request: httpx.Request) -> httpx.Response:
        per_page = int(parse_qs(request.url.query.decode())["per_page"][0])
        seen.append(per_page)
        if per_page > 100:
            return httpx.Response(400, json={"status": 400, "errors": ["per_page too big"]})
        return inner(request)

    client, _ = client_for(handler)
    result = client.read_table("e1", COLUMNS, tmp_path / "t.csv", table="t", per_page=1000)
    assert result.rows == 25 and seen == [1000, 100]


def test_pages_go_through_the_rate_limiter(tmp_path: Path) -> None:
    ft = FakeTime()
    limiter = RateLimiter(4.0, clock=ft.clock, sleep=ft.sleep)
    client = BigPandaClient(
        BASE, TOKEN, "v2.1", transport=httpx.MockTransport(Server(ROWS)), clock=ft.clock,
        sleep=ft.sleep, wall_clock=ft.wall, rate_limiter=limiter,
    )  # fmt: skip
    client.read_table("e1", COLUMNS, tmp_path / "t.csv", table="t", per_page=5)
    assert sum(ft.sleeps) == pytest.approx(4 * 0.25)  # 5 requests, evenly spaced at 4/s


def test_a_column_the_schema_lacks_is_an_error(tmp_path: Path) -> None:
    client, _ = client_for(Server([{"app": "a", "owner": "b", "extra": "c"}]))
    with pytest.raises(ApiError, match="'extra'"):
        client.read_table("e1", COLUMNS, tmp_path / "t.csv", table="t")
    assert not list(tmp_path.iterdir())


def test_v1_cannot_read_rows(tmp_path: Path) -> None:
    client, _ = client_for(Server(ROWS), version="v1")
    assert not client.can_read_rows
    with pytest.raises(ApiError, match="--csv"):
        client.read_table("e1", COLUMNS, tmp_path / "t.csv", table="t")


def test_progress_hears_each_page(tmp_path: Path) -> None:
    heard: list[tuple[int, int | None]] = []
    client, _ = client_for(Server(ROWS))
    client.read_table(
        "e1", COLUMNS, tmp_path / "t.csv", table="t", per_page=10,
        on_progress=lambda n, total: heard.append((n, total)),
    )  # fmt: skip
    assert heard == [(10, 25), (20, 25), (25, 25)]
