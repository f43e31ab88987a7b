"""bpsync.github's HTTP logic through an injected httpx.MockTransport: retries, redirects,
pagination, error decoding, the token's confinement. The wire is tested in test_ci.py."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from bpsync.errors import ApiError, ApplyRefused, AuthError, ConfigError, NotFoundError
from bpsync.github import GitHub, pr_from_event
from bpsync.review import ACTIONS_BOT

API = "https://api.github.test"
TOKEN = "ghs_mock-token-value"
REPO = "acme/tables"

Handler = Callable[[httpx.Request], httpx.Response]


def github(handler: Handler, sleeps: list[float] | None = None, **kw: object) -> GitHub:
    sink = sleeps if sleeps is not None else []
    return GitHub(API, TOKEN, REPO, transport=httpx.MockTransport(handler), sleep=sink.append, **kw)  # type: ignore[arg-type]


def answers(*responses: httpx.Response) -> tuple[Handler, list[httpx.Request]]:
    """A handler giving `responses` in turn, and the requests it saw."""
    seen: list[httpx.Request] = []
    queue = list(responses)

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return queue.pop(0)

    return handle, seen


def test_a_get_is_retried_on_5xx_with_growing_waits() -> None:
    handler, seen = answers(
        httpx.Response(502), httpx.Response(503), httpx.Response(200, json={"login": "ana"})
    )
    sleeps: list[float] = []
    with github(handler, sleeps) as gh:
        assert gh.own_login() == "ana"
    assert len(seen) == 3 and sleeps == [1.0, 2.0]


def test_retries_run_out_with_the_status_and_message() -> None:
    handler, seen = answers(*[httpx.Response(500, json={"message": "boom"})] * 3)
    with github(handler) as gh, pytest.raises(ApiError, match="with 500: boom"):
        gh.request("GET", "/repos/acme/tables/issues")
    assert len(seen) == 3


def test_a_post_is_never_retried() -> None:
    handler, seen = answers(httpx.Response(503), httpx.Response(201, json={}))
    with github(handler) as gh, pytest.raises(ApiError, match="503"):
        gh.request("POST", "/repos/acme/tables/issues", {"title": "t"})
    assert len(seen) == 1  # a second attempt could post a second comment


def test_a_transport_failure_is_retried_then_reported_without_the_token() -> None:
    calls: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        raise httpx.ConnectError("connection refused", request=request)

    with github(handler) as gh, pytest.raises(ApiError) as info:
        gh.request("GET", "/user")
    assert len(calls) == 3
    assert "cannot reach the GitHub API" in str(info.value) and TOKEN not in info.value.render()


def test_requests_carry_the_token_and_api_headers() -> None:
    handler, seen = answers(httpx.Response(200, json=[]))
    with github(handler) as gh:
        assert list(gh.paginate(gh.repo_path("/issues"), {"state": "open"})) == []
    request = seen[0]
    assert request.headers["Authorization"] == f"Bearer {TOKEN}"
    assert request.headers["Accept"] == "application/vnd.github+json"
    assert request.headers["User-Agent"].startswith("bpsync/")
    assert request.url.params["per_page"] == "100" and request.url.params["state"] == "open"
    assert TOKEN not in repr(gh)


def test_a_redirect_within_the_api_is_followed_with_the_same_method() -> None:
    handler, seen = answers(
        httpx.Response(307, headers={"Location": f"{API}/repositories/1/issues/comments/5"}),
        httpx.Response(200, json={"html_url": "https://github.test/c/5"}),
    )
    with github(handler) as gh:
        done, _ = gh.request("PATCH", gh.repo_path("/issues/comments/5"), {"body": "b"})
    assert done == {"html_url": "https://github.test/c/5"}
    assert [(r.method, r.url.path) for r in seen] == [
        ("PATCH", "/repos/acme/tables/issues/comments/5"),
        ("PATCH", "/repositories/1/issues/comments/5"),
    ]
    assert json.loads(seen[1].content) == {"body": "b"}


def test_a_redirect_elsewhere_is_not_followed() -> None:
    handler, seen = answers(httpx.Response(302, headers={"Location": "https://evil.test/x"}))
    with github(handler) as gh, pytest.raises(ApiError, match="with 302"):
        gh.request("GET", "/user")
    assert [r.url.host for r in seen] == ["api.github.test"]


def test_pages_are_followed_on_the_api_host_only() -> None:
    handler, seen = answers(
        httpx.Response(200, json=[1, 2], headers={"Link": f'<{API}/x?page=2>; rel="next"'}),
        httpx.Response(200, json=[3], headers={"Link": '<https://evil.test/x?page=3>; rel="next"'}),
    )
    with github(handler) as gh:
        items = gh.paginate("/x")
        assert [next(items), next(items), next(items)] == [1, 2, 3]
        with pytest.raises(ApiError, match=r"another host: evil\.test"):
            next(items)
    assert len(seen) == 2


@pytest.mark.parametrize(
    ("status", "kind", "hint"),
    [
        (401, AuthError, "pull-requests: write"),
        (403, AuthError, "read-only token"),
        (404, NotFoundError, "GITHUB_REPOSITORY"),
        (422, ApiError, ""),
    ],
)
def test_errors_are_decoded_into_the_exception_tree(
    status: int, kind: type[ApiError], hint: str
) -> None:
    handler, _ = answers(httpx.Response(status, json={"message": "Nope"}))
    with github(handler) as gh, pytest.raises(kind) as info:
        gh.request("POST", "/repos/acme/tables/issues", {})
    assert type(info.value) is kind and info.value.status == status
    assert f"GitHub answered POST /repos/acme/tables/issues with {status}: Nope" in str(info.value)
    assert hint in info.value.hint


def test_an_answer_that_is_not_json_is_an_api_error() -> None:
    handler, _ = answers(httpx.Response(200, content=b"<html>"))
    with github(handler) as gh, pytest.raises(ApiError, match="something else than JSON"):
        gh.request("GET", "/user")


def test_a_workflow_token_is_the_actions_bot() -> None:
    handler, _ = answers(httpx.Response(403, json={"message": "Resource not accessible"}))
    with github(handler) as gh:
        assert gh.own_login() == ACTIONS_BOT


def test_the_merged_pull_request_of_a_commit() -> None:
    sha = "a" * 40
    pulls = [
        {"number": 3, "merged_at": None},
        {"number": 4, "merged_at": "2026-01-02", "merge_commit_sha": "b" * 40},
        {"number": 5, "merged_at": "2026-01-01", "merge_commit_sha": sha},
    ]
    handler, _ = answers(httpx.Response(200, json=pulls), httpx.Response(200, json=[]))
    with github(handler) as gh:
        assert gh.merged_pr_of_commit(sha) == 5
        with pytest.raises(ApplyRefused, match="not the merge of a pull request"):
            gh.merged_pr_of_commit(sha)


@pytest.mark.parametrize(
    ("url", "message"),
    [("http://api.github.test", "plain http"), ("ftp://x", r"not an http\(s\) URL")],
)
def test_api_urls_that_would_leak_the_token_are_refused(url: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        GitHub(url, TOKEN, REPO)


def test_the_pull_request_number_from_the_event(tmp_path: Path) -> None:
    event = tmp_path / "event.json"
    event.write_text(json.dumps({"pull_request": {"number": 12}}))
    assert pr_from_event({"GITHUB_EVENT_PATH": str(event)}) == 12
    event.write_text(json.dumps({"ref": "main"}))
    with pytest.raises(ConfigError, match="not about a pull request"):
        pr_from_event({"GITHUB_EVENT_PATH": str(event)})
