"""A small GitHub REST client on httpx: comments, issues, the pull request of a commit.

JSON in and out, pagination by `Link: rel="next"`, retries of idempotent calls. The token is
sent in a header only to GITHUB_API_URL's origin: redirects and next-page links elsewhere are
not followed, and plain `http://` API URLs are refused unless the host is loopback (tests
serve a fake API on 127.0.0.1). The transport and sleep are injected, so tests need neither
a network nor real waits.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

import httpx

from bpsync import __version__
from bpsync.bigpanda.urls import is_loopback_host
from bpsync.errors import ApiError, ApplyRefused, AuthError, ConfigError, NotFoundError
from bpsync.review import ACTIONS_BOT, DEFAULT_API_URL, REVIEW_HINT, is_ours

_REPO = re.compile(r"[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+")
_LINK_NEXT = re.compile(r'<([^>]+)>\s*;\s*rel="next"')
_MAX_PAGES = 200  # 20,000 comments: a bound against a server that always says "next"
_MAX_REDIRECTS = 5
_RETRYABLE = frozenset({500, 502, 503, 504})
# Only idempotent calls are retried: a retried POST could post a second comment.
_IDEMPOTENT = frozenset({"GET", "PATCH"})
_SEE_OTHER = 303


@dataclass(frozen=True)
class Upserted:
    number: int
    url: str
    updated: bool


class GitHub:
    """One repository's REST API; use as a context manager (it holds a connection pool)."""

    def __init__(
        self,
        api_url: str,
        token: str,
        repo: str,
        *,
        transport: httpx.BaseTransport | None = None,
        timeout: float = 30.0,
        sleep: Callable[[float], None] = time.sleep,
        retries: int = 2,
        backoff_base: float = 1.0,
    ) -> None:
        self.api_url = check_api_url(api_url)
        self.repo = repo
        self._sleep, self.retries, self.backoff_base = sleep, retries, backoff_base
        self._http = httpx.Client(
            transport=transport,
            timeout=timeout,
            follow_redirects=False,  # followed by hand, within the API's origin only
            # Never through a proxy to ourselves (tests and local fakes on loopback).
            trust_env=not is_loopback_host(urlsplit(self.api_url).hostname or ""),
            headers={
                "Accept": "application/vnd.github+json",
                "X-GitHub-Api-Version": "2022-11-28",
                "User-Agent": f"bpsync/{__version__}",
                "Authorization": f"Bearer {token}",
            },
        )

    def __repr__(self) -> str:  # never the token
        return f"GitHub(api_url={self.api_url!r}, repo={self.repo!r})"

    @classmethod
    def from_env(cls, env: Mapping[str, str], **options: Any) -> GitHub:
        """From GITHUB_TOKEN (or GH_TOKEN), GITHUB_REPOSITORY and GITHUB_API_URL."""
        token = (env.get("GITHUB_TOKEN") or env.get("GH_TOKEN") or "").strip()
        if not token:
            raise ConfigError(
                "GITHUB_TOKEN is not set",
                hint="in a workflow pass `GITHUB_TOKEN: ${{ github.token }}` in the step's env",
            )
        repo = env.get("GITHUB_REPOSITORY", "").strip()
        if not _REPO.fullmatch(repo):
            raise ConfigError(
                "GITHUB_REPOSITORY is not set to owner/name"
                + (f" (it is {repo!r})" if repo else ""),
                hint="GitHub Actions sets it; elsewhere export GITHUB_REPOSITORY=owner/name",
            )
        api_url = env.get("GITHUB_API_URL", "").strip() or DEFAULT_API_URL
        return cls(api_url, token, repo, **options)

    def __enter__(self) -> GitHub:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def repo_path(self, path: str) -> str:
        return f"/repos/{self.repo}{path}"

    # -- one call --

    def request(self, method: str, path: str, body: Any = None) -> tuple[Any, httpx.Headers]:
        """One call; returns (decoded JSON or None, headers). ApiError on any failure."""
        url = path if path.startswith(("http://", "https://")) else self.api_url + path
        attempts = 1 + (self.retries if method in _IDEMPOTENT else 0)
        for attempt in range(attempts):
            last = attempt + 1 == attempts
            try:
                response = self._send(method, url, body)
            except httpx.TransportError as e:
                if not last:
                    self._sleep(self._backoff(attempt))
                    continue
                raise ApiError(
                    f"cannot reach the GitHub API at {self.api_url}: {e}",
                    hint="check GITHUB_API_URL and the network",
                ) from None
            if response.status_code in _RETRYABLE and not last:
                self._sleep(self._backoff(attempt))
                continue
            if response.is_success:
                return _decode(response.content), response.headers
            raise _api_error(method, urlsplit(url).path, response)
        raise AssertionError("unreachable")  # pragma: no cover

    def _send(self, method: str, url: str, body: Any) -> httpx.Response:
        """Send, following redirects only within the API's origin.

        httpx (like urllib) would forward the Authorization header; the token must go nowhere
        but GITHUB_API_URL, so a redirect elsewhere is not followed and fails as the 3xx
        answer it is.
        """
        origin = urlsplit(url)[:2]
        for _ in range(_MAX_REDIRECTS + 1):
            response = self._http.request(method, url, json=body)
            location = response.headers.get("location")
            if not response.is_redirect or location is None:
                return response
            target = str(response.url.join(location))
            if urlsplit(target)[:2] != origin:
                return response
            if response.status_code == _SEE_OTHER or (
                response.status_code in (301, 302) and method == "POST"
            ):
                method, body = "GET", None
            url = target
        return response

    def _backoff(self, attempt: int) -> float:
        """Exponential, as the BigPanda client's: base·2^attempt (1 s, then 2 s)."""
        return float(self.backoff_base * 2.0**attempt)

    # -- reading --

    def paginate(self, path: str, params: Mapping[str, str] | None = None) -> Iterator[Any]:
        """Every item of a list endpoint, following `Link: rel="next"` on the same API host."""
        query = httpx.QueryParams({"per_page": "100", **(params or {})})
        url: str | None = f"{self.api_url}{path}?{query}"
        base = urlsplit(self.api_url)
        for _ in range(_MAX_PAGES):
            if url is None:
                return
            items, headers = self.request("GET", url)
            if not isinstance(items, list):
                raise ApiError(f"GitHub answered GET {path} with something else than a list")
            yield from items
            url = _next_link(headers)
            if url is not None:
                nxt = urlsplit(url)
                if (nxt.scheme, nxt.netloc) != (base.scheme, base.netloc):
                    # The token goes only where GITHUB_API_URL points.
                    raise ApiError(f"GitHub's next page points to another host: {nxt.netloc}")
        raise ApiError(f"GET {path}: more than {_MAX_PAGES} pages; giving up")

    def own_login(self) -> str:
        """The token's login; a workflow token cannot read /user and is github-actions[bot]."""
        try:
            me, _ = self.request("GET", "/user")
        except (AuthError, NotFoundError):
            return ACTIONS_BOT
        login = me.get("login") if isinstance(me, dict) else None
        return str(login) if login else ACTIONS_BOT

    # -- comments, pull requests, issues --

    def find_comment(self, number: int, *, marker: str, author: str) -> dict[str, Any] | None:
        """The first comment of the pull request by `author` that holds `marker`."""
        for c in self.paginate(self.repo_path(f"/issues/{number}/comments")):
            if isinstance(c, dict) and is_ours(c, marker, author):
                return c
        return None

    def upsert_comment(self, number: int, body: str, *, marker: str, author: str) -> Upserted:
        """Update our marked comment in place, or create it: one comment per pull request."""
        found = self.find_comment(number, marker=marker, author=author)
        if found is not None:
            path = self.repo_path(f"/issues/comments/{found['id']}")
            done, _ = self.request("PATCH", path, {"body": body})
            return Upserted(number, _html_url(done), updated=True)
        done, _ = self.request("POST", self.repo_path(f"/issues/{number}/comments"), {"body": body})
        return Upserted(number, _html_url(done), updated=False)

    def merged_pr_of_commit(self, sha: str) -> int:
        """The merged pull request that brought commit `sha` (GET /commits/{sha}/pulls)."""
        pulls, _ = self.request("GET", self.repo_path(f"/commits/{sha}/pulls"))
        merged = [p for p in pulls or [] if isinstance(p, dict) and p.get("merged_at")]
        if not merged:
            raise ApplyRefused(
                f"commit {sha[:12]} is not the merge of a pull request, so no reviewed plan "
                "approves it",
                hint=REVIEW_HINT,
            )
        exact = [p for p in merged if str(p.get("merge_commit_sha", "")).startswith(sha.lower())]
        chosen = exact[0] if exact else max(merged, key=lambda p: str(p.get("merged_at")))
        return int(chosen["number"])

    def find_issue(self, *, marker: str, author: str) -> dict[str, Any] | None:
        """The first open issue (not pull request) by `author` that holds `marker`."""
        for it in self.paginate(self.repo_path("/issues"), {"state": "open"}):
            if isinstance(it, dict) and "pull_request" not in it and is_ours(it, marker, author):
                return it
        return None

    def upsert_issue(self, title: str, body: str, *, marker: str, author: str) -> Upserted:
        found = self.find_issue(marker=marker, author=author)
        doc = {"title": title, "body": body}
        if found is not None:
            number = int(found["number"])
            done, _ = self.request("PATCH", self.repo_path(f"/issues/{number}"), doc)
            return Upserted(number, _html_url(done), updated=True)
        done, _ = self.request("POST", self.repo_path("/issues"), doc)
        return Upserted(int((done or {}).get("number", 0)), _html_url(done), updated=False)

    def close_issue(
        self, *, marker: str, author: str, comment_body: str | None = None
    ) -> dict[str, Any] | None:
        found = self.find_issue(marker=marker, author=author)
        if found is None:
            return None
        path = self.repo_path(f"/issues/{int(found['number'])}")
        if comment_body:
            self.request("POST", f"{path}/comments", {"body": comment_body})
        done, _ = self.request("PATCH", path, {"state": "closed", "state_reason": "completed"})
        return done if isinstance(done, dict) else found


def check_api_url(url: str) -> str:
    """The API URL without a trailing `/`; plain http only for loopback hosts."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"GITHUB_API_URL {url!r} is not an http(s) URL")
    if parts.scheme == "http" and not is_loopback_host(parts.hostname):
        raise ConfigError(
            f"GITHUB_API_URL {url!r} uses plain http",
            hint="the token would cross the network in clear text; use https",
        )
    return url.rstrip("/")


def pr_from_event(env: Mapping[str, str]) -> int:
    """The pull request number of the workflow's event (GITHUB_EVENT_PATH)."""
    path = env.get("GITHUB_EVENT_PATH", "")
    hint = "pass --pr N, or run in a `pull_request` workflow"
    if not path:
        raise ConfigError("no pull request number: GITHUB_EVENT_PATH is not set", hint=hint)
    try:
        event = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot read the event payload {path}: {e}", hint=hint) from None
    if not isinstance(event, dict):
        raise ConfigError("the workflow's event is not about a pull request", hint=hint)
    candidates = [
        (event.get("pull_request") or {}).get("number"),
        (event.get("issue") or {}).get("number"),
        event.get("number"),
    ]
    for n in candidates:
        if isinstance(n, int) and n > 0:
            return n
    raise ConfigError("the workflow's event is not about a pull request", hint=hint)


def _html_url(doc: Any) -> str:
    return str(doc.get("html_url", "")) if isinstance(doc, dict) else ""


def _decode(raw: bytes) -> Any:
    if not raw.strip():
        return None
    try:
        return json.loads(raw)
    except ValueError:
        raise ApiError("GitHub answered with something else than JSON") from None


def _api_error(method: str, path: str, response: httpx.Response) -> ApiError:
    status, raw = response.status_code, response.content
    message = ""
    try:
        doc = json.loads(raw)
        if isinstance(doc, dict):
            message = str(doc.get("message") or "")
    except ValueError:
        message = raw[:200].decode("utf-8", "replace").strip()
    text = f"GitHub answered {method} {path} with {status}" + (f": {message}" if message else "")
    if status in (401, 403):
        return AuthError(
            text,
            status=status,
            hint="the token lacks a permission: the plan comment needs `pull-requests: write`, "
            "the drift issue `issues: write`; a pull request from a fork gets a read-only token",
        )
    if status == 404:
        return NotFoundError(text, status=status, hint="check GITHUB_REPOSITORY and the number")
    return ApiError(text, status=status)


def _next_link(headers: httpx.Headers) -> str | None:
    for part in headers.get("link", "").split(","):
        m = _LINK_NEXT.search(part)
        if m:
            return m.group(1)
    return None
